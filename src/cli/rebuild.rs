//! `labforge rebuild HOST`: refuse unless nothing would be lost; build or reuse the image; flash or boot it;
//! wait for SSH (pinned key); deploy; verify. Phases are timed (src/rebuild).

use super::commands::{load_valid, repo_root};
use super::{Cli, Command, Exit};
use crate::rebuild::{self, Report};
use anyhow::{Context, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn run(cli: &Cli) -> Result<Exit> {
    let Command::Rebuild {
        host,
        flash,
        boot,
        allow_file,
        yes,
        rebuild_image,
        builders,
        ssh_timeout,
        memory,
        keep_running,
        ssh,
        json,
    } = &cli.command
    else {
        unreachable!("only rebuild is routed here")
    };
    let spec = match load_valid(cli)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let root = repo_root(&cli.spec);
    let Some(h) = spec.hosts.get(host) else {
        eprintln!(
            "error: no host named `{host}` in the spec (hosts: {})",
            spec.hosts.keys().cloned().collect::<Vec<_>>().join(", ")
        );
        return Ok(Exit::Input);
    };
    if !h.os.has_ssh() {
        eprintln!("error: host `{host}` runs {}: labforge rebuilds hosts it reaches over SSH (Talos nodes are rebuilt with talosctl from their machine configs)", h.os.as_str());
        return Ok(Exit::Input);
    }
    let lose = rebuild::would_lose(&spec, h);
    if !lose.is_empty() {
        eprintln!("error: refusing to rebuild `{host}`: it would destroy data that must survive:");
        for l in &lose {
            eprintln!("  - {l}");
        }
        eprintln!("Move persistent paths to a remote mount (hosts.{host}.mounts) or a disposable disk, and mark the host disposable; nothing was built or written.");
        return Ok(Exit::Input);
    }
    if flash.is_none() && boot.is_none() {
        eprintln!("error: say where the image goes: --flash DEV (the host's OS disk) or --boot qemu (a VM rehearsal)");
        return Ok(Exit::Input);
    }
    if *keep_running && boot.is_none() {
        eprintln!("error: --keep-running applies to --boot qemu only");
        return Ok(Exit::Input);
    }

    let sel = vec![h];
    let plan = crate::plan::plan(&spec, &sel);
    let mut hp = plan
        .hosts
        .into_iter()
        .next()
        .context("the plan has no entry")?;
    let mut rep = Report {
        host: host.clone(),
        ..Default::default()
    };
    let say = |rep: &Report| {
        if let Some(p) = rep.phases.last() {
            eprintln!(
                "[{host}] {} {} in {:.1}s: {}",
                p.name,
                if p.ok { "ok" } else { "FAILED" },
                p.seconds,
                p.detail
            );
        }
    };
    let keep = |guest: &mut Option<rebuild::qemu::Guest>| {
        if *keep_running {
            if let Some(g) = guest.take() {
                let (pid, port, console) = g.detach();
                eprintln!(
                    "[{host}] VM left running: pid {pid}, SSH at {port}, console log {}",
                    console.display()
                );
            }
        }
    };
    let finish = |rep: &Report| -> Result<Exit> {
        if json.json {
            super::commands::print_json(rep)?;
        } else {
            print!("{}", rep.table());
        }
        Ok(if rep.ok() { Exit::Ok } else { Exit::Failed })
    };

    // 1. Image: reuse when its manifest and hash match the spec, else build.
    let t = Instant::now();
    let output = match &hp.image {
        crate::plan::ImagePlan::NixBuild { output, .. }
        | crate::plan::ImagePlan::BasePlusSeed { output, .. }
        | crate::plan::ImagePlan::Mmdebstrap { output, .. }
        | crate::plan::ImagePlan::TalosFactory { output, .. } => root.join(output),
    };
    let seed = match &hp.image {
        crate::plan::ImagePlan::NixBuild { .. } => Vec::new(),
        _ => crate::image::host_seed(&spec, &root, host)?,
    };
    // Nix caches its own builds (a rebuild of an unchanged flake is a lookup): NixOS images are always
    // built. Debian images are reused only if the root file system recipe is the same too.
    let key = match &hp.image {
        crate::plan::ImagePlan::Mmdebstrap { suite, .. } => {
            Some(crate::image::debian::Recipe::new(suite, h.arch, h.board, &h.packages)?.key())
        }
        _ => None,
    };
    let reuse = !rebuild_image
        && !matches!(hp.image, crate::plan::ImagePlan::NixBuild { .. })
        && rebuild::reusable(
            &output,
            &spec.revision,
            &seed,
            key.as_deref().map(|k| ("cache-key", k)),
        )?;
    let built = if reuse {
        Ok(format!(
            "reused {} (manifest matches spec revision and seed, sha256 checked)",
            output.display()
        ))
    } else {
        let o = crate::rebuild::image::Options {
            out: Some(output.clone()),
            seed_dir: None,
            builders: builders.clone(),
            flake: None,
            progress: !json.json,
        };
        match crate::rebuild::image::build_from_source(&spec, &root, host, &hp.image, &o) {
            Ok(Some(done)) => Ok(format!(
                "built {} by {}",
                done.built.image.display(),
                done.how
            )),
            Ok(None) => base_plus_seed(&spec, &root, host, &hp.image, &output, seed, !json.json),
            Err(e) => Err(e),
        }
    };
    match built {
        Ok(d) => rep.push("image", t, true, d),
        Err(e) => {
            rep.push("image", t, false, format!("{e:#}"));
            say(&rep);
            return finish(&rep);
        }
    }
    say(&rep);

    // 2. Write or boot.
    let mut opts =
        super::remote::ssh_options(&root, &spec, ssh, super::remote::first_admin(&spec))?;
    if ssh.user.is_none() {
        if let Some(a) = h.login_user() {
            opts.user = a.to_string();
        }
    }
    opts.trust_on_first_use = false;
    let t = Instant::now();
    let mut guest = None;
    if let Some(dev) = flash {
        let r = crate::flash::flash(crate::flash::Options {
            image: output.clone(),
            bmap: None,
            target: dev.clone(),
            yes: *yes,
            allow_file: *allow_file,
            progress: !json.json,
            after_write: None,
        });
        match r {
            Ok(r) => rep.push(
                "write",
                t,
                true,
                format!(
                    "{} written and verified on {}; boot the host from it",
                    crate::io::human(r.written),
                    r.target
                ),
            ),
            Err(e) => {
                let refused = matches!(e, crate::flash::Error::Refused(_));
                rep.push("write", t, false, e.to_string());
                say(&rep);
                if refused {
                    eprintln!("error: {e}");
                    return Ok(Exit::Input);
                }
                return finish(&rep);
            }
        }
    } else {
        match rebuild::qemu::boot(&spec, h, &output, *memory) {
            Ok(g) => {
                opts.connect_via.insert(g.ssh_guest, g.ssh);
                rep.push(
                    "boot",
                    t,
                    true,
                    format!(
                        "qemu pid {} ({}, user networking restricted), SSH {} → {}",
                        g.pid().unwrap_or(0),
                        match h.arch {
                            crate::spec::model::Arch::X86_64 => "TCG, q35, OVMF",
                            crate::spec::model::Arch::Aarch64 =>
                                "TCG, virt, Cortex-A72, the firmware partition's kernel",
                        },
                        g.ssh,
                        g.ssh_guest
                    ),
                );
                guest = Some(g);
            }
            Err(e) => {
                rep.push("boot", t, false, format!("{e:#}"));
                say(&rep);
                return finish(&rep);
            }
        }
    }
    say(&rep);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (addr, port) = rebuild::ssh_target(h)?;

    // 3. SSH with the pinned key, then cloud-init's first boot.
    let t = Instant::now();
    let waited = rt.block_on(async {
        let tr = rebuild::wait_ssh(
            h,
            &addr,
            port,
            &opts,
            Duration::from_secs(*ssh_timeout),
            || match guest.as_mut() {
                Some(g) => g.alive(),
                None => Ok(()),
            },
        )
        .await?;
        let first = rebuild::wait_first_boot(&tr).await;
        tr.close().await;
        first
    });
    match waited {
        Ok(s) => rep.push(
            "ssh",
            t,
            true,
            format!(
                "pinned host key, admin login; first boot: {}",
                s.lines().last().unwrap_or("")
            ),
        ),
        Err(e) => {
            rep.push("ssh", t, false, format!("{e:#}"));
            say(&rep);
            keep(&mut guest);
            return finish(&rep);
        }
    }
    say(&rep);

    // 4. Deploy (the plan's steps; operator gates block as in `labforge deploy`), 5. verify.
    hp.deploy
        .retain(|s| !matches!(s.action, crate::plan::Action::Verify));
    let spec = Arc::new(spec);
    let store = Arc::new(crate::secrets::Store::open(&root, &spec)?);
    let spec2 = spec.clone();
    let connector = Arc::new(crate::deploy::SshConnector {
        spec: spec.clone(),
        opts: opts.clone(),
        tofu: Vec::new(),
        probe_timeout: Duration::from_secs(2),
        per_host_user: false,
    });
    let ctx = Arc::new(crate::deploy::Ctx {
        spec: spec.clone(),
        root: root.clone(),
        connector,
        sink: crate::deploy::sink(false),
        confirm_timeout: Duration::from_secs(300),
        dry_run: false,
        secrets: Arc::new(move |name: &str| {
            let r = spec2
                .secrets
                .get(name)
                .ok_or_else(|| anyhow::anyhow!("secret `{name}` is not declared"))?;
            store.resolve(r)
        }),
    });
    let t = Instant::now();
    let summary = rt.block_on(crate::deploy::deploy(ctx, vec![hp], 1));
    let ok = summary.iter().all(|s| {
        matches!(
            s.status,
            crate::deploy::StepStatus::Changed | crate::deploy::StepStatus::Unchanged
        )
    });
    let detail = summary
        .iter()
        .map(|s| format!("{:?}, {} changed: {}", s.status, s.changed, s.detail))
        .collect::<Vec<_>>()
        .join("; ");
    rep.push("deploy", t, ok, detail);
    say(&rep);
    if !ok {
        keep(&mut guest);
        return finish(&rep);
    }
    let t = Instant::now();
    let vo = crate::verify::Options {
        ssh: opts.clone(),
        probe_timeout: Duration::from_secs(2),
    };
    let report = rt.block_on(crate::verify::verify_host(&spec, &spec.hosts[host], &vo));
    let code = crate::verify::exit_code(std::slice::from_ref(&report));
    if !json.json {
        eprint!("{}", crate::verify::human(std::slice::from_ref(&report)));
    }
    rep.push(
        "verify",
        t,
        code == 0,
        format!(
            "{} pass, {} skip, {} fail, {} error{}",
            report.count(crate::verify::Status::Pass),
            report.count(crate::verify::Status::Skip),
            report.count(crate::verify::Status::Fail),
            report.count(crate::verify::Status::Error),
            if report.failing().is_empty() {
                String::new()
            } else {
                let why: Vec<String> = report
                    .results
                    .iter()
                    .filter(|r| r.status == crate::verify::Status::Fail)
                    .map(|r| format!("{}: {}", r.id, first_line(&r.detail)))
                    .collect();
                format!(" (failing: {})", why.join("; "))
            }
        ),
    );
    say(&rep);
    keep(&mut guest);
    drop(guest);
    finish(&rep)
}

fn base_plus_seed(
    spec: &crate::spec::Spec,
    root: &std::path::Path,
    host: &str,
    plan: &crate::plan::ImagePlan,
    out: &std::path::Path,
    seed: Vec<(String, Vec<u8>)>,
    progress: bool,
) -> Result<String> {
    let crate::plan::ImagePlan::BasePlusSeed {
        base: Some(base), ..
    } = plan
    else {
        anyhow::bail!("host `{host}` has no base image: set `image = \"<name>\"` on it");
    };
    let decl = crate::image::decl::load(root, base)?;
    decl.pinned()?;
    let built = crate::image::build(&crate::image::BuildInput {
        host,
        spec_revision: &spec.revision,
        base: &decl,
        base_path: decl.local_path(root),
        seed,
        out: out.to_path_buf(),
        progress,
    })?;
    Ok(format!(
        "built {} from base `{base}` + seed",
        built.image.display()
    ))
}

/// The first line of a check's detail, at most 300 characters (the rebuild summary stays one line).
fn first_line(s: &str) -> String {
    let l = s.lines().next().unwrap_or("");
    if l.chars().count() > 300 {
        format!("{}…", l.chars().take(300).collect::<String>())
    } else {
        l.to_string()
    }
}
