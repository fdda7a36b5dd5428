//! The SSH transport (russh): strict host keys from labforge's known_hosts, auth by key file or ssh-agent.

use super::known_hosts::{self, Verdict};
use super::{BoxFut, Output, Transport, TransportError};
use anyhow::{anyhow, bail, Context, Result};
use russh::client;
use russh::keys::PublicKey;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct SshOptions {
    pub user: String,
    /// The operator's private key; `None` = ssh-agent (`SSH_AUTH_SOCK`).
    pub identity: Option<PathBuf>,
    pub known_hosts: PathBuf,
    /// Accept and record an unknown key for this host (the operator's explicit per-host flag).
    pub trust_on_first_use: bool,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    /// Connect-address overrides: a host's address:port → where the TCP connection really goes (e.g. a
    /// QEMU guest's SSH forwarded to a loopback port). Host keys are still checked against the host's own
    /// address in known_hosts.
    pub connect_via: BTreeMap<SocketAddr, SocketAddr>,
}

impl SshOptions {
    /// Where a connection to `addr:port` really goes (`connect_via`, else itself).
    pub fn target(&self, addr: &str, port: u16) -> String {
        addr.parse::<std::net::IpAddr>()
            .ok()
            .and_then(|ip| self.connect_via.get(&SocketAddr::new(ip, port)))
            .map(|sa| sa.to_string())
            .unwrap_or_else(|| format!("{addr}:{port}"))
    }
}

/// What the server presented and how it compared with known_hosts.
#[derive(Debug, Clone, Default)]
pub struct KeySeen {
    pub algo: String,
    pub key: String,
    pub verdict: Option<Verdict>,
}

struct Handler {
    addr: String,
    port: u16,
    entries: Vec<known_hosts::Entry>,
    tofu: bool,
    seen: Arc<Mutex<KeySeen>>,
}

impl client::Handler for Handler {
    type Error = russh::Error;
    async fn check_server_key(&mut self, key: &PublicKey) -> Result<bool, Self::Error> {
        let openssh = key.to_openssh().unwrap_or_default();
        let mut it = openssh.split_whitespace();
        let algo = it.next().unwrap_or("").to_string();
        let b64 = it.next().unwrap_or("").to_string();
        let v = known_hosts::check(&self.entries, &self.addr, self.port, &algo, &b64);
        let ok = v == Verdict::Match || (v == Verdict::Unknown && self.tofu);
        if let Ok(mut s) = self.seen.lock() {
            *s = KeySeen {
                algo,
                key: b64,
                verdict: Some(v),
            };
        }
        Ok(ok)
    }
}

pub struct SshTransport {
    pub name: String,
    pub addr: String,
    pub port: u16,
    user: String,
    handle: tokio::sync::Mutex<client::Handle<Handler>>,
    command_timeout: Duration,
    /// The host key this session's server presented and known_hosts (or trust-on-first-use) accepted.
    host_key: String,
}

/// The algorithm lists every labforge connection offers (the lock-out guard derives from exactly these).
pub fn client_preferred() -> russh::Preferred {
    config().preferred.clone()
}

fn config() -> Arc<client::Config> {
    Arc::new(client::Config {
        inactivity_timeout: Some(Duration::from_secs(3600)),
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 3,
        nodelay: true,
        ..client::Config::default()
    })
}

/// How many of the first bytes a server sends are kept (banner + KEXINIT; OpenSSH's is about 1.5 KiB).
const HELLO_CAP: usize = 16 * 1024;

