//! `labforge verify`: run the check catalog ([`checks`]) against live hosts and judge the results.
//!
//! Remote probes of one host run as ONE script over one SSH channel (each probe framed by markers), the
//! wire probes (KEXINIT, auth methods) and the controller's TCP probes run concurrently beside it.

pub mod accounts;
pub mod batch;
pub mod checks;
pub mod eval;
mod eval_sshd;
pub mod listeners;
pub mod probes;
pub mod talos;

use crate::spec::model::{Host, Spec};
use crate::transport::ssh::{self, SshOptions};
use crate::transport::{probe, Transport};
use checks::{Check, Probe};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    /// Passes, with something the operator should fix (never changes the exit code).
    Warn,
    Fail,
    Error,
    Skip,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Error => "error",
            Status::Skip => "skip",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub id: String,
    pub title: String,
    pub rule: String,
    pub status: Status,
    pub detail: String,
    pub remediation: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    pub host: String,
    pub results: Vec<CheckResult>,
}

impl HostReport {
    pub fn count(&self, s: Status) -> usize {
        self.results.iter().filter(|r| r.status == s).count()
    }
    pub fn failing(&self) -> Vec<&str> {
        self.results
            .iter()
            .filter(|r| r.status == Status::Fail)
            .map(|r| r.id.as_str())
            .collect()
    }
}

/// The outcome of one remote probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteOut {
    Ok(String),
    Failed { status: String, output: String },
    Missing(String),
}

pub use batch::batch_script;

/// Everything the probes of one host produced.
#[derive(Debug, Default)]
pub struct Facts {
    pub remote: BTreeMap<String, RemoteOut>,
    /// Why remote probes could not run at all (login failed …) or their output was refused.
    pub remote_error: Option<String>,
    /// Whether the remote output was accepted: `Ok(how)` framed and signed as expected, `Err(why)` refused.
    /// `None` when no remote probe ran.
    pub integrity: Option<Result<String, String>>,
    pub kexinit: Option<Result<probe::KexInit, String>>,
    pub auth: Option<Result<ssh::AuthProbe, String>>,
    /// `Ok(())` when the pinned host key matched.
    pub pinned: Option<Result<(), String>>,
    pub tcp: BTreeMap<(String, u16), bool>,
}

pub struct Options {
    pub ssh: SshOptions,
    pub probe_timeout: Duration,
}

/// Where a probe of `a:p` really connects (the SSH options' connect-address overrides apply).
fn sockaddr_via(opts: &SshOptions, a: &str, p: u16) -> Option<SocketAddr> {
    opts.target(a, p).parse().ok()
}

/// With connect-address overrides (a guest behind QEMU user networking), a TCP probe from the controller
/// reaches only the forwarded ports: every other one cannot say anything about the host and is skipped.
pub fn skip_unreachable_probes(checks: &mut [Check], opts: &SshOptions) {
    if opts.connect_via.is_empty() {
        return;
    }
    for c in checks.iter_mut().filter(|c| c.not_applicable.is_none()) {
        if let Probe::Tcp { address, port } = &c.probe {
            let forwarded = sockaddr(address, *port)
                .map(|sa| opts.connect_via.contains_key(&sa))
                .unwrap_or(false);
            if !forwarded {
                c.not_applicable = Some(format!(
                    "the host is reached through forwarded ports only (connect-address override, e.g. QEMU user networking): a TCP probe of {address}:{port} from the controller cannot reach it"
                ));
            }
        }
    }
}

/// The address the controller's connections to `mgmt:port` leave from: the kernel's route lookup for a
/// connected UDP socket (no packet is sent).
fn controller_source(opts: &SshOptions, mgmt: &str, port: u16) -> Option<std::net::IpAddr> {
    let sa = sockaddr_via(opts, mgmt, port)?;
    let s = std::net::UdpSocket::bind(if sa.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).ok()?;
    s.connect(sa).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

fn sockaddr(a: &str, p: u16) -> Option<SocketAddr> {
    a.parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, p))
}

/// Why remote facts are missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteError {
    /// The probe script could not run (no login, sudo refused, connection lost …).
    NotRun(String),
    /// It ran but its output was refused (framing, nonce or signature): the host's report is not trusted.
    Refused(String),
}

