//! `labforge deploy`: execute the plan's per-host steps over a [`Transport`].
//!
//! Each [`Action`] of the plan describes itself (the plan's `description`), executes here, and reverts where
//! that makes sense (sshd drop-in and firewall: restore the previous file if validation or a fresh login
//! fails; NixOS: the previous generation). Hosts run in parallel up to `--parallel`; one failing host never
//! stops the others. Events go to stderr as text, or to stdout as JSON lines with `--json`; no event ever
//! carries a secret value (only paths, sizes and step ids).

pub mod nixos;
pub mod rollback;
pub mod talos;

use crate::plan::{Action, HostPlan, Step, UploadPurpose};
use crate::spec::model::{Os, Spec};
use crate::transport::{self, rpath, sq, BoxFut, Transport};
use crate::verify;
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Opens transports to a host (a fresh one each call) and verifies hosts.
pub trait Connector: Send + Sync {
    fn connect<'a>(&'a self, host: &'a str) -> BoxFut<'a, Result<Arc<dyn Transport>>>;
    fn verify<'a>(&'a self, spec: &'a Spec, host: &'a str) -> BoxFut<'a, verify::HostReport>;
}

/// The real connector: russh with the project's known_hosts.
pub struct SshConnector {
    pub spec: Arc<Spec>,
    pub opts: crate::transport::ssh::SshOptions,
    pub tofu: Vec<String>,
    pub probe_timeout: Duration,
    /// Log in as each host's first admin (else the site's first admin) instead of `opts.user`
    /// (the operator passed no `--user`).
    pub per_host_user: bool,
}

impl SshConnector {
    fn opts_for(&self, host: &str) -> crate::transport::ssh::SshOptions {
        let mut o = self.opts.clone();
        o.trust_on_first_use = self.tofu.iter().any(|h| h == host);
        if self.per_host_user {
            if let Some(u) = self.spec.hosts.get(host).and_then(|h| h.login_user()) {
                o.user = u.to_string();
            }
        }
        o
    }
}