/// A stream that records the first [`HELLO_CAP`] bytes read from the server: its banner and KEXINIT, which
/// travel in clear, so the session that logs in also tells verify what the server offers (one connection
/// per host instead of three — each costs the host an sshd fork and re-exec).
struct Recorder<S> {
    inner: S,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Recorder<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = &r {
            if let Ok(mut v) = self.seen.lock() {
                if v.len() < HELLO_CAP {
                    let new = &buf.filled()[before..];
                    let take = new.len().min(HELLO_CAP - v.len());
                    v.extend_from_slice(&new[..take]);
                }
            }
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Recorder<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Open the SSH session and check the host key (before anything else is sent); no authentication.
async fn open(
    name: &str,
    addr: &str,
    port: u16,
    opts: &SshOptions,
) -> Result<(client::Handle<Handler>, Arc<Mutex<KeySeen>>)> {
    open_recording(name, addr, port, opts, &Arc::new(Mutex::new(Vec::new()))).await
}

/// [`open`], recording the server's first bytes into `hello` (kept on failure too).
async fn open_recording(
    name: &str,
    addr: &str,
    port: u16,
    opts: &SshOptions,
    hello: &Arc<Mutex<Vec<u8>>>,
) -> Result<(client::Handle<Handler>, Arc<Mutex<KeySeen>>)> {
    let text = std::fs::read_to_string(&opts.known_hosts).unwrap_or_default();
    let entries = known_hosts::parse(&text);
    let seen = Arc::new(Mutex::new(KeySeen::default()));
    let h = Handler {
        addr: addr.to_string(),
        port,
        entries,
        tofu: opts.trust_on_first_use,
        seen: seen.clone(),
    };
    let target = format!("{addr}:{port}");
    let real = opts.target(addr, port);
    let cfg = config();
    let hello = hello.clone();
    let r = tokio::time::timeout(opts.connect_timeout, async move {
        let sock = tokio::net::TcpStream::connect(real.as_str())
            .await
            .map_err(russh::Error::from)?;
        let _ = sock.set_nodelay(cfg.nodelay);
        client::connect_stream(
            cfg,
            Recorder {
                inner: sock,
                seen: hello,
            },
            h,
        )
        .await
    })
    .await;
    let handle = match r {
        Err(_) => bail!(
            "host `{name}`: no SSH connection to {target} within {:?}",
            opts.connect_timeout
        ),
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            let s = seen.lock().map(|s| s.clone()).unwrap_or_default();
            return Err(match s.verdict {
                Some(Verdict::Mismatch { expected }) => anyhow!(
                    "host `{name}`: HOST KEY MISMATCH at {target}: the server presented {} {} but {} pins {}; refused before sending anything (a re-installed host needs `labforge render` to refresh the key, otherwise suspect a man-in-the-middle)",
                    s.algo, s.key, opts.known_hosts.display(), expected.join(" or ")
                ),
                Some(Verdict::Unknown) => anyhow!(
                    "host `{name}`: {target} is not in {} (host keys come from the secrets store: run `labforge render`); refused. Pass `--trust-on-first-use {name}` only if you verified its key {} {} out of band",
                    opts.known_hosts.display(), s.algo, s.key
                ),
                _ => anyhow!("host `{name}`: SSH to {target} failed: {e}"),
            });
        }
    };
    let s = seen.lock().map(|s| s.clone()).unwrap_or_default();
    if s.verdict == Some(Verdict::Unknown) && opts.trust_on_first_use {
        known_hosts::append_tofu(&opts.known_hosts, addr, port, &s.algo, &s.key)?;
    }
    Ok((handle, seen))
}

impl SshTransport {
    /// Connect with the pinned host key and authenticate with the operator's key or agent.
    pub async fn connect(name: &str, addr: &str, port: u16, opts: &SshOptions) -> Result<Self> {
        let (handle, seen) = open(name, addr, port, opts).await?;
        Self::login(name, addr, port, opts, handle, &seen).await
    }

