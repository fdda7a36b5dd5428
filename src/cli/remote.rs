//! `deploy` and `verify`: the two subcommands that talk to hosts (src/deploy, src/verify, src/transport).

use super::commands::{load_valid, repo_root};
use super::{Cli, Command, Exit, SshArgs};
use crate::spec::model::Spec;
use anyhow::{Context, Result};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub(super) fn ssh_options(
    root: &Path,
    spec: &Spec,
    a: &SshArgs,
    host_user: Option<String>,
) -> Result<crate::transport::ssh::SshOptions> {
    let kh = match &a.known_hosts {
        Some(p) => p.clone(),
        None => {
            let p = crate::transport::known_hosts::default_path(root);
            write_known_hosts(root, spec, &p)?;
            p
        }
    };
    Ok(crate::transport::ssh::SshOptions {
        user: a
            .user
            .clone()
            .or(host_user)
            .unwrap_or_else(|| "root".into()),
        identity: a.identity.clone(),
        known_hosts: kh,
        trust_on_first_use: false,
        connect_timeout: Duration::from_secs(a.connect_timeout.max(1)),
        command_timeout: Duration::from_secs(900),
        connect_via: a.connect_via.iter().cloned().collect(),
    })
}

/// `.labforge/known_hosts` from the store's public host keys (clear `.pub` files; no identity needed).
fn write_known_hosts(root: &Path, spec: &Spec, path: &Path) -> Result<()> {
    let store = crate::secrets::Store::open(root, spec)?;
    let mut rows = Vec::new();
    for h in spec.hosts.values().filter(|h| h.os.has_ssh()) {
        let (Some(a), Some(k)) = (h.management_address(), store.ssh_host_public_key(&h.name))
        else {
            continue;
        };
        rows.push((h.name.clone(), a.to_string(), h.facts.ssh_port, k));
    }
    crate::transport::known_hosts::write(path, &rows)
}

pub(super) fn first_admin(spec: &Spec) -> Option<String> {
    spec.site.admins.first().map(|a| a.name.clone())
}

