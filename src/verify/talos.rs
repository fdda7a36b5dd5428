//! `labforge verify` for Talos nodes (no SSH): what the node reports through talosctl, with the cluster's
//! talosconfig, compared with the plan — the Talos version the cluster pins and the machine config labforge
//! rendered for the node.

use super::{CheckResult, HostReport, Status};
use crate::deploy::talos::{observe, Talosctl};
use crate::plan::Action;
use crate::spec::model::{Host, Spec};

const RULE: &str = "plan";

fn result(id: &str, title: String, status: Status, detail: String, fix: &str) -> CheckResult {
    CheckResult {
        id: id.into(),
        title,
        rule: RULE.into(),
        status,
        detail,
        remediation: fix.into(),
    }
}

/// Verify one Talos node; `talosctl` is `None` when it is not on PATH (every check is then an error).
pub async fn verify_node(spec: &Spec, h: &Host, talosctl: Option<&Talosctl>) -> HostReport {
    let plan = crate::plan::plan(spec, &[h]);
    let apply = plan
        .hosts
        .first()
        .and_then(|hp| {
            hp.deploy
                .iter()
                .find(|s| matches!(s.action, Action::TalosApplyConfig { .. }))
        })
        .map(|s| s.action.clone());
    let want_version = h
        .cluster
        .as_ref()
        .and_then(|c| spec.clusters.get(c))
        .map(|c| c.talos_version.clone())
        .unwrap_or_default();
    let vt = format!("the node runs Talos {want_version}, the cluster's pinned version");
    let ct = "the node's machine config is the one labforge rendered for it".to_string();
    let mut results = Vec::new();
    match (talosctl, apply) {
        (None, _) => {
            for (id, t) in [("talos.version", vt), ("talos.machineconfig", ct)] {
                results.push(result(
                    id,
                    t,
                    Status::Error,
                    "`talosctl` is not on PATH: Talos nodes are verified through it".into(),
                    "install talosctl (the cluster's Talos version) and re-run verify",
                ));
            }
        }
        (Some(_), None) => {
            for (id, t) in [("talos.version", vt), ("talos.machineconfig", ct)] {
                results.push(result(
                    id,
                    t,
                    Status::Error,
                    "the plan has no apply step for this node (no address on the cluster network)"
                        .into(),
                    "give the node a static address on the cluster network",
                ));
            }
        }
        (Some(t), Some(a)) => {
            let o = observe(t, &a).await;
            results.push(match o.version {
                Ok(v) if v == want_version => result(
                    "talos.version",
                    vt,
                    Status::Pass,
                    format!("server tag {v}"),
                    "",
                ),
                Ok(v) => result(
                    "talos.version",
                    vt,
                    Status::Fail,
                    format!("server tag {v}, the cluster pins {want_version}"),
                    "upgrade the node (talosctl upgrade with the plan's installer image) or change the cluster's talos_version",
                ),
                Err(e) => result("talos.version", vt, Status::Error, e, "check the node is up and configured by this cluster (labforge deploy NODE)"),
            });
            results.push(match o.config_matches {
                Ok(true) => result(
                    "talos.machineconfig",
                    ct,
                    Status::Pass,
                    "equal, document by document".into(),
                    "",
                ),
                Ok(false) => result(
                    "talos.machineconfig",
                    ct,
                    Status::Fail,
                    "the node runs another machine config (drift)".into(),
                    "run `labforge deploy NODE` to apply the rendered config",
                ),
                Err(e) => result(
                    "talos.machineconfig",
                    ct,
                    Status::Error,
                    e,
                    "check the node is up and configured by this cluster (labforge deploy NODE)",
                ),
            });
        }
    }
    HostReport {
        host: h.name.clone(),
        results,
    }
}
