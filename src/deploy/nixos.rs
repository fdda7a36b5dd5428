//! NixOS: copy the flake, `nixos-rebuild switch` on the host, confirm on a FRESH connection and verify;
//! otherwise roll back to the previous generation (deploy-rs's "magic rollback").
//!
//! Holes closed compared with a rollback driven over the deploying connection:
//! * the rollback is armed ON THE HOST before switching (a `systemd-run` timer, or a detached `setsid`
//!   sleeper where systemd-run is absent), so a dead connection, a crashed controller or an sshd that no
//!   longer accepts logins still rolls back;
//! * the rollback target is the recorded store path of the current system, not "generation N-1"
//!   (which may be the broken one if the switch half-succeeded);
//! * confirmation needs a new SSH connection (new TCP, new key exchange, new login) that runs the verify
//!   checks; the old session proves nothing;
//! * the confirmation file carries a random per-deploy token, so a stale file can never cancel a rollback.

use super::{Ctx, StepStatus};
use crate::plan::{HostPlan, Step};
use crate::transport::{rpath, sq, Transport};
use anyhow::{anyhow, bail, Result};
use std::time::Duration;

pub const FLAKE_DIR: &str = "/etc/labforge/flake";
const PROFILE: &str = "/nix/var/nix/profiles/system";

fn token() -> String {
    let mut b = [0u8; 12];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    hex::encode(b)
}

/// The on-host rollback script (runs unless the confirmation file exists).
pub fn rollback_script(prev: &str, tok: &str, delay: Option<u64>) -> String {
    format!(
        r#"{sleep}if [ -e "${{LABFORGE_ROOT:-}}/run/labforge/confirm-{tok}" ] || [ -e "${{LABFORGE_ROOT:-}}/run/labforge/rolled-back-{tok}" ]; then exit 0; fi
nix-env -p {profile} --set {prev}
{prev}/bin/switch-to-configuration switch
mkdir -p "${{LABFORGE_ROOT:-}}/run/labforge"
echo {prev} > "${{LABFORGE_ROOT:-}}/run/labforge/rolled-back-{tok}"
"#,
        sleep = delay.map(|d| format!("sleep {d}\n")).unwrap_or_default(),
        profile = rpath(PROFILE),
        prev = sq(prev),
    )
}

