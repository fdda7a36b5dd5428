//! Talos deploy: the plan's typed Talos actions run through `talosctl` on the controller (Talos has no SSH).
//!
//! Per node ([`Action::TalosApplyConfig`], in its host plan): the node's current machine config is read
//! with the cluster's talosconfig (`get machineconfig -o json`, whose `spec` is the config as submitted);
//! equal documents → unchanged; a configured node → `apply-config` with the talosconfig; a node that only
//! answers in maintenance mode → `apply-config --insecure` (first install); neither → failed.
//! Per cluster ([`crate::plan::ClusterPlan::steps`], `deploy CLUSTER` only, after every node applied):
//! wait for the bootstrap node's authenticated API, `bootstrap` once (guarded by `etcd members`),
//! `kubeconfig`, `health` with a bounded wait. Every step reports an [`Event`]; no event carries a secret
//! (the talosconfig and machine configs hold the cluster's CA keys: only their paths are ever printed).

use super::{Event, HostSummary, Sink, StepStatus};
use crate::plan::{Action, ClusterPlan, HostPlan, Step};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `talosctl` on the controller.
pub struct Talosctl {
    pub bin: PathBuf,
    /// Repository root: the plan's paths (`out/talos/...`) are relative to it.
    pub root: PathBuf,
    /// How long one talosctl call may take (health has its own `--wait-timeout` on top).
    pub call_timeout: Duration,
}

/// `talosctl` from `PATH`, if any.
pub fn find_talosctl() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("talosctl"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// What one talosctl call returned.
struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Out {
    fn why(&self) -> String {
        let e = self.stderr.trim();
        let e = if e.is_empty() { self.stdout.trim() } else { e };
        let first: Vec<&str> = e.lines().take(3).collect();
        first.join(" / ")
    }
}

impl Talosctl {
    async fn run(&self, args: &[String], extra: Duration) -> Result<Out> {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(args)
            .current_dir(&self.root)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let what = format!(
            "talosctl {}",
            args.first().map(|s| s.as_str()).unwrap_or("")
        );
        let o = tokio::time::timeout(self.call_timeout + extra, cmd.output())
            .await
            .map_err(|_| {
                anyhow!(
                    "{what} did not finish within {:?}",
                    self.call_timeout + extra
                )
            })?
            .with_context(|| format!("running {} ({what})", self.bin.display()))?;
        Ok(Out {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        })
    }
}

/// The commands an operator runs by hand for these Talos plans (no talosctl on PATH).
pub fn manual_commands(nodes: &[&HostPlan], clusters: &[&ClusterPlan]) -> Vec<String> {
    let mut v: Vec<String> = nodes
        .iter()
        .flat_map(|h| h.deploy.iter())
        .filter_map(|s| s.action.talosctl_command(true))
        .collect();
    for c in clusters {
        v.extend(
            c.steps
                .iter()
                .filter_map(|s| s.action.talosctl_command(false)),
        );
    }
    v
}

/// YAML documents of a machine config, as data (comments and formatting do not count).
fn documents(text: &str) -> Result<Vec<serde_json::Value>> {
    use serde::Deserialize;
    let mut v = Vec::new();
    for d in serde_yaml_ng::Deserializer::from_str(text) {
        let j = serde_json::Value::deserialize(d).context("parsing a machine config document")?;
        if !j.is_null() {
            v.push(j);
        }
    }
    Ok(v)
}

/// The machine config a node reports (`get machineconfig v1alpha1 -o json`: `spec` is the submitted
/// config as a string).
fn reported_config(stdout: &str) -> Result<String> {
    let first = serde_json::Deserializer::from_str(stdout)
        .into_iter::<serde_json::Value>()
        .next()
        .ok_or_else(|| anyhow!("talosctl get machineconfig printed nothing"))?
        .context("parsing talosctl get machineconfig -o json")?;
    match &first["spec"] {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Null => bail!("talosctl get machineconfig printed no `spec`"),
        other => Ok(serde_yaml_ng::to_string(other).unwrap_or_default()),
    }
}

fn emit(sink: &Sink, host: &str, step: &Step, status: StepStatus, detail: String) {
    sink(&Event::Step {
        host: host.to_string(),
        step: step.id.clone(),
        status,
        detail,
    });
}

/// Whether the node's authenticated API answers (it is configured with this cluster's PKI).
async fn secure_api(t: &Talosctl, node: &str, talosconfig: &str) -> Result<Out> {
    t.run(
        &strings(&[
            "--talosconfig",
            talosconfig,
            "version",
            "--nodes",
            node,
            "--endpoints",
            node,
        ]),
        Duration::ZERO,
    )
    .await
}

/// The node's machine config as Talos reports it (`get machineconfig v1alpha1 -o json`, authenticated).
async fn machine_config(t: &Talosctl, node: &str, talosconfig: &str) -> Result<Out> {
    t.run(
        &strings(&[
            "--talosconfig",
            talosconfig,
            "get",
            "machineconfig",
            "v1alpha1",
            "--nodes",
            node,
            "--endpoints",
            node,
            "-o",
            "json",
        ]),
        Duration::ZERO,
    )
    .await
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Apply one node's machine config. Returns (status, detail).
async fn apply(t: &Talosctl, a: &Action, dry_run: bool) -> Result<(StepStatus, String)> {
    let Action::TalosApplyConfig {
        node,
        config,
        talosconfig,
    } = a
    else {
        bail!("not a Talos apply step");
    };
    let file = t.root.join(config);
    let want = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "reading the rendered machine config {} (run `labforge render`)",
            file.display()
        )
    })?;
    let want_docs = documents(&want).with_context(|| format!("in {config}"))?;
    if !t.root.join(talosconfig).is_file() {
        bail!("the talosconfig {talosconfig} is missing (run `labforge render`)");
    }
    let got = machine_config(t, node, talosconfig).await?;
    if got.ok {
        let have = reported_config(&got.stdout)?;
        if documents(&have)? == want_docs {
            return Ok((
                StepStatus::Unchanged,
                format!("{node} already runs {config}"),
            ));
        }
        if dry_run {
            return Ok((
                StepStatus::WouldChange,
                format!("{node}'s machine config differs from {config}: would apply it with the talosconfig"),
            ));
        }
        let o = t
            .run(&a.talosctl_args(false).unwrap_or_default(), Duration::ZERO)
            .await?;
        if !o.ok {
            bail!("talosctl apply-config to {node} failed: {}", o.why());
        }
        return Ok((
            StepStatus::Changed,
            format!("applied {config} to {node} (authenticated)"),
        ));
    }
    // Not reachable with this cluster's talosconfig: a first install answers in maintenance mode.
    let m = t
        .run(
            &strings(&[
                "version",
                "--insecure",
                "--nodes",
                node,
                "--endpoints",
                node,
            ]),
            Duration::ZERO,
        )
        .await?;
    if !m.ok {
        bail!(
            "{node} answers neither with this cluster's talosconfig ({}) nor in maintenance mode ({}): is it up, on the cluster network, and not configured by another cluster's PKI?",
            got.why(),
            m.why()
        );
    }
    if dry_run {
        return Ok((
            StepStatus::WouldChange,
            format!("{node} is in maintenance mode: would apply {config} with --insecure (first install)"),
        ));
    }
    let o = t
        .run(&a.talosctl_args(true).unwrap_or_default(), Duration::ZERO)
        .await?;
    if !o.ok {
        bail!(
            "talosctl apply-config --insecure to {node} failed: {}",
            o.why()
        );
    }
    Ok((
        StepStatus::Changed,
        format!("applied {config} to {node} in maintenance mode (first install; the node installs and reboots)"),
    ))
}

