//! How labforge reaches a host: a small [`Transport`] trait (run a command, upload a file atomically) with an
//! SSH implementation ([`ssh::SshTransport`], russh, strict host keys) and a local one ([`LocalTransport`],
//! `sh -c` on this machine) used by tests and for the controller's own view.
//!
//! Every error names the host, the step and the command.
//!
//! Remote paths: every path labforge writes or reads on a host is prefixed with `${LABFORGE_ROOT:-}` in the
//! shell command, which is empty on a real host. Test hosts set it (through their sshd session environment)
//! to a private directory, so a test deploy never touches the machine's own `/etc`.

pub mod known_hosts;
pub mod probe;
pub mod ssh;

use anyhow::{bail, Result};
use std::future::Future;
use std::pin::Pin;

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a command produced.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// `None` when the command ended without an exit status (killed, connection lost).
    pub status: Option<u32>,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.status == Some(0)
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A failure that names where it happened.
#[derive(Debug, thiserror::Error)]
#[error("host `{host}`, step `{step}`, command `{command}`: {message}")]
pub struct TransportError {
    pub host: String,
    pub step: String,
    pub command: String,
    pub message: String,
}

/// Run commands on a host and upload files to it.
pub trait Transport: Send + Sync {
    /// The host's spec name (for messages).
    fn host(&self) -> &str;
    /// Run `cmd` with `sh -c` semantics; `stdin` is written to the command and then closed.
    fn exec<'a>(
        &'a self,
        step: &'a str,
        cmd: &'a str,
        stdin: Option<&'a [u8]>,
    ) -> BoxFut<'a, Result<Output, TransportError>>;
    /// Whether commands need `sudo -n` for root (connected as a non-root user).
    fn needs_sudo(&self) -> bool;

    /// The host public key (`algo base64`) this session was pinned to, if it has one.
    fn host_key(&self) -> Option<String> {
        None
    }

    /// The command that runs, as root, the shell script it reads on stdin: the script itself never appears
    /// on the command line (`ps`, a `ForceCommand`'s `SSH_ORIGINAL_COMMAND`, the login shell's history).
    fn privileged_stdin(&self) -> &'static str {
        if self.needs_sudo() {
            "exec sudo -n /bin/sh -s"
        } else {
            "exec /bin/sh -s"
        }
    }

    /// Run `cmd` and fail unless it exits 0.
    fn run<'a>(
        &'a self,
        step: &'a str,
        cmd: &'a str,
    ) -> BoxFut<'a, Result<Output, TransportError>> {
        Box::pin(async move {
            let o = self.exec(step, cmd, None).await?;
            if !o.ok() {
                return Err(self.error(step, cmd, failure_text(&o)));
            }
            Ok(o)
        })
    }

    /// Write `bytes` to `path` atomically: temp file in the target directory, verify its sha256, fsync,
    /// chmod/chown, rename. An interrupted upload leaves the old file in place (never a half-written one).
    fn upload<'a>(
        &'a self,
        step: &'a str,
        path: &'a str,
        bytes: &'a [u8],
        mode: u32,
        owner: Option<&'a str>,
    ) -> BoxFut<'a, Result<(), TransportError>> {
        Box::pin(async move {
            let script = upload_script(path, &sha256_hex(bytes), mode, owner);
            let cmd = self.privileged(&script);
            let shown = format!("upload {path} ({} bytes, mode {mode:04o})", bytes.len());
            let o = self.exec(step, &cmd, Some(bytes)).await.map_err(|mut e| {
                e.command = shown.clone();
                e.message = format!(
                    "{}; the target keeps its previous content (temp file + checksum + rename)",
                    e.message
                );
                e
            })?;
            if !o.ok() {
                return Err(self.error(step, &shown, failure_text(&o)));
            }
            Ok(())
        })
    }

    fn error(&self, step: &str, cmd: &str, message: String) -> TransportError {
        TransportError {
            host: self.host().to_string(),
            step: step.to_string(),
            command: cmd.to_string(),
            message,
        }
    }

    /// Wrap a shell script so it runs as root (`sudo -n sh -c …` when connected as a non-root user).
    fn privileged(&self, script: &str) -> String {
        if self.needs_sudo() {
            format!("sudo -n sh -c {}", sq(script))
        } else {
            format!("sh -c {}", sq(script))
        }
    }
}