pub async fn switch(
    ctx: &Ctx,
    hp: &HostPlan,
    step: &Step,
    t: &dyn Transport,
    changed: &mut usize,
) -> Result<(StepStatus, String)> {
    let id = step.id.as_str();
    // 1. the flake and this host's rendered modules
    let mut items = Vec::new();
    for a in hp
        .artifacts
        .iter()
        // The modules and flake, plus the compose side of the standard service template (services/<stack>/),
        // which service.nix reads at evaluation time.
        .filter(|a| {
            (a.backend == "nixos" || (a.backend == "compose" && a.path.starts_with("services/")))
                && !a.sensitive
        })
    {
        items.push((
            format!("{FLAKE_DIR}/{}", a.path),
            super::read_planned(ctx, &a.path, a.sha256.as_deref())?,
        ));
    }
    if items.is_empty() {
        bail!(
            "no NixOS artifacts planned for host `{}` (run `labforge render`)",
            hp.name
        );
    }
    if ctx.dry_run {
        let differ = super::differing(t, id, &items).await?;
        return Ok((
            StepStatus::WouldChange,
            if differ.is_empty() {
                "the flake on the host is current; would still run nixos-rebuild switch (the build decides whether the system changes), confirm on a fresh connection or roll back".to_string()
            } else {
                format!(
                    "would upload {} file(s) of the flake ({}), run nixos-rebuild switch, confirm on a fresh connection or roll back",
                    differ.len(),
                    differ.join(", ")
                )
            },
        ));
    }
    let up = super::upload_if_changed(t, id, &items, 0o644, "root:root").await?;
    let current = t
        .run(
            id,
            &t.privileged(&format!("readlink -f {}", rpath(PROFILE))),
        )
        .await?
        .stdout_str()
        .trim()
        .to_string();
    if up.is_empty() {
        let marker = t
            .exec(
                id,
                &t.privileged(&format!(
                    "cat {} 2>/dev/null",
                    rpath("/etc/labforge/flake.deployed")
                )),
                None,
            )
            .await?;
        if marker.stdout_str().trim() == current && !current.is_empty() {
            return Ok((
                StepStatus::Unchanged,
                format!("flake unchanged, system {current}"),
            ));
        }
    }
    if current.is_empty() {
        bail!("cannot read the current system generation ({PROFILE})");
    }
    // 2. arm the rollback on the host itself
    let tok = token();
    let secs = ctx.confirm_timeout.as_secs().max(1);
    let script_path = format!("/run/labforge/rollback-{tok}.sh");
    let arm = format!(
        "{}\nif command -v systemd-run >/dev/null 2>&1 && [ -z \"${{LABFORGE_ROOT:-}}\" ]; then systemd-run --unit=labforge-rollback-{tok} --on-active={secs} sh {p}; else setsid nohup sh -c {inner} >/dev/null 2>&1 </dev/null & fi",
        format_args!("mkdir -p {}", rpath("/run/labforge")),
        p = rpath(&script_path),
        inner = sq(&format!("sleep {secs}; sh \"${{LABFORGE_ROOT:-}}\"{}", sq(&script_path))),
    );
    t.upload(
        id,
        &script_path,
        rollback_script(&current, &tok, None).as_bytes(),
        0o700,
        None,
    )
    .await?;
    t.run(id, &t.privileged(&arm)).await?;
    // 3. switch
    let rebuild = t.privileged(&format!(
        "nixos-rebuild switch --flake \"${{LABFORGE_ROOT:-}}\"{}",
        sq(&format!("{FLAKE_DIR}#{}", hp.name))
    ));
    let sw = t.exec(id, &rebuild, None).await;
    let sw_err = match &sw {
        Ok(o) if o.ok() => None,
        Ok(o) => Some(crate::transport::failure_text(o)),
        Err(e) => Some(e.to_string()),
    };
    // 4. confirm on a fresh connection, then verify
    let confirm = if sw_err.is_none() {
        confirm_fresh(ctx, &hp.name, &tok).await
    } else {
        Err(anyhow!(
            "nixos-rebuild switch failed: {}",
            sw_err.clone().unwrap_or_default()
        ))
    };
    match confirm {
        Ok(()) => {
            let now = t
                .run(
                    id,
                    &t.privileged(&format!("readlink -f {}", rpath(PROFILE))),
                )
                .await?
                .stdout_str();
            let _ = t
                .upload(
                    id,
                    "/etc/labforge/flake.deployed",
                    now.as_bytes(),
                    0o644,
                    None,
                )
                .await;
            *changed += 1;
            Ok((
                StepStatus::Changed,
                format!(
                    "switched to {} and confirmed on a fresh connection",
                    now.trim()
                ),
            ))
        }
        Err(e) => {
            // 5. roll back now if the host still lets us in; the armed timer covers the rest
            let mut how = String::new();
            let now = t
                .exec(
                    id,
                    &t.privileged(&rollback_script(&current, &tok, None)),
                    None,
                )
                .await;
            match now {
                Ok(o) if o.ok() => how.push_str("rolled back over the existing connection"),
                _ => {
                    let until =
                        tokio::time::Instant::now() + ctx.confirm_timeout + Duration::from_secs(30);
                    how.push_str("the host's armed rollback timer");
                    loop {
                        if tokio::time::Instant::now() > until {
                            how.push_str(" (not yet observed)");
                            break;
                        }
                        if let Ok(f) = ctx.connector.connect(&hp.name).await {
                            if let Ok(o) = f
                                .run(
                                    id,
                                    &f.privileged(&format!("readlink -f {}", rpath(PROFILE))),
                                )
                                .await
                            {
                                if o.stdout_str().trim() == current {
                                    how.push_str(" restored the previous generation");
                                    break;
                                }
                            }
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            bail!("{e:#}; rolled back to {current} ({how})")
        }
    }
}

/// A new connection must log in, pass verify, and then writes the confirmation (cancels the rollback).
async fn confirm_fresh(ctx: &Ctx, host: &str, tok: &str) -> Result<()> {
    let deadline = ctx.confirm_timeout;
    let fut = async {
        let f = ctx
            .connector
            .connect(host)
            .await
            .map_err(|e| anyhow!("fresh connection after switch: {e:#}"))?;
        f.run("nixos-confirm", "true").await?;
        let r = ctx.connector.verify(&ctx.spec, host).await;
        let bad: Vec<&str> = r
            .results
            .iter()
            .filter(|c| {
                matches!(
                    c.status,
                    crate::verify::Status::Fail | crate::verify::Status::Error
                )
            })
            .map(|c| c.id.as_str())
            .collect();
        if !bad.is_empty() {
            bail!("verify after switch failed: {bad:?}");
        }
        f.run(
            "nixos-confirm",
            &f.privileged(&format!(
                "mkdir -p {} && touch {}",
                rpath("/run/labforge"),
                rpath(&format!("/run/labforge/confirm-{tok}"))
            )),
        )
        .await?;
        Ok(())
    };
    match tokio::time::timeout(deadline, fut).await {
        Ok(r) => r,
        Err(_) => bail!("no confirmation within {deadline:?}"),
    }
}