/// The distinct remote probes of `checks`, in catalog order (with the account checks' phase-1 probes).
pub fn remote_probes(checks: &[Check]) -> Vec<(String, String, String)> {
    let mut probes: Vec<(String, String, String)> = Vec::new();
    let mut add = |p: (String, String, String)| {
        if !probes.iter().any(|x| x.0 == p.0) {
            probes.push(p);
        }
    };
    for c in checks.iter().filter(|c| c.not_applicable.is_none()) {
        match &c.probe {
            Probe::Remote { key, tool, command } => {
                add((key.clone(), tool.clone(), command.clone()))
            }
            Probe::Accounts { .. } => accounts::phase1_probes().into_iter().for_each(&mut add),
            _ => {}
        }
    }
    probes
}

/// The account checks' context, if any is active.
fn accounts_ctx(checks: &[Check]) -> Option<&accounts::Ctx> {
    checks
        .iter()
        .filter(|c| c.not_applicable.is_none())
        .find_map(|c| match &c.probe {
            Probe::Accounts { ctx } => Some(ctx.as_ref()),
            _ => None,
        })
}

/// Run `probes` as one batch over `t` (script on stdin, as root) and accept only exactly framed output,
/// signed with the session's pinned host key when it has one.
pub async fn run_batch(
    t: &dyn Transport,
    probes: &[(String, String, String)],
) -> Result<BTreeMap<String, RemoteOut>, RemoteError> {
    if probes.is_empty() {
        return Ok(BTreeMap::new());
    }
    let host_key = t.host_key();
    let b = batch::batch(probes, host_key.as_deref());
    let o = t
        .exec("verify", t.privileged_stdin(), Some(b.script.as_bytes()))
        .await
        .map_err(|e| RemoteError::NotRun(e.to_string()))?;
    match batch::parse(&o.stdout, &b) {
        Ok(m) => Ok(m),
        // Nothing at all on stdout and a failure status: the script never ran (sudo refused …).
        Err(_) if o.stdout.is_empty() && !o.ok() => Err(RemoteError::NotRun(format!(
            "the probe script did not run ({})",
            crate::transport::failure_text(&o)
        ))),
        Err(e) => Err(RemoteError::Refused(e)),
    }
}

/// Run the remote probes of `checks` over an existing transport: the main batch, then — when the account
/// checks need it (the config has `Match` blocks) — a second batch over the same session.
pub async fn remote_facts(
    t: &dyn Transport,
    checks: &[Check],
) -> Result<BTreeMap<String, RemoteOut>, RemoteError> {
    let mut m = run_batch(t, &remote_probes(checks)).await?;
    if let Some(ctx) = accounts_ctx(checks) {
        let p2 = accounts::phase2_probes(ctx, &m);
        if !p2.is_empty() {
            m.extend(run_batch(t, &p2).await?);
        }
    }
    Ok(m)
}

/// Record a batch result in `facts`.
pub fn record_remote(
    facts: &mut Facts,
    r: Result<BTreeMap<String, RemoteOut>, RemoteError>,
    signed_by: Option<&str>,
) {
    match r {
        Ok(m) => {
            if !m.is_empty() || facts.integrity.is_none() {
                let how = match signed_by {
                    Some(k) => format!(
                        "{} probe result(s), framed with this run's nonce and signed by the pinned host key {}",
                        m.len(),
                        k.split_whitespace().next().unwrap_or("")
                    ),
                    None => format!(
                        "{} probe result(s), framed with this run's nonce (no pinned key to verify a signature)",
                        m.len()
                    ),
                };
                if !matches!(facts.integrity, Some(Err(_))) {
                    facts.integrity = Some(Ok(how));
                }
            }
            facts.remote.extend(m);
        }
        Err(RemoteError::NotRun(e)) => {
            facts.remote_error.get_or_insert(e);
        }
        Err(RemoteError::Refused(e)) => {
            facts.remote_error = Some(format!(
                "the host's probe output was refused (nothing it reported is trusted): {e}"
            ));
            facts.integrity = Some(Err(e));
        }
    }
}