impl Connector for SshConnector {
    fn connect<'a>(&'a self, host: &'a str) -> BoxFut<'a, Result<Arc<dyn Transport>>> {
        Box::pin(async move {
            let h = self
                .spec
                .hosts
                .get(host)
                .ok_or_else(|| anyhow!("no host `{host}`"))?;
            let addr = h
                .management_address()
                .ok_or_else(|| anyhow!("host `{host}` has no management address"))?;
            let t = crate::transport::ssh::SshTransport::connect(
                host,
                &addr.to_string(),
                h.facts.ssh_port,
                &self.opts_for(host),
            )
            .await?;
            Ok(Arc::new(t) as Arc<dyn Transport>)
        })
    }
    fn verify<'a>(&'a self, spec: &'a Spec, host: &'a str) -> BoxFut<'a, verify::HostReport> {
        Box::pin(async move {
            let h = &spec.hosts[host];
            let o = verify::Options {
                ssh: self.opts_for(host),
                probe_timeout: self.probe_timeout,
            };
            verify::verify_host(spec, h, &o).await
        })
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StepStatus {
    Changed,
    /// `--dry-run`: this step would change the host (nothing was written).
    WouldChange,
    Unchanged,
    Ok,
    Skipped,
    Blocked,
    Failed,
    RolledBack,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    HostStart {
        host: String,
        steps: usize,
    },
    Step {
        host: String,
        step: String,
        status: StepStatus,
        detail: String,
    },
    HostDone {
        host: String,
        status: StepStatus,
        changed: usize,
        detail: String,
    },
    Summary {
        hosts: Vec<HostSummary>,
        ok: bool,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct HostSummary {
    pub host: String,
    pub status: StepStatus,
    pub changed: usize,
    pub detail: String,
}

pub type Sink = Arc<dyn Fn(&Event) + Send + Sync>;
/// Resolves a spec secret name to its value (for `.env` files).
pub type SecretFn = Arc<dyn Fn(&str) -> Result<crate::secrets::Secret> + Send + Sync>;

pub struct Ctx {
    pub spec: Arc<Spec>,
    /// Repository root (rendered files are read from here, gates live here).
    pub root: PathBuf,
    pub connector: Arc<dyn Connector>,
    pub sink: Sink,
    /// How long a NixOS switch may take to be confirmed before the host rolls itself back.
    pub confirm_timeout: Duration,
    /// Secret values for `.env` files (resolved lazily; never logged).
    pub secrets: SecretFn,
    /// `--dry-run`: connect and compare (remote sha256 of every planned file, the ruleset, `.env`
    /// files), report what each step would do, and write or run nothing that changes the host.
    pub dry_run: bool,
}

#[derive(Default)]
struct HostState {
    changed: usize,
    changed_stacks: BTreeSet<String>,
    /// sshd drop-in path → previous content (`None` = did not exist) when this run replaced it.
    sshd_prev: BTreeMap<String, Option<Vec<u8>>>,
    blocked: Option<String>,
    /// The host's armed rollback while a change (sshd, firewall, a stack) is not yet confirmed (not NixOS).
    window: Option<rollback::Window>,
    /// The plan's firewall step has run (confirmation then also requires the firewall checks).
    firewall_applied: bool,
}

pub use crate::plan::remote_path;

/// Deploy every host in `plans`, at most `parallel` at a time, all in one wave. Returns the per-host
/// summaries.
pub async fn deploy(ctx: Arc<Ctx>, plans: Vec<HostPlan>, parallel: usize) -> Vec<HostSummary> {
    deploy_in_waves(ctx, plans, parallel, &[]).await
}

/// Deploy `plans` in the waves `edges` give them (a host after every planned host it needs): a wave starts
/// when the previous one has deployed and verified; a host whose provider did not succeed is not started
/// ("not started: waits on X"), while unrelated hosts go on. `--parallel` applies inside a wave.
pub async fn deploy_in_waves(
    ctx: Arc<Ctx>,
    plans: Vec<HostPlan>,
    parallel: usize,
    edges: &[crate::spec::deps::Edge],
) -> Vec<HostSummary> {
    let names: Vec<String> = plans.iter().map(|p| p.name.clone()).collect();
    let waves = crate::spec::deps::waves(&names, edges).unwrap_or_else(|_| vec![names.clone()]);
    let host_of = |e: &str| e.split('/').next().unwrap_or(e).to_string();
    let mut needs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in edges {
        if e.to.starts_with("gate:") {
            continue;
        }
        let (a, b) = (host_of(&e.from), host_of(&e.to));
        if a != b && names.contains(&a) && names.contains(&b) {
            needs.entry(a).or_default().insert(b);
        }
    }
    let mut by_name: BTreeMap<String, HostPlan> =
        plans.into_iter().map(|p| (p.name.clone(), p)).collect();
    let mut out: Vec<HostSummary> = Vec::new();
    let mut not_ok: BTreeSet<String> = BTreeSet::new();
    for wave in waves {
        let mut run = Vec::new();
        for h in wave {
            let Some(hp) = by_name.remove(&h) else {
                continue;
            };
            let waits: Vec<String> = needs
                .get(&h)
                .map(|n| n.iter().filter(|x| not_ok.contains(*x)).cloned().collect())
                .unwrap_or_default();
            if waits.is_empty() {
                run.push(hp);
            } else {
                let s = HostSummary {
                    host: h.clone(),
                    status: StepStatus::Blocked,
                    changed: 0,
                    detail: format!("not started: waits on {}", waits.join(", ")),
                };
                (ctx.sink)(&Event::HostDone {
                    host: s.host.clone(),
                    status: s.status.clone(),
                    changed: 0,
                    detail: s.detail.clone(),
                });
                not_ok.insert(h);
                out.push(s);
            }
        }
        for s in run_wave(ctx.clone(), run, parallel).await {
            let ok = if ctx.dry_run {
                !matches!(s.status, StepStatus::Failed | StepStatus::Blocked)
            } else {
                matches!(s.status, StepStatus::Changed | StepStatus::Unchanged)
            };
            if !ok {
                not_ok.insert(s.host.clone());
            }
            out.push(s);
        }
    }
    out
}

async fn run_wave(ctx: Arc<Ctx>, plans: Vec<HostPlan>, parallel: usize) -> Vec<HostSummary> {
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut handles = Vec::new();
    for hp in plans {
        let ctx = ctx.clone();
        let sem = sem.clone();
        let host = hp.name.clone();
        handles.push((
            host,
            tokio::spawn(async move {
                let _permit = sem.acquire_owned().await;
                let name = hp.name.clone();
                let r = run_host(&ctx, &hp).await;
                let s = match r {
                    Ok((st, changed, detail)) => HostSummary {
                        host: name.clone(),
                        status: st,
                        changed,
                        detail,
                    },
                    Err((changed, e)) => HostSummary {
                        host: name.clone(),
                        status: StepStatus::Failed,
                        changed,
                        detail: format!("{e:#}"),
                    },
                };
                (ctx.sink)(&Event::HostDone {
                    host: s.host.clone(),
                    status: s.status.clone(),
                    changed: s.changed,
                    detail: s.detail.clone(),
                });
                s
            }),
        ));
    }
    let mut out = Vec::new();
    for (host, h) in handles {
        match h.await {
            Ok(s) => out.push(s),
            // A host whose task panicked is a failed host (never dropped, never `?`).
            Err(e) => {
                let s = HostSummary {
                    host,
                    status: StepStatus::Failed,
                    changed: 0,
                    detail: format!("the deploy task did not finish ({e}); the host's state is unknown: run `labforge deploy --dry-run` and `labforge verify` for it"),
                };
                (ctx.sink)(&Event::HostDone {
                    host: s.host.clone(),
                    status: s.status.clone(),
                    changed: 0,
                    detail: s.detail.clone(),
                });
                out.push(s);
            }
        }
    }
    out
}

/// How long the fresh login after an sshd reload keeps retrying before the old drop-in is restored.
pub const RELOAD_LOGIN_BUDGET: Duration = Duration::from_secs(20);

type HostResult = std::result::Result<(StepStatus, usize, String), (usize, anyhow::Error)>;

async fn run_host(ctx: &Ctx, hp: &HostPlan) -> HostResult {
    (ctx.sink)(&Event::HostStart {
        host: hp.name.clone(),
        steps: hp.deploy.len(),
    });
    let mut st = HostState::default();
    let mut t: Option<Arc<dyn Transport>> = None;
    let emit = |step: &Step, status: StepStatus, detail: String| {
        (ctx.sink)(&Event::Step {
            host: hp.name.clone(),
            step: step.id.clone(),
            status,
            detail,
        })
    };
    for step in &hp.deploy {
        if let Some(b) = &st.blocked {
            emit(step, StepStatus::Skipped, format!("not run: {b}"));
            continue;
        }
        if let Action::ConnectPinned { address, port } = &step.action {
            match ctx.connector.connect(&hp.name).await {
                Ok(x) => {
                    t = Some(x);
                    emit(
                        step,
                        StepStatus::Ok,
                        format!("connected to {address}:{port}, host key pinned"),
                    );
                    continue;
                }
                Err(e) => {
                    let e = anyhow!("host `{}`, step `{}`: {e:#}", hp.name, step.id);
                    emit(step, StepStatus::Failed, format!("{e:#}"));
                    return Err((st.changed, e));
                }
            }
        }
        let Some(tr) = t.clone() else {
            let e = anyhow!(
                "host `{}`, step `{}`: no connection (the plan has no connect step)",
                hp.name,
                step.id
            );
            return Err((st.changed, e));
        };
        match exec_step(ctx, hp, step, tr.as_ref(), &mut st).await {
            Ok((status, detail)) => {
                if status == StepStatus::Changed || status == StepStatus::WouldChange {
                    st.changed += 1;
                }
                if status == StepStatus::Blocked {
                    st.blocked = Some(format!("blocked by {}", step.id));
                }
                emit(step, status, detail);
            }
            Err(e) => {
                let mut msg = format!("{e:#}");
                // A change that failed half-way: the host's armed rollback puts the previous files back.
                if let Some(w) = st.window.take() {
                    let how = rollback::roll_back(ctx, hp, tr.as_ref(), &step.id, &w).await;
                    msg.push_str(&format!("; rolled back {} ({how})", w.describe()));
                }
                let msg = if msg.contains(&step.id) {
                    msg
                } else {
                    format!("host `{}`, step `{}`: {msg}", hp.name, step.id)
                };
                emit(step, StepStatus::Failed, msg.clone());
                return Err((st.changed, anyhow!(msg)));
            }
        }
    }
    // A window still open here (its closing step did not run) is confirmed now, or rolled back.
    if st.window.is_some() {
        if let Some(tr) = t.clone() {
            if let Err(e) = rollback::confirm(
                ctx,
                hp,
                tr.as_ref(),
                "confirm",
                &mut st.window,
                st.firewall_applied,
            )
            .await
            {
                let e = anyhow!("host `{}`: {e:#}", hp.name);
                return Err((st.changed, e));
            }
        }
    }
    if let Some(b) = st.blocked {
        return Ok((StepStatus::Blocked, st.changed, b));
    }
    Ok(if st.changed == 0 {
        (StepStatus::Unchanged, 0, "no changes".into())
    } else if ctx.dry_run {
        (
            StepStatus::WouldChange,
            st.changed,
            format!(
                "dry-run: {} step(s) would change the host; nothing was written",
                st.changed
            ),
        )
    } else {
        (
            StepStatus::Changed,
            st.changed,
            format!("{} step(s) changed the host", st.changed),
        )
    })
}

async fn remote_hashes(
    t: &dyn Transport,
    step: &str,
    paths: &[String],
) -> Result<BTreeMap<String, Option<String>>> {
    let o = t
        .run(step, &t.privileged(&transport::hash_script(paths)))
        .await?;
    Ok(transport::parse_hashes(&o.stdout_str()))
}

async fn read_remote(t: &dyn Transport, step: &str, path: &str) -> Result<Option<Vec<u8>>> {
    let cmd = t.privileged(&format!(
        "f={}; if [ -f \"$f\" ]; then echo present; cat \"$f\"; else echo absent; fi",
        rpath(path)
    ));
    let o = t.run(step, &cmd).await?;
    let out = o.stdout;
    if out.starts_with(b"present\n") {
        Ok(Some(out[8..].to_vec()))
    } else {
        Ok(None)
    }
}

/// Put back what the open rollback window protects (over `t`, else by the host's timer) and say so.
async fn undo(
    ctx: &Ctx,
    hp: &HostPlan,
    t: &dyn Transport,
    step: &str,
    st: &mut HostState,
) -> String {
    match st.window.take() {
        Some(w) => {
            let how = rollback::roll_back(ctx, hp, t, step, &w).await;
            format!("rolled back {} ({how})", w.describe())
        }
        None => "nothing had changed".into(),
    }
}

fn read_local(ctx: &Ctx, file: &str) -> Result<Vec<u8>> {
    let p = ctx.root.join(file);
    std::fs::read(&p)
        .with_context(|| format!("reading {} (run `labforge render` first)", p.display()))
}

/// A rendered file's bytes, refused unless they are the ones the plan rendered (`sha256`): deploy installs
/// exactly what the plan describes, never a file edited (or left stale) after `render`.
pub(crate) fn read_planned(ctx: &Ctx, file: &str, sha256: Option<&str>) -> Result<Vec<u8>> {
    let bytes = read_local(ctx, file)?;
    let Some(want) = sha256 else {
        bail!("{file}: the plan could not render this file, so it cannot vouch for it (run `labforge render` to see why)");
    };
    let have = transport::sha256_hex(&bytes);
    if have != want {
        bail!(
            "{file} on disk is not what the plan rendered (sha256 {} on disk, {} planned): it was edited or the spec changed since; run `labforge render`",
            &have[..12],
            &want[..want.len().min(12)]
        );
    }
    Ok(bytes)
}

fn env_file(ctx: &Ctx, stack: &str) -> Result<Vec<u8>> {
    let st = ctx
        .spec
        .stacks
        .get(stack)
        .ok_or_else(|| anyhow!("no stack `{stack}`"))?;
    let mut out = format!(
        "# Written by labforge deploy from the secrets store: stack {stack}. Do not commit.\n"
    )
    .into_bytes();
    for name in crate::render::compose::stack_secrets(st) {
        let v =
            (ctx.secrets)(&name).with_context(|| format!("secret `{name}` for stack {stack}"))?;
        let s = v.expose_str().with_context(|| format!("secret `{name}`"))?;
        if s.contains('\'') || s.contains('\n') {
            bail!(
                "secret `{name}` contains a quote or newline and cannot be written to a .env file"
            );
        }
        out.extend_from_slice(
            format!("{}='", crate::render::compose::secret_var(&name)).as_bytes(),
        );
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(b"'\n");
    }
    Ok(out)
}

async fn upload_if_changed(
    t: &dyn Transport,
    step: &str,
    items: &[(String, Vec<u8>)],
    mode: u32,
    owner: &str,
) -> Result<Vec<String>> {
    let paths: Vec<String> = items.iter().map(|i| i.0.clone()).collect();
    let have = remote_hashes(t, step, &paths).await?;
    let mut changed = Vec::new();
    for (p, bytes) in items {
        let want = transport::sha256_hex(bytes);
        if have.get(p).cloned().flatten().as_deref() == Some(want.as_str()) {
            continue;
        }
        t.upload(step, p, bytes, mode, Some(owner)).await?;
        changed.push(p.clone());
    }
    Ok(changed)
}

/// The remote paths of `items` whose content differs from (or is missing on) the host.
async fn differing(
    t: &dyn Transport,
    step: &str,
    items: &[(String, Vec<u8>)],
) -> Result<Vec<String>> {
    let paths: Vec<String> = items.iter().map(|i| i.0.clone()).collect();
    let have = remote_hashes(t, step, &paths).await?;
    Ok(items
        .iter()
        .filter(|(p, b)| {
            have.get(p).cloned().flatten().as_deref() != Some(transport::sha256_hex(b).as_str())
        })
        .map(|(p, _)| p.clone())
        .collect())
}

async fn exec_step(
    ctx: &Ctx,
    hp: &HostPlan,
    step: &Step,
    t: &dyn Transport,
    st: &mut HostState,
) -> Result<(StepStatus, String)> {
    let id = step.id.as_str();
    Ok(match &step.action {
        Action::ConnectPinned { .. } => unreachable!("handled by run_host"),
        Action::Upload {
            purpose,
            files,
            dest,
            mode,
            owner,
        } => {
            let mode = mode.0;
            let mut items = Vec::new();
            for f in files {
                items.push((f.to.clone(), read_planned(ctx, &f.source, f.sha256.as_deref())?));
            }
            let is_sshd = *purpose == UploadPurpose::SshdDropin;
            let stack = match purpose {
                UploadPurpose::Stack { stack } => Some(stack.clone()),
                UploadPurpose::SshdDropin => None,
            };
            if is_sshd {
                for (p, b) in &items {
                    transport::check_lockout(&String::from_utf8_lossy(b))
                        .with_context(|| p.to_string())?;
                    if !st.sshd_prev.contains_key(p) {
                        let prev = read_remote(t, id, p).await?;
                        if prev.as_deref() != Some(b.as_slice()) {
                            st.sshd_prev.insert(p.clone(), prev);
                        }
                    }
                }
            }
            if ctx.dry_run {
                let differ = differing(t, id, &items).await?;
                if differ.is_empty() {
                    return Ok((
                        StepStatus::Unchanged,
                        format!("{} file(s) already up to date", items.len()),
                    ));
                }
                if is_sshd {
                    st.sshd_prev.retain(|p, _| differ.contains(p));
                }
                if let Some(s) = &stack {
                    st.changed_stacks.insert(s.clone());
                }
                return Ok((
                    StepStatus::WouldChange,
                    format!("would upload {}", differ.join(", ")),
                ));
            }
            if hp.os != Os::Nixos {
                let part = if is_sshd {
                    Some(rollback::Part::Sshd)
                } else {
                    stack.clone().map(|name| rollback::Part::Stack {
                        dir: dest.trim_end_matches('/').to_string(),
                        name,
                    })
                };
                if let Some(part) = part {
                    let differ = differing(t, id, &items).await?;
                    rollback::protect(ctx, t, id, &mut st.window, &differ, part).await?;
                }
            }
            let changed = upload_if_changed(t, id, &items, mode, owner).await?;
            if is_sshd {
                st.sshd_prev.retain(|p, _| changed.contains(p));
            }
            if changed.is_empty() {
                (
                    StepStatus::Unchanged,
                    format!("{} file(s) already up to date", items.len()),
                )
            } else {
                if let Some(s) = &stack {
                    st.changed_stacks.insert(s.clone());
                }
                (
                    StepStatus::Changed,
                    format!("uploaded {}", changed.join(", ")),
                )
            }
        }
        Action::UploadEnv { stack, dest } => {
            let bytes = env_file(ctx, stack)?;
            if ctx.dry_run {
                // Compared by hash only: neither the values nor the remote file are shown.
                let differ = differing(t, id, &[(dest.clone(), bytes)]).await?;
                if differ.is_empty() {
                    return Ok((StepStatus::Unchanged, format!("{dest} up to date")));
                }
                st.changed_stacks.insert(stack.clone());
                return Ok((
                    StepStatus::WouldChange,
                    format!("would rewrite {dest} (0600, values from the secrets store)"),
                ));
            }
            if hp.os != Os::Nixos {
                let item = [(dest.clone(), bytes.clone())];
                let differ = differing(t, id, &item).await?;
                let dir = dest
                    .rsplit_once('/')
                    .map(|x| x.0.to_string())
                    .unwrap_or_default();
                let part = rollback::Part::Stack {
                    name: stack.clone(),
                    dir,
                };
                rollback::protect(ctx, t, id, &mut st.window, &differ, part).await?;
            }
            let changed = upload_if_changed(t, id, &[(dest.clone(), bytes)], 0o600, "root:root").await?;
            if changed.is_empty() {
                (StepStatus::Unchanged, format!("{dest} up to date"))
            } else {
                st.changed_stacks.insert(stack.clone());
                (
                    StepStatus::Changed,
                    format!("wrote {dest} (0600, values from the secrets store)"),
                )
            }
        }
        Action::SshdValidate if ctx.dry_run => (
            StepStatus::Skipped,
            if st.sshd_prev.is_empty() {
                "dry-run: the drop-in is unchanged, nothing to validate".into()
            } else {
                "dry-run: would run `sshd -t` on the new drop-in (and restore the old one if it fails)".into()
            },
        ),
        Action::SshdReload if ctx.dry_run => {
            if st.sshd_prev.is_empty() {
                (
                    StepStatus::Unchanged,
                    "sshd config unchanged, no reload".into(),
                )
            } else {
                (
                    StepStatus::WouldChange,
                    "would reload sshd, then prove a fresh login".into(),
                )
            }
        }
        Action::SshdValidate => {
            let cmd = t.privileged(&format!("sshd -t -f {}", rpath("/etc/ssh/sshd_config")));
            let o = t.exec(id, &cmd, None).await?;
            if !o.ok() {
                let why = transport::failure_text(&o);
                let how = undo(ctx, hp, t, id, st).await;
                bail!("sshd -t rejected the new configuration ({why}); sshd was not reloaded; {how}");
            }
            // The lock-out guard on what sshd will really use (the main config may set a list first).
            let cmd = t.privileged(&format!("sshd -T -f {}", rpath("/etc/ssh/sshd_config")));
            let eff = t.run(id, &cmd).await?;
            let key_type = t
                .host_key()
                .and_then(|k| k.split_whitespace().next().map(|s| s.to_string()))
                .unwrap_or_else(|| crate::spec::ssh_algos::HOST_KEY_TYPE.to_string());
            if let Err(e) = transport::check_lockout_effective(&eff.stdout_str(), &key_type) {
                let how = undo(ctx, hp, t, id, st).await;
                bail!("{e:#}; sshd was not reloaded; {how}");
            }
            (
                StepStatus::Ok,
                "sshd -t accepts the configuration; its effective algorithm lists keep labforge's client in".into(),
            )
        }
        Action::SshdReload => {
            if st.sshd_prev.is_empty() {
                (
                    StepStatus::Unchanged,
                    "sshd config unchanged, no reload".into(),
                )
            } else {
                let mark = st
                    .window
                    .as_ref()
                    .map(|w| format!("{}; ", w.mark_sshd_reload()))
                    .unwrap_or_default();
                t.run(
                    id,
                    &t.privileged(&format!(
                        "{mark}systemctl reload ssh 2>/dev/null || systemctl reload sshd"
                    )),
                )
                .await?;
                // A fresh login (retried with backoff: sshd may be re-executing) proves the new config still
                // lets labforge in; only that login disarms the host's rollback.
                let how = rollback::confirm(ctx, hp, t, id, &mut st.window, st.firewall_applied)
                    .await
                    .map_err(|e| anyhow!("after reloading sshd: {e:#}"))?;
                (StepStatus::Changed, format!("sshd reloaded; {how}"))
            }
        }
        Action::FirewallApply { file, sha256 } => {
            let bytes = read_planned(ctx, file, sha256.as_deref())?;
            let target = rollback::RULESET;
            let have = remote_hashes(t, id, &[target.to_string()]).await?;
            if have.get(target).cloned().flatten() == Some(transport::sha256_hex(&bytes)) {
                st.firewall_applied = true;
                (StepStatus::Unchanged, format!("{target} up to date"))
            } else if ctx.dry_run {
                (
                    StepStatus::WouldChange,
                    format!("would replace {target} (checked with `nft -c` first) and load it with nft -f, armed to roll back on the host"),
                )
            } else {
                let staged = "/etc/nftables.conf.labforge-new";
                t.upload(id, staged, &bytes, 0o644, Some("root:root"))
                    .await?;
                t.run(id, &t.privileged(&format!("nft -c -f {}", rpath(staged))))
                    .await?;
                rollback::protect(
                    ctx,
                    t,
                    id,
                    &mut st.window,
                    &[target.to_string()],
                    rollback::Part::Firewall,
                )
                .await?;
                t.upload(id, target, &bytes, 0o755, Some("root:root"))
                    .await?;
                t.run(
                    id,
                    &t.privileged(&format!(
                        "rm -f -- {}; nft -f {}",
                        rpath(staged),
                        rpath(target)
                    )),
                )
                .await?;
                st.firewall_applied = true;
                let how = rollback::confirm(ctx, hp, t, id, &mut st.window, true)
                    .await
                    .map_err(|e| anyhow!("after loading the ruleset: {e:#}"))?;
                (
                    StepStatus::Changed,
                    format!("ruleset loaded with nft -f (table inet labforge); {how}"),
                )
            }
        }
        Action::ComposeUp { stack, dir } => {
            if !st.changed_stacks.contains(stack) {
                (
                    StepStatus::Unchanged,
                    format!("stack {stack} unchanged, not restarted"),
                )
            } else if ctx.dry_run {
                (
                    StepStatus::WouldChange,
                    format!("would run docker compose up -d in {dir}"),
                )
            } else {
                let host_env = format!("hosts/{}.env", hp.name);
                let cmd = t.privileged(&format!(
                    "cd {} && if [ -f {he} ]; then docker compose --env-file {he} --env-file .env up -d --remove-orphans; else docker compose --env-file .env up -d --remove-orphans; fi",
                    rpath(dir),
                    he = sq(&host_env)
                ));
                t.run(id, &cmd).await?;
                let how = rollback::confirm(ctx, hp, t, id, &mut st.window, st.firewall_applied)
                    .await
                    .map_err(|e| anyhow!("after docker compose up -d in {dir}: {e:#}"))?;
                (
                    StepStatus::Changed,
                    format!("docker compose up -d in {dir}; {how}"),
                )
            }
        }
        Action::Gate { gate } => {
            let g = ctx
                .spec
                .gates
                .get(gate)
                .ok_or_else(|| anyhow!("no gate `{gate}` in the spec"))?;
            let (status, _) = crate::gate::status(&ctx.spec, &ctx.root, g)?;
            if status == crate::gate::Status::Confirmed {
                if ctx.dry_run {
                    (StepStatus::Ok, format!("gate {gate} signed off"))
                } else {
                    // The host-side marker lets the gated stack start (now and on every boot).
                    let m = crate::gate::host_marker(gate);
                    let cmd = t.privileged(&format!(
                        "mkdir -p {dir} && chmod 0755 {dir} && printf '%s\\n' {val} > {f}.tmp && mv -f {f}.tmp {f}",
                        dir = rpath(crate::gate::HOST_MARKER_DIR),
                        val = sq(&format!("gate {gate} signed off (labforge deploy)")),
                        f = rpath(&m),
                    ));
                    t.run(id, &cmd).await?;
                    (
                        StepStatus::Ok,
                        format!("gate {gate} signed off; {m} marks it on the host"),
                    )
                }
            } else if ctx.dry_run {
                (
                    StepStatus::Blocked,
                    format!(
                        "operator gate `{gate}` ({}) is {status:?}: a deploy would stop here and show its evidence",
                        g.title
                    ),
                )
            } else {
                // Evidence is shown to the operator, never judged: labforge does not confirm gates.
                let mut ev = String::new();
                for e in &g.evidence {
                    let o = t.exec(id, &t.privileged(e), None).await;
                    let text = match o {
                        Ok(o) => format!("{}{}", o.stdout_str(), o.stderr_str()),
                        Err(e) => format!("(could not run: {e})"),
                    };
                    ev.push_str(&format!("$ {e}\n{}\n", text.trim_end()));
                }
                (
                    StepStatus::Blocked,
                    format!(
                        "operator gate `{gate}` ({}) is {status:?}: validate it by hand, then `labforge gate confirm {gate}` and deploy again{}",
                        g.title,
                        if ev.is_empty() { String::new() } else { format!("\nevidence:\n{ev}") }
                    ),
                )
            }
        }
        Action::StackStart { stack, unit } => {
            if ctx.dry_run {
                (
                    StepStatus::Skipped,
                    format!("--dry-run: would start {unit} (stack {stack})"),
                )
            } else {
                let cmd = t.privileged(&format!(
                    "systemctl is-active --quiet {u} || systemctl start {u}",
                    u = sq(unit)
                ));
                t.run(id, &cmd).await?;
                (StepStatus::Ok, format!("{unit} is active"))
            }
        }
        Action::Verify if ctx.dry_run => (
            StepStatus::Skipped,
            format!(
                "dry-run: verify runs after the changes; `labforge verify {}` checks the host as it is now",
                hp.name
            ),
        ),
        Action::Verify => {
            let r = ctx.connector.verify(&ctx.spec, &hp.name).await;
            if r.results.is_empty() || r.count(verify::Status::Pass) == 0 {
                bail!(
                    "verify evaluated no check of `{}` ({} result(s), none passing): not a pass",
                    hp.name,
                    r.results.len()
                );
            }
            let fails = r.failing();
            let errors: Vec<&str> = r
                .results
                .iter()
                .filter(|c| c.status == verify::Status::Error)
                .map(|c| c.id.as_str())
                .collect();
            if fails.is_empty() && errors.is_empty() {
                (
                    StepStatus::Ok,
                    format!("{} checks pass", r.count(verify::Status::Pass)),
                )
            } else {
                bail!(
                    "verify: failing {:?}, errors {:?} (run `labforge verify {}`)",
                    fails,
                    errors,
                    hp.name
                )
            }
        }
        Action::NixosSwitch { .. } => nixos::switch(ctx, hp, step, t, &mut st.changed).await?,
        Action::TalosApplyConfig { .. }
        | Action::TalosBootstrap { .. }
        | Action::TalosKubeconfig { .. }
        | Action::TalosHealth { .. } => {
            bail!("Talos steps run through talosctl on the controller (deploy::talos), never over SSH")
        }
    })
}

/// Human summary table.
pub fn summary_table(s: &[HostSummary]) -> String {
    let mut o = format!("{:<16} {:<12} {:>7}  DETAIL\n", "HOST", "RESULT", "CHANGED");
    for h in s {
        let st = serde_json::to_value(&h.status)
            .ok()
            .and_then(|v| v.as_str().map(|s| s.to_string()))
            .unwrap_or_default();
        o.push_str(&format!(
            "{:<16} {:<12} {:>7}  {}\n",
            h.host,
            st,
            h.changed,
            h.detail.lines().next().unwrap_or("")
        ));
    }
    o
}

/// A sink that prints human progress to stderr, or JSON lines to stdout.
pub fn sink(json: bool) -> Sink {
    if !json && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return progress_sink();
    }
    let lock = Arc::new(Mutex::new(()));
    Arc::new(move |e: &Event| {
        let _g = lock.lock();
        if json {
            if let Ok(s) = serde_json::to_string(e) {
                println!("{s}");
            }
        } else {
            match e {
                Event::HostStart { host, steps } => eprintln!("[{host}] {steps} step(s)"),
                Event::Step {
                    host,
                    step,
                    status,
                    detail,
                } => {
                    eprintln!("[{host}] {step}: {status:?} — {detail}")
                }
                Event::HostDone { host, status, .. } => eprintln!("[{host}] done: {status:?}"),
                Event::Summary { .. } => {}
            }
        }
    })
}

/// On a terminal: one progress bar per host (steps done of the plan's steps, the current step), a view
/// over the same events the log and `--json` print. Failures and gate blocks are printed above the bars
/// in full, since a bar's message is cut to the terminal width.
fn progress_sink() -> Sink {
    let mp = indicatif::MultiProgress::new();
    let bars: Arc<Mutex<BTreeMap<String, indicatif::ProgressBar>>> = Default::default();
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:>12.bold} [{bar:20}] {pos}/{len} {wide_msg}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    Arc::new(move |e: &Event| {
        let Ok(mut bars) = bars.lock() else { return };
        match e {
            Event::HostStart { host, steps } => {
                let pb = mp.add(indicatif::ProgressBar::new(*steps as u64));
                pb.set_style(style.clone());
                pb.set_prefix(host.clone());
                bars.insert(host.clone(), pb);
            }
            Event::Step {
                host,
                step,
                status,
                detail,
            } => {
                if let Some(pb) = bars.get(host) {
                    pb.inc(1);
                    pb.set_message(format!("{step}: {status:?}"));
                }
                if matches!(status, StepStatus::Failed | StepStatus::Blocked) {
                    let _ = mp.println(format!("[{host}] {step}: {status:?} — {detail}"));
                }
            }
            Event::HostDone { host, status, .. } => {
                if let Some(pb) = bars.get(host) {
                    pb.finish_with_message(format!("{status:?}"));
                }
            }
            Event::Summary { .. } => {}
        }
    })
}

