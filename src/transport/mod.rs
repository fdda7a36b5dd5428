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

/// A shell word, quoted only when it needs it (for commands a person reads and may paste).
pub fn sq_if_needed(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:,=@%+".contains(c))
    {
        s.to_string()
    } else {
        sq(s)
    }
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

/// Lists of an sshd config text, first value wins (as sshd reads them), up to the first `Match`. Lists
/// relative to OpenSSH's defaults (`+…`, `^…`) keep the defaults; `-…` removes from them.
fn config_lists(text: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    use crate::spec::ssh_algos as a;
    let mut set: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('#') || l.is_empty() {
            continue;
        }
        let mut it = l.splitn(2, |c: char| c.is_whitespace() || c == '=');
        let k = it.next().unwrap_or("").to_ascii_lowercase();
        if k == "match" {
            break;
        }
        let v = it
            .next()
            .unwrap_or("")
            .trim()
            .trim_start_matches('=')
            .trim();
        let ours = match k.as_str() {
            "kexalgorithms" => a::client_kex(),
            "ciphers" => a::client_ciphers(),
            "macs" => a::client_macs(),
            "hostkeyalgorithms" => a::client_host_keys(),
            _ => continue,
        };
        let list: Vec<String> = if let Some(rest) = v.strip_prefix('-') {
            // OpenSSH's defaults include everything the client offers that is not removed here.
            let removed: Vec<&str> = rest.split(',').map(|s| s.trim()).collect();
            ours.into_iter()
                .filter(|x| !removed.iter().any(|r| wildcard(r, x)))
                .collect()
        } else if v.starts_with('+') || v.starts_with('^') {
            ours
        } else {
            v.split(',').map(|s| s.trim().to_string()).collect()
        };
        set.entry(k).or_insert(list);
    }
    set
}

fn wildcard(p: &str, s: &str) -> bool {
    match p.split_once('*') {
        Some((a, b)) => s.starts_with(a) && s[a.len()..].ends_with(b),
        None => p == s,
    }
}

fn lockout_error(
    what: &str,
    set: &std::collections::BTreeMap<String, Vec<String>>,
    key_type: &str,
) -> Result<()> {
    use crate::spec::ssh_algos::{lockouts, Lists};
    let l = Lists {
        kex: set.get("kexalgorithms").map(|v| v.as_slice()),
        ciphers: set.get("ciphers").map(|v| v.as_slice()),
        macs: set.get("macs").map(|v| v.as_slice()),
        host_keys: set.get("hostkeyalgorithms").map(|v| v.as_slice()),
    };
    let problems = lockouts(&l, key_type);
    if problems.is_empty() {
        return Ok(());
    }
    bail!(
        "refusing {what}, labforge would lock itself out: {}",
        problems
            .iter()
            .map(|p| format!("{} — {} ({})", p.keyword, p.message, p.fix))
            .collect::<Vec<_>>()
            .join("; ")
    )
}

/// Refuse an sshd configuration text labforge could no longer connect to (the lock-out guard of
/// `crate::spec::ssh_algos`, with the lists the text sets before any `Match`).
pub fn check_lockout(sshd_config: &str) -> Result<()> {
    lockout_error(
        "this sshd config",
        &config_lists(sshd_config),
        crate::spec::ssh_algos::HOST_KEY_TYPE,
    )
}

/// The same guard on the host's effective configuration (`sshd -T` output) before a reload, for a host
/// whose key is of `key_type` (the key this session was pinned to).
pub fn check_lockout_effective(sshd_t: &str, key_type: &str) -> Result<()> {
    let mut set: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for l in sshd_t.lines() {
        let mut it = l.splitn(2, ' ');
        let k = it.next().unwrap_or("").to_ascii_lowercase();
        if matches!(
            k.as_str(),
            "kexalgorithms" | "ciphers" | "macs" | "hostkeyalgorithms"
        ) {
            let v = it.next().unwrap_or("").trim();
            set.entry(k)
                .or_insert_with(|| v.split(',').map(|s| s.to_string()).collect());
        }
    }
    for k in ["kexalgorithms", "ciphers", "macs", "hostkeyalgorithms"] {
        if !set.contains_key(k) {
            bail!("the effective sshd configuration (sshd -T) prints no `{k}`: cannot prove labforge keeps access; not reloading");
        }
    }
    lockout_error(
        "the host's effective sshd configuration (sshd -T)",
        &set,
        key_type,
    )
}

/// Retry `attempt` with exponential backoff (from `first`, doubling, at most `max_step`) until it
/// succeeds or `budget` has passed; returns the last error and how many attempts were made.
pub async fn retry_with_backoff<T, F, Fut>(
    budget: std::time::Duration,
    first: std::time::Duration,
    max_step: std::time::Duration,
    mut attempt: F,
) -> (std::result::Result<T, anyhow::Error>, u32)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, anyhow::Error>>,
{
    let start = std::time::Instant::now();
    let mut step = first;
    let mut n = 0;
    loop {
        n += 1;
        match attempt().await {
            Ok(v) => return (Ok(v), n),
            Err(e) => {
                let left = budget.saturating_sub(start.elapsed());
                if left.is_zero() {
                    return (Err(e), n);
                }
                tokio::time::sleep(step.min(left)).await;
                step = (step * 2).min(max_step);
            }
        }
    }
}