/// The KEXINIT probe's target of `checks`, if any.
fn kex_target(checks: &[Check]) -> Option<(String, u16)> {
    checks
        .iter()
        .filter(|c| c.not_applicable.is_none())
        .find_map(|c| match &c.probe {
            Probe::Kexinit { address, port } => Some((address.clone(), *port)),
            _ => None,
        })
}

/// The auth-methods probe's target and user of `checks`, if any.
fn auth_target(checks: &[Check]) -> Option<(String, u16, String)> {
    checks
        .iter()
        .filter(|c| c.not_applicable.is_none())
        .find_map(|c| match &c.probe {
            Probe::Auth {
                address,
                port,
                user,
            } => Some((address.clone(), *port, user.clone())),
            _ => None,
        })
}

/// Which probes need no login of their own.
#[derive(Clone, Copy)]
pub struct WireProbes {
    pub kexinit: bool,
    pub auth: bool,
}

/// Run the probes that need no login (KEXINIT, auth methods, TCP) for `checks`; `which` says whether the
/// KEXINIT and auth probes still need their own connections (the login session may have answered them).
pub async fn wire_facts(
    name: &str,
    checks: &[Check],
    opts: &Options,
    which: WireProbes,
    facts: &mut Facts,
) {
    let active: Vec<&Check> = checks
        .iter()
        .filter(|c| c.not_applicable.is_none())
        .collect();
    let kex = kex_target(checks).filter(|_| which.kexinit);
    let auth = auth_target(checks).filter(|_| which.auth);
    let mut tcps: Vec<(String, u16)> = active
        .iter()
        .filter_map(|c| match &c.probe {
            Probe::Tcp { address, port } => Some((address.clone(), *port)),
            _ => None,
        })
        .collect();
    tcps.sort();
    tcps.dedup();
    let kex_f = async {
        match &kex {
            Some((a, p)) => Some(match sockaddr_via(&opts.ssh, a, *p) {
                Some(sa) => probe::kexinit(sa, opts.ssh.connect_timeout)
                    .await
                    .map_err(|e| format!("{e:#}")),
                None => Err(format!("`{a}` is not an address")),
            }),
            None => None,
        }
    };
    let auth_f = async {
        match &auth {
            Some((a, p, u)) => Some(
                tokio::time::timeout(
                    opts.ssh.connect_timeout,
                    ssh::auth_probe(name, a, *p, u, &opts.ssh),
                )
                .await
                .map_err(|_| format!("auth probe timed out after {:?}", opts.ssh.connect_timeout))
                .and_then(|r| r.map_err(|e| format!("{e:#}"))),
            ),
            None => None,
        }
    };
    let tcp_f = futures_join(tcps.iter().map(|(a, p)| {
        let a = a.clone();
        let p = *p;
        let to = opts.probe_timeout;
        let ssh_opts = opts.ssh.clone();
        async move {
            let open = match sockaddr_via(&ssh_opts, &a, p) {
                Some(sa) => probe::tcp_open(sa, to).await,
                None => false,
            };
            ((a, p), open)
        }
    }));
    let (k, au, tc) = tokio::join!(kex_f, auth_f, tcp_f);
    facts.kexinit = k;
    facts.auth = au;
    facts.tcp = tc.into_iter().collect();
}