/// Which hosts a deploy/verify selects: names, `--all`, or `--on TAG`.
pub fn select_hosts(
    spec: &Spec,
    names: &[String],
    all: bool,
    tag: Option<&str>,
) -> Result<Vec<String>, String> {
    if let Some(t) = tag {
        let v: Vec<String> = spec
            .hosts
            .values()
            .filter(|h| h.tags.iter().any(|x| x == t) || h.role == t)
            .map(|h| h.name.clone())
            .collect();
        if v.is_empty() {
            return Err(format!("no host has tag or role `{t}`"));
        }
        return Ok(v);
    }
    if all {
        return Ok(spec
            .hosts
            .values()
            .filter(|h| h.os != Os::Talos)
            .map(|h| h.name.clone())
            .collect());
    }
    if names.is_empty() {
        return Err("name hosts, or pass --all or --on TAG".into());
    }
    // A cluster's name stands for its nodes (control planes first), unless a host has that name.
    let mut out: Vec<String> = Vec::new();
    for n in names {
        let v: Vec<String> = match (spec.hosts.get(n), spec.clusters.get(n)) {
            (None, Some(c)) => c.control_planes.iter().chain(&c.workers).cloned().collect(),
            _ => crate::plan::select(spec, std::slice::from_ref(n))
                .map_err(|e| {
                    if spec.clusters.is_empty() {
                        e
                    } else {
                        format!(
                            "{e}; clusters: {}",
                            spec.clusters.keys().cloned().collect::<Vec<_>>().join(", ")
                        )
                    }
                })?
                .iter()
                .map(|h| h.name.clone())
                .collect(),
        };
        for x in v {
            if !out.contains(&x) {
                out.push(x);
            }
        }
    }
    Ok(out)
}

/// The clusters named among `names` (not hosts of the same name): `deploy CLUSTER` runs their cluster steps.
pub fn selected_clusters(spec: &Spec, names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| !spec.hosts.contains_key(*n) && spec.clusters.contains_key(*n))
        .cloned()
        .collect()
}