pub fn failure_text(o: &Output) -> String {
    let err = o.stderr_str();
    let err = err.trim();
    let status = match o.status {
        Some(s) => format!("exit status {s}"),
        None => "no exit status (killed or connection lost)".to_string(),
    };
    if err.is_empty() {
        status
    } else {
        format!("{status}: {}", truncate(err, 600))
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// POSIX shell single-quoting.
pub fn sq(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A remote path as a shell word: `"${LABFORGE_ROOT:-}"'/etc/…'`.
pub fn rpath(path: &str) -> String {
    format!("\"${{LABFORGE_ROOT:-}}\"{}", sq(path))
}

pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// The shell script behind [`Transport::upload`] (stdin = the file's bytes).
pub fn upload_script(path: &str, sha: &str, mode: u32, owner: Option<&str>) -> String {
    let chown = match owner {
        Some(o) => format!("chown {} \"$t\"\n", sq(o)),
        None => String::new(),
    };
    format!(
        r#"set -eu
p={p}
d=$(dirname -- "$p"); b=$(basename -- "$p")
mkdir -p -- "$d"
rm -f -- "$d/.$b.labforge-tmp."*
t=$(mktemp -- "$d/.$b.labforge-tmp.XXXXXX")
trap 'rm -f -- "$t"' EXIT
trap 'rm -f -- "$t"; exit 129' HUP INT TERM PIPE
cat > "$t"
if ! printf '%s  %s\n' {sha} "$t" | sha256sum -c --status -; then
  echo "incomplete upload of $p: checksum mismatch (connection lost?); previous content kept" >&2; exit 70
fi
chmod {mode:04o} "$t"
{chown}sync -- "$t"
mv -f -- "$t" "$p"
trap - EXIT HUP INT TERM PIPE
sync -- "$d" 2>/dev/null || true
"#,
        p = rpath(path),
        sha = sq(sha),
    )
}

/// A script printing `sha256  path` for each existing path (missing ones print `-  path`).
pub fn hash_script(paths: &[String]) -> String {
    let mut s = String::new();
    for p in paths {
        s.push_str(&format!(
            "f={}; if [ -f \"$f\" ]; then printf '%s  %s\\n' \"$(sha256sum < \"$f\" | cut -d' ' -f1)\" {}; else printf -- '-  %s\\n' {}; fi\n",
            rpath(p),
            sq(p),
            sq(p)
        ));
    }
    s
}

/// Parse [`hash_script`] output: path → Some(sha) or None (absent).
pub fn parse_hashes(out: &str) -> std::collections::BTreeMap<String, Option<String>> {
    out.lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(h, p)| {
            (
                p.to_string(),
                if h == "-" { None } else { Some(h.to_string()) },
            )
        })
        .collect()
}

/// Runs commands with `sh -c` on this machine (tests; the controller's own view).
pub struct LocalTransport {
    pub name: String,
    /// Extra environment (e.g. `LABFORGE_ROOT`, `PATH`).
    pub env: Vec<(String, String)>,
    pub timeout: std::time::Duration,
}

impl LocalTransport {
    pub fn new(name: &str) -> Self {
        LocalTransport {
            name: name.to_string(),
            env: Vec::new(),
            timeout: std::time::Duration::from_secs(600),
        }
    }
}

impl Transport for LocalTransport {
    fn host(&self) -> &str {
        &self.name
    }
    fn needs_sudo(&self) -> bool {
        false
    }
    fn exec<'a>(
        &'a self,
        step: &'a str,
        cmd: &'a str,
        stdin: Option<&'a [u8]>,
    ) -> BoxFut<'a, Result<Output, TransportError>> {
        Box::pin(async move {
            use tokio::io::AsyncWriteExt;
            let mut c = tokio::process::Command::new("sh");
            c.arg("-c").arg(cmd).kill_on_drop(true);
            for (k, v) in &self.env {
                c.env(k, v);
            }
            c.stdin(if stdin.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
            let mut child = c
                .spawn()
                .map_err(|e| self.error(step, cmd, format!("cannot start sh: {e}")))?;
            if let (Some(data), Some(mut w)) = (stdin, child.stdin.take()) {
                let data = data.to_vec();
                tokio::spawn(async move {
                    let _ = w.write_all(&data).await;
                    let _ = w.shutdown().await;
                });
            }
            let o = tokio::time::timeout(self.timeout, child.wait_with_output())
                .await
                .map_err(|_| self.error(step, cmd, format!("timed out after {:?}", self.timeout)))?
                .map_err(|e| self.error(step, cmd, e.to_string()))?;
            Ok(Output {
                stdout: o.stdout,
                stderr: o.stderr,
                status: o.status.code().map(|c| c as u32),
            })
        })
    }
}

/// Algorithms russh (labforge's SSH client) implements, by list.
pub fn russh_supported() -> [(&'static str, Vec<String>); 4] {
    let n = |v: Vec<&str>| v.into_iter().map(|s| s.to_string()).collect::<Vec<_>>();
    [
        (
            "KexAlgorithms",
            n(russh::kex::ALL_KEX_ALGORITHMS
                .iter()
                .map(|a| a.as_ref())
                .filter(|a| *a != "none")
                .collect()),
        ),
        (
            "Ciphers",
            n(russh::cipher::ALL_CIPHERS
                .iter()
                .map(|a| a.as_ref())
                .filter(|a| *a != "none" && *a != "clear")
                .collect()),
        ),
        (
            "MACs",
            n(russh::mac::ALL_MAC_ALGORITHMS
                .iter()
                .map(|a| a.as_ref())
                .filter(|a| *a != "none")
                .collect()),
        ),
        (
            "HostKeyAlgorithms",
            n(russh::keys::key::ALL_KEY_TYPES
                .iter()
                .map(|a| a.as_str())
                .collect()),
        ),
    ]
}

/// Refuse an sshd configuration labforge could no longer connect to: for each algorithm list the config
/// sets (`KexAlgorithms`, `Ciphers`, `MACs`, `HostKeyAlgorithms`), at least one entry must be one russh
/// implements. AEAD ciphers carry their own MAC, so an empty MAC intersection is fine when one is chosen.
pub fn check_lockout(sshd_config: &str) -> Result<()> {
    let mut set: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for line in sshd_config.lines() {
        let l = line.trim();
        if l.starts_with('#') || l.is_empty() {
            continue;
        }
        if l.to_ascii_lowercase().starts_with("match ") {
            break;
        }
        let mut it = l.splitn(2, char::is_whitespace);
        let k = it.next().unwrap_or("").to_ascii_lowercase();
        let v = it.next().unwrap_or("").trim();
        set.entry(k)
            .or_insert_with(|| v.split(',').map(|s| s.trim().to_string()).collect());
    }
    let sup = russh_supported();
    let mut problems = Vec::new();
    let aead = |c: &str| c.contains("gcm") || c.contains("poly1305");
    let mut common_ciphers = Vec::new();
    for (name, ours) in &sup {
        let Some(theirs) = set.get(&name.to_ascii_lowercase()) else {
            continue;
        };
        if theirs.iter().any(|a| a.starts_with(['+', '-', '^'])) {
            continue; // relative to OpenSSH's defaults, which always include curve25519/ed25519/etm MACs
        }
        let common: Vec<&String> = theirs.iter().filter(|a| ours.contains(a)).collect();
        if *name == "Ciphers" {
            common_ciphers = common.iter().map(|s| s.to_string()).collect();
        }
        if common.is_empty() && !(*name == "MACs" && common_ciphers.iter().any(|c| aead(c))) {
            problems.push(format!(
                "{name} {} shares nothing with labforge's SSH client ({})",
                theirs.join(","),
                ours.join(",")
            ));
        }
    }
    if !problems.is_empty() {
        bail!(
            "refusing this sshd config, labforge would lock itself out: {}; keep e.g. curve25519-sha256, chacha20-poly1305@openssh.com, hmac-sha2-256-etm@openssh.com and ssh-ed25519",
            problems.join("; ")
        );
    }
    Ok(())
}