async fn futures_join<F: std::future::Future + Send + 'static>(
    it: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let hs: Vec<_> = it.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in hs {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// Verify one host end to end over SSH.
pub async fn verify_host(spec: &Spec, h: &Host, opts: &Options) -> HostReport {
    let mut checks = checks::for_host(spec, h);
    let mgmt = h
        .management_address()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let port = h.facts.ssh_port;
    // Behind connect-address overrides (QEMU user networking) the controller is not on the lab's networks:
    // its vantage point says nothing about the policy.
    if let Some(src) =
        controller_source(&opts.ssh, &mgmt, port).filter(|_| opts.ssh.connect_via.is_empty())
    {
        checks.extend(checks::exposure_checks(spec, h, src));
    }
    skip_unreachable_probes(&mut checks, &opts.ssh);
    let mut facts = Facts::default();
    // The login session also reads the server's KEXINIT and auth answer when those probes target the
    // address it logs in to (the usual case: both are the management address), saving the host two
    // connections — each an sshd fork and re-exec.
    let same_kex = kex_target(&checks).is_some_and(|(a, p)| a == mgmt && p == port);
    let probe_user = auth_target(&checks)
        .filter(|(a, p, u)| *a == mgmt && *p == port && *u == opts.ssh.user)
        .map(|(_, _, u)| u);
    let which = WireProbes {
        kexinit: !same_kex,
        auth: probe_user.is_none(),
    };
    let remote = async {
        let probed = ssh::SshTransport::connect_probing(
            &h.name,
            &mgmt,
            port,
            &opts.ssh,
            probe_user.as_deref(),
        )
        .await;
        let (pinned, r) = match probed.transport {
            Ok(t) => {
                let r = remote_facts(&t, &checks).await;
                t.close().await;
                (Some(Ok(())), r.map(|m| (m, t.host_key())))
            }
            Err(e) => {
                let msg = format!("{e:#}");
                let pinned = if msg.contains("HOST KEY MISMATCH") || msg.contains("is not in") {
                    Some(Err(msg.clone()))
                } else {
                    None
                };
                (
                    pinned,
                    Err(RemoteError::NotRun(format!("cannot log in: {msg}"))),
                )
            }
        };
        (pinned, r, probed.kexinit, probed.auth)
    };
    let mut wire = Facts::default();
    let ((pinned, r, kex, auth), ()) =
        tokio::join!(remote, wire_facts(&h.name, &checks, opts, which, &mut wire));
    facts.kexinit = if same_kex { Some(kex) } else { wire.kexinit };
    facts.auth = if which.auth { wire.auth } else { auth };
    facts.tcp = wire.tcp;
    facts.pinned = pinned;
    match r {
        Ok((m, key)) => record_remote(&mut facts, Ok(m), key.as_deref()),
        Err(e) => record_remote(&mut facts, Err(e), None),
    }
    judge(&h.name, &checks, &facts)
}

/// Verify over an already-open transport: the remote probes only (no wire or TCP probes, whose checks are
/// then `error`). For stub transports in tests and for callers that hold a session already.
pub async fn verify_over(spec: &Spec, h: &Host, t: &dyn Transport) -> HostReport {
    let checks = checks::for_host(spec, h);
    let mut facts = Facts::default();
    let r = remote_facts(t, &checks).await;
    let key = t.host_key();
    record_remote(&mut facts, r, key.as_deref());
    judge(&h.name, &checks, &facts)
}

/// The report of a host whose verify task did not finish (panicked, cancelled): one `error` result, so the
/// host counts as failed and the run exits non-zero. Never dropped.
pub fn unfinished(host: &str, why: &str) -> HostReport {
    HostReport {
        host: host.to_string(),
        results: vec![CheckResult {
            id: "verify.completed".into(),
            title: "every check of the host was evaluated".into(),
            rule: "labforge verify".into(),
            status: Status::Error,
            detail: format!("the verify task of `{host}` did not finish: {why}; none of its checks can be trusted"),
            remediation: "re-run `labforge verify` for this host; report the message as a labforge bug".into(),
        }],
    }
}

/// Run one verify task per host in `names`, at most `parallel` at a time, and return one report per host in
/// order. A task that panics or is cancelled yields [`unfinished`] for its host instead of vanishing.
pub async fn run_hosts<F, Fut>(names: &[String], parallel: usize, task: F) -> Vec<HostReport>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = HostReport> + Send + 'static,
{
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut hs = Vec::new();
    for n in names {
        let sem = sem.clone();
        let fut = task(n.clone());
        hs.push((
            n.clone(),
            tokio::spawn(async move {
                let _p = sem.acquire_owned().await;
                fut.await
            }),
        ));
    }
    let mut v = Vec::new();
    for (n, h) in hs {
        v.push(match h.await {
            Ok(r) if r.host == n => r,
            Ok(r) => unfinished(&n, &format!("it returned the report of `{}`", r.host)),
            Err(e) if e.is_panic() => {
                let p = e.into_panic();
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into());
                unfinished(&n, &format!("it panicked: {msg}"))
            }
            Err(e) => unfinished(&n, &format!("it was cancelled: {e}")),
        });
    }
    v
}