/// Deploy the Talos nodes `nodes` (their apply steps), then, for each cluster in `clusters`, its cluster
/// steps once every node of that cluster applied. `wait`: how long the bootstrap node's authenticated API
/// may take to come up after a first install.
pub async fn deploy(
    t: &Talosctl,
    nodes: &[&HostPlan],
    clusters: &[&ClusterPlan],
    dry_run: bool,
    wait: Duration,
    sink: &Sink,
) -> Vec<HostSummary> {
    let mut out = Vec::new();
    let mut failed_nodes: Vec<String> = Vec::new();
    for hp in nodes {
        sink(&Event::HostStart {
            host: hp.name.clone(),
            steps: hp.deploy.len(),
        });
        let mut changed = 0;
        let mut status = StepStatus::Unchanged;
        let mut detail = String::new();
        for s in &hp.deploy {
            match apply(t, &s.action, dry_run).await {
                Ok((st, d)) => {
                    if matches!(st, StepStatus::Changed | StepStatus::WouldChange) {
                        changed += 1;
                        status = st.clone();
                    }
                    emit(sink, &hp.name, s, st, d.clone());
                    detail = d;
                }
                Err(e) => {
                    let d = format!("{e:#}");
                    emit(sink, &hp.name, s, StepStatus::Failed, d.clone());
                    status = StepStatus::Failed;
                    detail = d;
                    failed_nodes.push(hp.name.clone());
                    break;
                }
            }
        }
        sink(&Event::HostDone {
            host: hp.name.clone(),
            status: status.clone(),
            changed,
            detail: detail.clone(),
        });
        out.push(HostSummary {
            host: hp.name.clone(),
            status,
            changed,
            detail,
        });
    }
    for c in clusters {
        let s = cluster(t, c, &failed_nodes, dry_run, wait, sink).await;
        sink(&Event::HostDone {
            host: s.host.clone(),
            status: s.status.clone(),
            changed: s.changed,
            detail: s.detail.clone(),
        });
        out.push(s);
    }
    out
}

