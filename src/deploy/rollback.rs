//! Confirm-or-rollback for Ubuntu/Debian hosts: the sshd drop-in, the nftables ruleset and a stack's files.
//!
//! The NixOS path (`nixos.rs`) arms a rollback on the host before switching; this is the same contract for
//! the non-Nix changes:
//! 1. before the first file of a change window is replaced, the host copies the files it is about to lose
//!    into `/var/lib/labforge/rollback/<token>/` (0700, root) and labforge writes a restore script beside
//!    them, regenerated each time the window grows;
//! 2. the rollback is armed ON THE HOST: `systemd-run --unit=labforge-rollback-<token> --on-active=<confirm
//!    timeout>` runs the restore script unless it is disarmed first, so a lost controller, a killed
//!    connection or an sshd/firewall that shuts labforge out all end with the host restoring itself;
//! 3. once the change is applied, a FRESH connection (new TCP, key exchange and login with the pinned host
//!    key) must log in and pass the ssh (and, once the firewall is part of the run, firewall) checks of
//!    `verify`; only that connection disarms (`systemctl stop` of the timer, then the confirmation file);
//! 4. if confirmation fails and the deploying connection still works, labforge runs the restore script at
//!    once; otherwise it waits for the timer and watches for the host's "restored" record.
//!
//! The restore script puts every file back (or removes one that did not exist), then reloads sshd, loads the
//! old ruleset with `nft -f` (or deletes labforge's table when there was no ruleset), and runs `docker compose
//! up -d` in each restored stack. A confirmation file named after the per-window random token makes a stale
//! timer harmless, and a `restored` record makes the script run at most once.

use super::Ctx;
use crate::plan::HostPlan;
use crate::transport::{self, rpath, sq, Transport};
use anyhow::{anyhow, bail, Result};
use std::time::Duration;

/// Where the host keeps the previous files of an armed window.
pub const BACKUP_ROOT: &str = "/var/lib/labforge/rollback";
pub const RULESET: &str = "/etc/nftables.conf";

/// What a protected file belongs to (decides what the restore script reloads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Sshd,
    Firewall,
    /// A stack and its directory on the host (`docker compose up -d` there after restoring).
    Stack {
        name: String,
        dir: String,
    },
}