pub fn run(cli: &Cli) -> Result<Exit> {
    let spec = match load_valid(cli)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let root = repo_root(&cli.spec);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match &cli.command {
        Command::Deploy {
            hosts,
            all,
            on,
            parallel,
            dry_run,
            offline,
            confirm_timeout,
            talos_wait,
            ssh,
            json,
        } => {
            let names = match crate::deploy::select_hosts(&spec, hosts, *all, on.as_deref()) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(Exit::Input);
                }
            };
            let sel: Vec<&crate::spec::model::Host> =
                names.iter().map(|n| &spec.hosts[n]).collect();
            let plan = crate::plan::plan(&spec, &sel);
            let cluster_names = crate::deploy::selected_clusters(&spec, hosts);
            if *dry_run && *offline {
                for c in plan
                    .clusters
                    .iter()
                    .filter(|c| cluster_names.contains(&c.name))
                {
                    for s in &c.steps {
                        if *json {
                            println!(
                                "{}",
                                serde_json::json!({"event": "planned", "host": format!("cluster:{}", c.name), "step": s.id, "action": s.action, "description": s.description})
                            );
                        } else {
                            println!(
                                "{:<12} {:<40} {}",
                                format!("cluster:{}", c.name),
                                s.id,
                                s.description
                            );
                        }
                    }
                }
                for hp in &plan.hosts {
                    for s in &hp.deploy {
                        let gate = match &s.requires_gate {
                            Some(g) => spec
                                .gates
                                .get(g)
                                .and_then(|gd| crate::gate::status(&spec, &root, gd).ok())
                                .map(|(st, _)| format!(" [gate {g}: {st:?}]"))
                                .unwrap_or_default(),
                            None => String::new(),
                        };
                        if *json {
                            println!(
                                "{}",
                                serde_json::json!({"event": "planned", "host": hp.name, "step": s.id, "action": s.action, "description": s.description})
                            );
                        } else {
                            println!("{:<12} {:<40} {}{gate}", hp.name, s.id, s.description);
                        }
                    }
                }
                return Ok(Exit::Ok);
            }
            // Talos nodes and clusters go through talosctl on the controller; without it nothing runs.
            let talos_nodes: Vec<&crate::plan::HostPlan> = plan
                .hosts
                .iter()
                .filter(|h| h.os == crate::spec::model::Os::Talos && !h.deploy.is_empty())
                .collect();
            let talos_clusters: Vec<&crate::plan::ClusterPlan> = plan
                .clusters
                .iter()
                .filter(|c| cluster_names.contains(&c.name))
                .collect();
            let talosctl = if talos_nodes.is_empty() && talos_clusters.is_empty() {
                None
            } else {
                match crate::deploy::talos::find_talosctl() {
                    Some(bin) => Some(crate::deploy::talos::Talosctl {
                        bin,
                        root: root.clone(),
                        call_timeout: Duration::from_secs(120),
                    }),
                    None => {
                        eprintln!("error: `talosctl` is not on PATH: labforge deploys Talos nodes with it. Install talosctl (the cluster's Talos version), or run these commands from {}:", root.display());
                        for c in
                            crate::deploy::talos::manual_commands(&talos_nodes, &talos_clusters)
                        {
                            eprintln!("  {c}");
                        }
                        return Ok(Exit::Input);
                    }
                }
            };
            let opts = ssh_options(&root, &spec, ssh, first_admin(&spec))?;
            let spec = Arc::new(spec);
            let store = Arc::new(crate::secrets::Store::open(&root, &spec)?);
            let spec2 = spec.clone();
            let connector = Arc::new(crate::deploy::SshConnector {
                spec: spec.clone(),
                opts,
                tofu: ssh.trust_on_first_use.clone(),
                probe_timeout: Duration::from_secs(2),
                per_host_user: ssh.user.is_none(),
            });
            let ctx = Arc::new(crate::deploy::Ctx {
                spec: spec.clone(),
                root: root.clone(),
                connector,
                sink: crate::deploy::sink(*json),
                confirm_timeout: Duration::from_secs(*confirm_timeout),
                dry_run: *dry_run,
                secrets: Arc::new(move |name: &str| {
                    let r = spec2
                        .secrets
                        .get(name)
                        .ok_or_else(|| anyhow::anyhow!("secret `{name}` is not declared"))?;
                    store.resolve(r)
                }),
            });
            let plans: Vec<_> = plan
                .hosts
                .iter()
                .filter(|h| !h.deploy.is_empty() && h.os != crate::spec::model::Os::Talos)
                .cloned()
                .collect();
            let mut summary = rt.block_on(crate::deploy::deploy_in_waves(
                ctx.clone(),
                plans,
                *parallel as usize,
                &plan.dependencies.edges,
            ));
            if let Some(t) = &talosctl {
                summary.extend(rt.block_on(crate::deploy::talos::deploy(
                    t,
                    &talos_nodes,
                    &talos_clusters,
                    *dry_run,
                    Duration::from_secs(*talos_wait),
                    &ctx.sink,
                )));
            }
            let ok = summary.iter().all(|h| {
                if *dry_run {
                    h.status == crate::deploy::StepStatus::Unchanged
                } else {
                    matches!(
                        h.status,
                        crate::deploy::StepStatus::Changed | crate::deploy::StepStatus::Unchanged
                    )
                }
            });
            if *json {
                (ctx.sink)(&crate::deploy::Event::Summary {
                    hosts: summary.clone(),
                    ok,
                });
            } else {
                print!("{}", crate::deploy::summary_table(&summary));
                if summary
                    .iter()
                    .all(|h| h.status == crate::deploy::StepStatus::Unchanged)
                {
                    println!("no changes: every host already matches the spec");
                }
            }
            Ok(if ok { Exit::Ok } else { Exit::Failed })
        }
        Command::Verify {
            hosts,
            all,
            on,
            parallel,
            junit,
            probe_timeout_ms,
            ssh,
            json,
        } => {
            let names = match crate::deploy::select_hosts(&spec, hosts, *all, on.as_deref()) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(Exit::Input);
                }
            };
            let talos_names: Vec<String> = names
                .iter()
                .filter(|n| spec.hosts[*n].os == crate::spec::model::Os::Talos)
                .cloned()
                .collect();
            let names: Vec<String> = names
                .into_iter()
                .filter(|n| spec.hosts[n].os.has_ssh())
                .collect();
            let base = ssh_options(&root, &spec, ssh, None)?;
            let spec = Arc::new(spec);
            let pt = Duration::from_millis((*probe_timeout_ms).max(50));
            let tofu = ssh.trust_on_first_use.clone();
            let per_host_user = ssh.user.is_none();
            // A host whose task panics still gets a report (an `error`): it can never vanish from the run.
            let reports = rt.block_on(crate::verify::run_hosts(
                &names,
                *parallel as usize,
                |n: String| {
                    let spec = spec.clone();
                    let mut o = base.clone();
                    if per_host_user {
                        o.user = spec.hosts[&n]
                            .login_user()
                            .map(str::to_string)
                            .unwrap_or_else(|| "root".into());
                    }
                    o.trust_on_first_use = tofu.contains(&n);
                    async move {
                        let opts = crate::verify::Options {
                            ssh: o,
                            probe_timeout: pt,
                        };
                        crate::verify::verify_host(&spec, &spec.hosts[&n], &opts).await
                    }
                },
            ));
            let mut reports = reports;
            if !talos_names.is_empty() {
                let t = crate::deploy::talos::find_talosctl().map(|bin| {
                    crate::deploy::talos::Talosctl {
                        bin,
                        root: root.clone(),
                        call_timeout: Duration::from_secs(60),
                    }
                });
                for n in &talos_names {
                    reports.push(rt.block_on(crate::verify::talos::verify_node(
                        &spec,
                        &spec.hosts[n],
                        t.as_ref(),
                    )));
                }
            }
            if let Some(p) = junit {
                crate::render::write_atomic(p, crate::verify::junit(&reports).as_bytes(), 0o644)?;
            }
            if json.json {
                let mut out = std::io::stdout().lock();
                serde_json::to_writer_pretty(
                    &mut out,
                    &serde_json::json!({"hosts": reports, "exit": crate::verify::exit_code(&reports)}),
                )?;
                use std::io::Write;
                writeln!(out)?;
            } else {
                print!("{}", crate::verify::human(&reports));
            }
            Ok(match crate::verify::exit_code(&reports) {
                0 => Exit::Ok,
                1 => Exit::Failed,
                _ => Exit::Input,
            })
        }
        _ => unreachable!("only deploy and verify are routed here"),
    }
}