/// Judge every check from the facts.
pub fn judge(host: &str, checks: &[Check], facts: &Facts) -> HostReport {
    let results = checks
        .iter()
        .map(|c| {
            let (status, detail) = match &c.not_applicable {
                Some(why) => (Status::Skip, why.clone()),
                None => eval::evaluate(c, facts),
            };
            CheckResult {
                id: c.id.clone(),
                title: c.title.clone(),
                rule: c.rule.clone(),
                status,
                detail,
                remediation: c.remediation.clone(),
            }
        })
        .collect();
    HostReport {
        host: host.to_string(),
        results,
    }
}

/// 0 all pass (skips allowed), 1 findings, 2 a check could not be evaluated.
pub fn exit_code(reports: &[HostReport]) -> i32 {
    let any = |s| reports.iter().any(|r| r.count(s) > 0);
    if any(Status::Error) {
        2
    } else if any(Status::Fail) {
        1
    } else {
        0
    }
}

pub fn human(reports: &[HostReport]) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "{:<14} {:<34} {:<6} DETAIL", "HOST", "CHECK", "STATUS");
    for r in reports {
        for c in &r.results {
            let mut d = c.detail.replace('\n', " ");
            if d.len() > 110 {
                let mut cut = 110;
                while !d.is_char_boundary(cut) {
                    cut -= 1;
                }
                d.truncate(cut);
                d.push('…');
            }
            let _ = writeln!(
                o,
                "{:<14} {:<34} {:<6} {}",
                r.host,
                c.id,
                c.status.as_str(),
                d
            );
            if c.status == Status::Fail || c.status == Status::Warn {
                let _ = writeln!(
                    o,
                    "{:<14} {:<34} {:<6} fix: {} ({})",
                    "", "", "", c.remediation, c.rule
                );
            }
        }
    }
    let _ = writeln!(
        o,
        "\n{:<14} {:>5} {:>5} {:>5} {:>5} {:>5}",
        "SUMMARY", "pass", "warn", "fail", "error", "skip"
    );
    for r in reports {
        let _ = writeln!(
            o,
            "{:<14} {:>5} {:>5} {:>5} {:>5} {:>5}",
            r.host,
            r.count(Status::Pass),
            r.count(Status::Warn),
            r.count(Status::Fail),
            r.count(Status::Error),
            r.count(Status::Skip)
        );
    }
    o
}

fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' && c != '\r' => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// JUnit XML: one testsuite per host, one testcase per check.
pub fn junit(reports: &[HostReport]) -> String {
    let mut o = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let tot = |s| reports.iter().map(|r| r.count(s)).sum::<usize>();
    let n: usize = reports.iter().map(|r| r.results.len()).sum();
    o.push_str(&format!(
        "<testsuites name=\"labforge verify\" tests=\"{n}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\">\n",
        tot(Status::Fail),
        tot(Status::Error),
        tot(Status::Skip)
    ));
    for r in reports {
        o.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\">\n",
            xml_escape(&r.host),
            r.results.len(),
            r.count(Status::Fail),
            r.count(Status::Error),
            r.count(Status::Skip)
        ));
        for c in &r.results {
            o.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"{}\">",
                xml_escape(&r.host),
                xml_escape(&c.id)
            ));
            match c.status {
                Status::Pass => {}
                Status::Warn => o.push_str(&format!(
                    "<system-out>warning: {}\nfix: {}</system-out>",
                    xml_escape(&c.detail),
                    xml_escape(&c.remediation)
                )),
                Status::Fail => o.push_str(&format!(
                    "<failure message=\"{}\">{}\nfix: {} ({})</failure>",
                    xml_escape(&c.title),
                    xml_escape(&c.detail),
                    xml_escape(&c.remediation),
                    xml_escape(&c.rule)
                )),
                Status::Error => o.push_str(&format!(
                    "<error message=\"{}\">{}</error>",
                    xml_escape(&c.title),
                    xml_escape(&c.detail)
                )),
                Status::Skip => {
                    o.push_str(&format!("<skipped message=\"{}\"/>", xml_escape(&c.detail)))
                }
            }
            o.push_str("</testcase>\n");
        }
        o.push_str("  </testsuite>\n");
    }
    o.push_str("</testsuites>\n");
    o
}