    /// [`connect`](Self::connect), and on the same connection learn what the server offers before login:
    /// its KEXINIT (recorded off the wire) and — when `probe_user` is the login user — the `none`-auth
    /// answer and whether a wrong password is accepted. Both come back even when the login fails.
    pub async fn connect_probing(
        name: &str,
        addr: &str,
        port: u16,
        opts: &SshOptions,
        probe_user: Option<&str>,
    ) -> Probed {
        let hello = Arc::new(Mutex::new(Vec::new()));
        let opened = open_recording(name, addr, port, opts, &hello).await;
        let kexinit = || {
            let bytes = hello.lock().map(|v| v.clone()).unwrap_or_default();
            if bytes.is_empty() {
                return Err(format!("no SSH banner from {}", opts.target(addr, port)));
            }
            super::probe::parse_server_hello(&bytes).map_err(|e| format!("{e:#}"))
        };
        let (mut handle, seen) = match opened {
            Ok(x) => x,
            Err(e) => {
                return Probed {
                    transport: Err(e),
                    kexinit: kexinit(),
                    auth: None,
                }
            }
        };
        let kexinit = kexinit();
        let mut auth = None;
        if let Some(u) = probe_user.filter(|u| *u == opts.user) {
            let probed = tokio::time::timeout(opts.connect_timeout, probe_auth(&mut handle, u))
                .await
                .unwrap_or_else(|_| {
                    Err(anyhow!(
                        "auth probe timed out after {:?}",
                        opts.connect_timeout
                    ))
                });
            match probed {
                // Authenticated without the key (`none` or a wrong password accepted): a finding, and this
                // session is not one to work in — log in afresh below.
                Ok(p)
                    if p.methods.iter().any(|m| m == "none")
                        || p.password_accepted == Some(true) =>
                {
                    let _ = handle
                        .disconnect(russh::Disconnect::ByApplication, "", "en")
                        .await;
                    auth = Some(Ok(p));
                    return Probed {
                        transport: Self::connect(name, addr, port, opts).await,
                        kexinit,
                        auth,
                    };
                }
                r => auth = Some(r.map_err(|e| format!("{e:#}"))),
            }
        }
        Probed {
            transport: Self::login(name, addr, port, opts, handle, &seen).await,
            kexinit,
            auth,
        }
    }

    async fn login(
        name: &str,
        addr: &str,
        port: u16,
        opts: &SshOptions,
        mut handle: client::Handle<Handler>,
        seen: &Arc<Mutex<KeySeen>>,
    ) -> Result<Self> {
        let host_key = seen
            .lock()
            .map(|s| format!("{} {}", s.algo, s.key))
            .unwrap_or_default();
        let target = format!("{addr}:{port}");
        let ok = match &opts.identity {
            Some(path) => {
                let key = russh::keys::load_secret_key(path, None)
                    .with_context(|| format!("reading identity {}", path.display()))?;
                let hash = if matches!(key.algorithm(), russh::keys::Algorithm::Rsa { .. }) {
                    handle.best_supported_rsa_hash().await?.flatten()
                } else {
                    None
                };
                let r = handle
                    .authenticate_publickey(
                        opts.user.clone(),
                        russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                    )
                    .await?;
                r.success()
            }
            None => {
                let mut agent = russh::keys::agent::client::AgentClient::connect_env()
                    .await
                    .map_err(|e| anyhow!("no --identity given and no ssh-agent ({e}): set SSH_AUTH_SOCK or pass --identity FILE"))?;
                let ids = agent.request_identities().await?;
                let mut ok = false;
                for k in ids {
                    let r = handle
                        .authenticate_publickey_with(opts.user.clone(), k, None, &mut agent)
                        .await;
                    if matches!(r, Ok(ref a) if a.success()) {
                        ok = true;
                        break;
                    }
                }
                ok
            }
        };
        if !ok {
            bail!(
                "host `{name}`: public key authentication as `{}` refused by {target}",
                opts.user
            );
        }
        Ok(SshTransport {
            name: name.to_string(),
            addr: addr.to_string(),
            port,
            user: opts.user.clone(),
            handle: tokio::sync::Mutex::new(handle),
            command_timeout: opts.command_timeout,
            host_key,
        })
    }