async fn cluster(
    t: &Talosctl,
    c: &ClusterPlan,
    failed_nodes: &[String],
    dry_run: bool,
    wait: Duration,
    sink: &Sink,
) -> HostSummary {
    let name = format!("cluster:{}", c.name);
    sink(&Event::HostStart {
        host: name.clone(),
        steps: c.steps.len(),
    });
    let summary = |status, changed, detail: String| HostSummary {
        host: name.clone(),
        status,
        changed,
        detail,
    };
    let blocked: Vec<&String> = c
        .control_planes
        .iter()
        .chain(&c.workers)
        .filter(|n| failed_nodes.contains(n))
        .collect();
    if !blocked.is_empty() {
        let d = format!(
            "not started: waits on {} (apply failed)",
            blocked
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for s in &c.steps {
            emit(sink, &name, s, StepStatus::Blocked, d.clone());
        }
        return summary(StepStatus::Blocked, 0, d);
    }
    if dry_run {
        for s in &c.steps {
            emit(
                sink,
                &name,
                s,
                StepStatus::Skipped,
                "--dry-run: cluster steps run only in a real deploy".into(),
            );
        }
        return summary(
            StepStatus::Unchanged,
            0,
            "--dry-run: bootstrap, kubeconfig and health not run".into(),
        );
    }
    let mut changed = 0;
    let mut last = String::new();
    for s in &c.steps {
        let r = cluster_step(t, s, wait).await;
        match r {
            Ok((st, d)) => {
                if st == StepStatus::Changed {
                    changed += 1;
                }
                emit(sink, &name, s, st, d.clone());
                last = d;
            }
            Err(e) => {
                let d = format!("{e:#}");
                emit(sink, &name, s, StepStatus::Failed, d.clone());
                return summary(StepStatus::Failed, changed, d);
            }
        }
    }
    summary(
        if changed > 0 {
            StepStatus::Changed
        } else {
            StepStatus::Unchanged
        },
        changed,
        last,
    )
}

async fn cluster_step(t: &Talosctl, s: &Step, wait: Duration) -> Result<(StepStatus, String)> {
    match &s.action {
        Action::TalosBootstrap { node, talosconfig } => {
            // After a first install the node reboots into its config: wait for its authenticated API.
            let start = Instant::now();
            let mut step = Duration::from_secs(1);
            loop {
                let o = secure_api(t, node, talosconfig).await?;
                if o.ok {
                    break;
                }
                if start.elapsed() >= wait {
                    bail!(
                        "{node}'s Talos API did not answer with the cluster's talosconfig within {wait:?}: {}",
                        o.why()
                    );
                }
                tokio::time::sleep(step.min(wait.saturating_sub(start.elapsed()))).await;
                step = (step * 2).min(Duration::from_secs(15));
            }
            // Exactly once per cluster: etcd with members is bootstrapped.
            let m = t
                .run(
                    &strings(&[
                        "--talosconfig",
                        talosconfig,
                        "etcd",
                        "members",
                        "--nodes",
                        node,
                        "--endpoints",
                        node,
                    ]),
                    Duration::ZERO,
                )
                .await?;
            let members = if m.ok { etcd_members(&m.stdout) } else { 0 };
            if members > 0 {
                return Ok((
                    StepStatus::Unchanged,
                    format!("etcd already has {members} member(s): not bootstrapping again"),
                ));
            }
            let o = t
                .run(
                    &s.action.talosctl_args(false).unwrap_or_default(),
                    Duration::ZERO,
                )
                .await?;
            if !o.ok {
                if o.stderr.contains("AlreadyExists") {
                    return Ok((
                        StepStatus::Unchanged,
                        format!("{node} reports etcd already bootstrapped"),
                    ));
                }
                bail!("talosctl bootstrap on {node} failed: {}", o.why());
            }
            Ok((StepStatus::Changed, format!("bootstrapped etcd on {node}")))
        }
        Action::TalosKubeconfig { out, .. } => {
            let o = t
                .run(
                    &s.action.talosctl_args(false).unwrap_or_default(),
                    Duration::ZERO,
                )
                .await?;
            if !o.ok {
                bail!("talosctl kubeconfig failed: {}", o.why());
            }
            Ok((StepStatus::Ok, format!("kubeconfig written to {out}")))
        }
        Action::TalosHealth { wait_timeout_s, .. } => {
            let o = t
                .run(
                    &s.action.talosctl_args(false).unwrap_or_default(),
                    Duration::from_secs(*wait_timeout_s),
                )
                .await?;
            if !o.ok {
                bail!("talosctl health failed: {}", o.why());
            }
            Ok((StepStatus::Ok, "talosctl health passes".into()))
        }
        _ => bail!("step {} is not a Talos cluster step", s.id),
    }
}

/// What a node reports about itself, read with the cluster's talosconfig (for `verify`).
pub struct Observed {
    /// The server's Talos tag (`talosctl version`), or why it could not be read.
    pub version: std::result::Result<String, String>,
    /// Whether the node's machine config equals the rendered one (as documents), or why it is unknown.
    pub config_matches: std::result::Result<bool, String>,
}

/// Read a node's Talos version and machine config and compare the config with the plan's `config` file.
pub async fn observe(t: &Talosctl, apply: &Action) -> Observed {
    let Action::TalosApplyConfig {
        node,
        config,
        talosconfig,
    } = apply
    else {
        let e = "not a Talos apply step".to_string();
        return Observed {
            version: Err(e.clone()),
            config_matches: Err(e),
        };
    };
    let version = match secure_api(t, node, talosconfig).await {
        Ok(o) if o.ok => server_tag(&o.stdout)
            .ok_or_else(|| format!("talosctl version printed no server Tag: {}", o.why())),
        Ok(o) => Err(format!(
            "{node} does not answer with the cluster's talosconfig: {}",
            o.why()
        )),
        Err(e) => Err(format!("{e:#}")),
    };
    let config_matches = async {
        let want = std::fs::read_to_string(t.root.join(config))
            .map_err(|e| format!("reading {config}: {e} (run `labforge render`)"))?;
        let o = machine_config(t, node, talosconfig)
            .await
            .map_err(|e| format!("{e:#}"))?;
        if !o.ok {
            return Err(format!("talosctl get machineconfig failed: {}", o.why()));
        }
        let have = reported_config(&o.stdout).map_err(|e| format!("{e:#}"))?;
        Ok(documents(&have).map_err(|e| format!("{e:#}"))?
            == documents(&want).map_err(|e| format!("{config}: {e:#}"))?)
    }
    .await;
    Observed {
        version,
        config_matches,
    }
}

/// The server's `Tag:` in `talosctl version` output (the line after `Server:`).
fn server_tag(stdout: &str) -> Option<String> {
    let mut in_server = false;
    for l in stdout.lines() {
        let t = l.trim();
        if t.starts_with("Server:") {
            in_server = true;
        } else if in_server {
            if let Some(v) = t.strip_prefix("Tag:") {
                return Some(v.trim().to_string());
            }
        }
    }
    None
}

/// Member rows of `talosctl etcd members` (a header line, then one row per member and node).
fn etcd_members(stdout: &str) -> usize {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.trim_start().starts_with("NODE"))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_config_is_the_spec_string_and_compared_as_documents() {
        let want = "version: v1alpha1 # the schema\nmachine:\n  type: worker\n---\napiVersion: v1alpha1\nkind: HostnameConfig\nhostname: w1\n";
        let out = serde_json::json!({
            "node": "10.0.0.1",
            "metadata": {"id": "v1alpha1"},
            "spec": "version: v1alpha1\nmachine:\n    type: worker\n---\napiVersion: v1alpha1\nkind: HostnameConfig\nhostname: w1\n"
        })
        .to_string();
        let have = reported_config(&out).unwrap();
        assert_eq!(documents(&have).unwrap(), documents(want).unwrap());
        let other = want.replace("w1", "w2");
        assert_ne!(documents(&have).unwrap(), documents(&other).unwrap());
    }

    #[test]
    fn the_server_tag_is_read_after_server() {
        let s = "Client:\n\tTag:         v1.13.0\nServer:\n\tNODE:        10.0.0.1\n\tTag:         v1.13.9\n";
        assert_eq!(server_tag(s).as_deref(), Some("v1.13.9"));
        assert_eq!(server_tag("Client:\n\tTag: v1\n"), None);
    }

    #[test]
    fn etcd_members_counts_rows_not_the_header() {
        let s = "NODE         ID               HOSTNAME    PEER URLS                 CLIENT URLS               LEARNER\n10.0.0.1     4b1c1c6a5e9f9c0e domum-cp1   https://10.0.0.1:2380     https://10.0.0.1:2379     false\n";
        assert_eq!(etcd_members(s), 1);
        assert_eq!(etcd_members(""), 0);
    }
}