impl Part {
    fn label(&self) -> String {
        match self {
            Part::Sshd => "sshd drop-in".into(),
            Part::Firewall => "nftables ruleset".into(),
            Part::Stack { name, .. } => format!("stack {name}"),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    path: String,
    part: Part,
}

/// An armed rollback on one host.
#[derive(Debug)]
pub struct Window {
    pub token: String,
    entries: Vec<Entry>,
    armed_at: tokio::time::Instant,
    timeout: Duration,
}

fn token() -> String {
    let mut b = [0u8; 12];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    hex::encode(b)
}

impl Window {
    pub fn unit(&self) -> String {
        format!("labforge-rollback-{}", self.token)
    }
    fn dir(&self) -> String {
        format!("{BACKUP_ROOT}/{}", self.token)
    }
    fn script_path(&self) -> String {
        format!("{}/restore.sh", self.dir())
    }
    /// Whether the window protects anything of `part`'s kind.
    pub fn has(&self, f: impl Fn(&Part) -> bool) -> bool {
        self.entries.iter().any(|e| f(&e.part))
    }
    /// What the window would restore, for messages: "sshd drop-in (/etc/ssh/…), nftables ruleset (…)".
    pub fn describe(&self) -> String {
        let mut parts: Vec<(String, Vec<String>)> = Vec::new();
        for e in &self.entries {
            let l = e.part.label();
            match parts.iter_mut().find(|p| p.0 == l) {
                Some(p) => p.1.push(e.path.clone()),
                None => parts.push((l, vec![e.path.clone()])),
            }
        }
        parts
            .iter()
            .map(|(l, p)| format!("{l} ({})", p.join(", ")))
            .collect::<Vec<_>>()
            .join(", ")
    }
    /// Shell text that records on the host that sshd is about to read the new drop-in (the restore script then
    /// reloads sshd after putting the old one back).
    pub fn mark_sshd_reload(&self) -> String {
        format!("touch {}", rpath(&format!("{}/sshd-reloaded", self.dir())))
    }
    /// How long until the host's timer fires.
    fn remaining(&self) -> Duration {
        (self.armed_at + self.timeout).saturating_duration_since(tokio::time::Instant::now())
    }

    /// The restore script (runs as root on the host, from the timer or from labforge).
    pub fn script(&self) -> String {
        let d = self.dir();
        let mut s = format!(
            "#!/bin/sh\n# labforge rollback {tok}: restores the files below unless the deploy was confirmed.\nR=\"${{LABFORGE_ROOT:-}}\"\nD=\"$R\"{d}\nif [ -e \"$R/run/labforge/confirm-{tok}\" ]; then exit 0; fi\nif [ -e \"$D/restored\" ]; then echo already-restored; exit 0; fi\n",
            tok = self.token,
            d = sq(&d),
        );
        for (i, e) in self.entries.iter().enumerate() {
            let p = rpath(&e.path);
            let tmp = rpath(&format!("{}.labforge-restore", e.path));
            s.push_str(&format!(
                "if [ -e \"$D/{i}\" ]; then cp -p \"$D/{i}\" {tmp} && mv -f {tmp} {p}; else rm -f -- {p}; fi\n"
            ));
        }
        if self.has(|p| *p == Part::Sshd) {
            // Only an sshd that read the new drop-in needs a reload (one refused by `sshd -t` never did).
            s.push_str("if [ -e \"$D/sshd-reloaded\" ]; then systemctl reload ssh 2>/dev/null || systemctl reload sshd; fi\n");
        }
        if self.has(|p| *p == Part::Firewall) {
            let r = rpath(RULESET);
            s.push_str(&format!(
                "if [ -e {r} ]; then nft -f {r}; else nft delete table inet labforge 2>/dev/null; true; fi\n"
            ));
        }
        let mut dirs: Vec<&str> = Vec::new();
        for e in &self.entries {
            if let Part::Stack { dir, .. } = &e.part {
                if !dirs.contains(&dir.as_str()) {
                    dirs.push(dir);
                }
            }
        }
        for dir in dirs {
            s.push_str(&format!(
                "if [ -e {c} ]; then (cd {d} && docker compose --env-file .env up -d --remove-orphans); fi\n",
                c = rpath(&format!("{dir}/compose.yaml")),
                d = rpath(dir),
            ));
        }
        s.push_str(&format!(
            "echo {what} > \"$D/restored\"\n",
            what = sq(&format!("restored {}", self.describe()))
        ));
        s
    }
}

/// Protect `paths` (of `part`) before they change: open (and arm) the host's rollback window if none is open,
/// back up each path not yet protected, and rewrite the restore script. Nothing happens for no paths.
pub async fn protect(
    ctx: &Ctx,
    t: &dyn Transport,
    step: &str,
    win: &mut Option<Window>,
    paths: &[String],
    part: Part,
) -> Result<()> {
    if paths.is_empty() {
        return Ok(());
    }
    let opening = win.is_none();
    if opening {
        // The host must be able to roll itself back, or nothing is changed at all.
        let o = t
            .exec(step, &t.privileged("command -v systemd-run"), None)
            .await?;
        if !o.ok() {
            bail!("the host has no systemd-run: labforge cannot arm the on-host rollback, so it changes neither sshd, the firewall nor a stack (install systemd, or deploy by hand)");
        }
    }
    let w = win.get_or_insert_with(|| Window {
        token: token(),
        entries: Vec::new(),
        armed_at: tokio::time::Instant::now(),
        timeout: ctx.confirm_timeout.max(Duration::from_secs(1)),
    });
    let mut backup = format!("umask 077; mkdir -p {d}", d = rpath(&w.dir()));
    for p in paths {
        if w.entries.iter().any(|e| &e.path == p) {
            continue;
        }
        let i = w.entries.len();
        backup.push_str(&format!(
            " && if [ -e {src} ]; then cp -p {src} {dst}; fi",
            src = rpath(p),
            dst = rpath(&format!("{}/{i}", w.dir()))
        ));
        w.entries.push(Entry {
            path: p.clone(),
            part: part.clone(),
        });
    }
    t.run(step, &t.privileged(&backup)).await?;
    t.upload(step, &w.script_path(), w.script().as_bytes(), 0o700, None)
        .await?;
    if opening {
        let secs = w.timeout.as_secs().max(1);
        let arm = format!(
            "systemd-run --quiet --unit={u} --on-active={secs}s --timer-property=AccuracySec=1s /bin/sh {s}",
            u = w.unit(),
            s = rpath(&w.script_path()),
        );
        t.run(step, &t.privileged(&arm))
            .await
            .map_err(|e| anyhow!("arming the on-host rollback ({}): {e}", w.unit()))?;
        w.armed_at = tokio::time::Instant::now();
    }
    Ok(())
}

/// Ids of the verify checks a change window must pass: the ssh checks, and the firewall checks once the
/// plan's firewall step has run (`firewall_applied`).
fn gating_check(id: &str, firewall_applied: bool) -> bool {
    id.starts_with("sshd.")
        || id.starts_with("probe.ssh")
        || (firewall_applied && id.starts_with("fw."))
}

/// Confirm the window from a fresh connection (login with the pinned key, then the ssh/firewall checks), and
/// disarm it over that connection. On failure, roll back (see [`roll_back`]) and fail saying what.
pub async fn confirm(
    ctx: &Ctx,
    hp: &HostPlan,
    t: &dyn Transport,
    step: &str,
    win: &mut Option<Window>,
    firewall_applied: bool,
) -> Result<String> {
    let Some(w) = win.take() else {
        return Ok(String::new());
    };
    // Half of what is left before the host's timer fires: a failed confirmation is then undone by
    // labforge itself, the timer staying the backstop.
    let budget = super::RELOAD_LOGIN_BUDGET
        .min(w.remaining() / 2)
        .max(Duration::from_secs(1));
    // A login right after a reload can meet sshd re-executing itself: retry with backoff, bounded (the
    // whole loop, since one attempt can take a connect timeout).
    let attempts = std::sync::atomic::AtomicU32::new(0);
    let fresh = tokio::time::timeout(
        budget,
        transport::retry_with_backoff(
            budget,
            Duration::from_millis(250),
            Duration::from_secs(2),
            || async {
                attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let f = ctx.connector.connect(&hp.name).await?;
                f.run(step, "true").await?;
                Ok(f)
            },
        ),
    )
    .await
    .map(|r| r.0)
    .unwrap_or_else(|_| Err(anyhow!("no login within {budget:?}")));
    let attempts = attempts.load(std::sync::atomic::Ordering::Relaxed);
    let checked = match fresh {
        Err(e) => Err(anyhow!(
            "a fresh login failed {attempts} time(s) within {budget:?} ({e:#})"
        )),
        Ok(f) => {
            let r = ctx.connector.verify(&ctx.spec, &hp.name).await;
            let bad: Vec<String> = r
                .results
                .iter()
                .filter(|c| gating_check(&c.id, firewall_applied))
                .filter(|c| {
                    matches!(
                        c.status,
                        crate::verify::Status::Fail | crate::verify::Status::Error
                    )
                })
                .map(|c| format!("{} ({})", c.id, c.detail))
                .collect();
            if !bad.is_empty() {
                Err(anyhow!(
                    "a fresh login works but ssh/firewall checks fail: {}",
                    bad.join("; ")
                ))
            } else {
                disarm(f.as_ref(), step, &w).await.map(|_| f)
            }
        }
    };
    match checked {
        Ok(_) => Ok(if attempts > 1 {
            format!("confirmed on a fresh connection (attempt {attempts}), rollback disarmed")
        } else {
            "confirmed on a fresh connection, rollback disarmed".into()
        }),
        Err(e) => {
            let how = roll_back(ctx, hp, t, step, &w).await;
            bail!("{e:#}; rolled back {} ({how})", w.describe())
        }
    }
}

/// Cancel the host's timer and mark the window confirmed, then drop the backups.
async fn disarm(f: &dyn Transport, step: &str, w: &Window) -> Result<()> {
    let cmd = format!(
        "systemctl stop {u}.timer 2>/dev/null; mkdir -p {run} && touch {c} && rm -rf -- {d}",
        u = w.unit(),
        run = rpath("/run/labforge"),
        c = rpath(&format!("/run/labforge/confirm-{}", w.token)),
        d = rpath(&w.dir()),
    );
    f.run(step, &f.privileged(&cmd)).await?;
    Ok(())
}

/// Restore now over `t` if it still works (and cancel the timer), else wait for the host's timer and watch
/// for its `restored` record. Returns how the rollback happened (never fails: the timer is the backstop).
pub async fn roll_back(
    ctx: &Ctx,
    hp: &HostPlan,
    t: &dyn Transport,
    step: &str,
    w: &Window,
) -> String {
    let now = format!(
        "sh {s} && systemctl stop {u}.timer 2>/dev/null; cat \"${{LABFORGE_ROOT:-}}\"{r}",
        s = rpath(&w.script_path()),
        u = w.unit(),
        r = sq(&format!("{}/restored", w.dir())),
    );
    match tokio::time::timeout(
        Duration::from_secs(60),
        t.exec(step, &t.privileged(&now), None),
    )
    .await
    {
        Ok(Ok(o)) if o.ok() => {
            return if o.stdout_str().contains("already-restored") {
                format!("by the host's timer {}", w.unit())
            } else {
                "restored over the deploying connection".into()
            }
        }
        _ => {}
    }
    let until = tokio::time::Instant::now() + w.remaining() + Duration::from_secs(30);
    let probe = format!("cat {}", rpath(&format!("{}/restored", w.dir())));
    loop {
        if tokio::time::Instant::now() > until {
            return format!(
                "by the host's timer {}; its record was not yet seen: check the host",
                w.unit()
            );
        }
        if let Ok(f) = ctx.connector.connect(&hp.name).await {
            if let Ok(o) = f.exec(step, &f.privileged(&probe), None).await {
                if o.ok() {
                    return format!("by the host's timer {}", w.unit());
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