    pub async fn close(&self) {
        let h = self.handle.lock().await;
        let _ = h
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

/// A login plus what the server showed on the way (see [`SshTransport::connect_probing`]).
pub struct Probed {
    pub transport: Result<SshTransport>,
    pub kexinit: Result<super::probe::KexInit, String>,
    pub auth: Option<Result<AuthProbe, String>>,
}

/// What the server offers before login: `none` auth → remaining methods; then a password attempt.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuthProbe {
    pub methods: Vec<String>,
    /// `Some(true)` if a (wrong) password was accepted, `Some(false)` refused, `None` not offered at all.
    pub password_accepted: Option<bool>,
}

pub async fn auth_probe(
    name: &str,
    addr: &str,
    port: u16,
    user: &str,
    opts: &SshOptions,
) -> Result<AuthProbe> {
    let (mut h, _) = open(name, addr, port, opts).await?;
    let p = probe_auth(&mut h, user).await?;
    let _ = h
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    Ok(p)
}

/// What a connected (not yet authenticated) server answers to `none` auth for `user`, and whether it
/// accepts a wrong password when it offers password auth.
async fn probe_auth(h: &mut client::Handle<Handler>, user: &str) -> Result<AuthProbe> {
    let r = h.authenticate_none(user).await?;
    let methods: Vec<String> = match &r {
        client::AuthResult::Success => vec!["none".into()],
        client::AuthResult::Failure {
            remaining_methods, ..
        } => remaining_methods
            .iter()
            .map(|m| String::from(<&str>::from(m)))
            .collect(),
    };
    let password_accepted = if methods.iter().any(|m| m == "password") {
        let r = h
            .authenticate_password(user, "labforge-verify-wrong-password")
            .await?;
        Some(r.success())
    } else {
        None
    };
    Ok(AuthProbe {
        methods,
        password_accepted,
    })
}

impl Transport for SshTransport {
    fn host(&self) -> &str {
        &self.name
    }
    fn needs_sudo(&self) -> bool {
        self.user != "root"
    }
    fn host_key(&self) -> Option<String> {
        Some(self.host_key.clone()).filter(|k| k.trim().contains(' '))
    }
    fn exec<'a>(
        &'a self,
        step: &'a str,
        cmd: &'a str,
        stdin: Option<&'a [u8]>,
    ) -> BoxFut<'a, Result<Output, TransportError>> {
        Box::pin(async move {
            let fut = async {
                let ch = {
                    let h = self.handle.lock().await;
                    h.channel_open_session().await?
                };
                ch.exec(true, cmd).await?;
                // Read while writing: if the connection dies mid-upload the reader sees it at once
                // (instead of the writer waiting for window space until the timeout).
                let (mut rd, wr) = ch.split();
                let writer = async {
                    if let Some(data) = stdin {
                        wr.data(data).await?;
                        wr.eof().await?;
                    }
                    Ok::<_, russh::Error>(())
                };
                tokio::pin!(writer);
                let mut write_done = stdin.is_none();
                let mut o = Output::default();
                let mut closed = false;
                loop {
                    tokio::select! {
                        r = &mut writer, if !write_done => {
                            write_done = true;
                            r?;
                        }
                        m = rd.wait() => match m {
                            Some(russh::ChannelMsg::Data { data }) => o.stdout.extend_from_slice(&data),
                            Some(russh::ChannelMsg::ExtendedData { data, .. }) => {
                                o.stderr.extend_from_slice(&data)
                            }
                            Some(russh::ChannelMsg::ExitStatus { exit_status }) => {
                                o.status = Some(exit_status)
                            }
                            Some(russh::ChannelMsg::Close) => {
                                closed = true;
                                break;
                            }
                            Some(_) => {}
                            None => break,
                        }
                    }
                }
                if !write_done {
                    return Err(russh::Error::Disconnect);
                }
                if !closed && o.status.is_none() {
                    return Err(russh::Error::Disconnect);
                }
                Ok::<_, russh::Error>(o)
            };
            match tokio::time::timeout(self.command_timeout, fut).await {
                Err(_) => Err(self.error(
                    step,
                    cmd_for_msg(cmd),
                    format!("timed out after {:?}", self.command_timeout),
                )),
                Ok(Err(e)) => Err(self.error(
                    step,
                    cmd_for_msg(cmd),
                    format!("SSH connection to {}:{} lost: {e}", self.addr, self.port),
                )),
                Ok(Ok(o)) => Ok(o),
            }
        })
    }
}

fn cmd_for_msg(cmd: &str) -> &str {
    cmd.lines().next().unwrap_or(cmd)
}
