//! `labforge rebuild HOST`: a disposable node from nothing to a verified, hardened host.
//!
//! 1. refuse unless the host is disposable and nothing persistent lives on its OS disk;
//! 2. build the image (or reuse it: manifest + hash), write it to a disk or boot it in QEMU; wait for SSH
//!    with the pinned host key (strict, never trust-on-first-use) and for cloud-init's first boot;
//! 3. deploy (the plan's steps, operator gates included), then verify; time per phase.
//!
//! The QEMU boot (`--boot qemu`, for tests and rehearsals) is TCG with OVMF, one user-mode network per
//! spec interface, each `restrict=on` (the guest reaches nothing outside), on the spec network's own
//! subnet so the seed's static addresses work; the management address's SSH is forwarded to a loopback
//! port and labforge connects there through a connect-address override (host keys still checked against
//! the host's own address).

pub mod image;
pub mod qemu;

use crate::spec::model::{Host, Spec};
use crate::transport::ssh::{SshOptions, SshTransport};
use crate::transport::Transport;
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why rebuilding `h` would lose data; empty when it is safe.
pub fn would_lose(spec: &Spec, h: &Host) -> Vec<String> {
    let _ = spec;
    let mut out = Vec::new();
    if !h.disposable {
        out.push(format!(
            "host `{}` is not disposable (set `disposable = true` on it or its role once nothing on its OS disk needs to survive)",
            h.name
        ));
    }
    let under = |path: &str, dir: &str| {
        let d = dir.trim_end_matches('/');
        path == d || path.starts_with(&format!("{d}/")) || d.is_empty()
    };
    for p in &h.persistent_paths {
        let remote = h.mounts.iter().find(|m| under(p, &m.at));
        let disk = h.disks.iter().find(|d| {
            d.mountpoint
                .as_deref()
                .map(|mp| under(p, mp))
                .unwrap_or(false)
        });
        match (remote, disk) {
            (Some(_), _) => {}
            (None, Some(d)) if d.disposable => {}
            (None, Some(d)) => out.push(format!(
                "persistent path {p} is on disk `{}` ({}), which is neither a remote mount nor marked disposable: labforge cannot show that its contents survive a rebuild",
                d.name, d.device
            )),
            (None, None) => out.push(format!(
                "persistent path {p} lives on the OS disk (no remote mount or disposable disk covers it): it would be LOST by a rebuild"
            )),
        }
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    pub ok: bool,
    pub seconds: f64,
    pub detail: String,
}

/// Times and results of one rebuild, in order.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub host: String,
    pub phases: Vec<Phase>,
}

impl Report {
    pub fn push(&mut self, name: &str, start: Instant, ok: bool, detail: impl Into<String>) {
        self.phases.push(Phase {
            name: name.into(),
            ok,
            seconds: start.elapsed().as_secs_f64(),
            detail: detail.into(),
        });
    }
    pub fn ok(&self) -> bool {
        self.phases.iter().all(|p| p.ok)
    }
    pub fn table(&self) -> String {
        let mut s = format!("{:<12} {:<6} {:>9}  DETAIL\n", "PHASE", "RESULT", "SECONDS");
        for p in &self.phases {
            s.push_str(&format!(
                "{:<12} {:<6} {:>9.1}  {}\n",
                p.name,
                if p.ok { "ok" } else { "FAILED" },
                p.seconds,
                p.detail.lines().next().unwrap_or("")
            ));
        }
        s
    }
}

/// Wait until `h` answers SSH with its pinned host key and lets the admin log in; returns the transport.
/// A host key mismatch or an unknown key fails at once (never retried, never trusted on first use).
pub async fn wait_ssh(
    h: &Host,
    addr: &str,
    port: u16,
    opts: &SshOptions,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<SshTransport> {
    let mut o = opts.clone();
    o.trust_on_first_use = false;
    o.connect_timeout = Duration::from_secs(20);
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        alive()?;
        match SshTransport::connect(&h.name, addr, port, &o).await {
            Ok(t) => return Ok(t),
            Err(e) => {
                let m = format!("{e:#}");
                if m.contains("HOST KEY MISMATCH") || m.contains("is not in") {
                    return Err(e);
                }
                last = m;
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "host `{}` did not answer SSH at {addr}:{port} within {timeout:?}; last error: {last}",
                h.name
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Wait for cloud-init's first boot to finish (`cloud-init status --wait`); its final status is returned
/// (a degraded first boot, e.g. an offline `package_update`, is reported, not fatal: verify judges the host).
pub async fn wait_first_boot(t: &SshTransport) -> Result<String> {
    let o = t
        .run(
            "first-boot",
            "if command -v cloud-init >/dev/null 2>&1; then s=$(cloud-init status --wait 2>&1); rc=$?; printf '%s\\n' \"$s\" | tail -n 4; echo \"cloud-init exit $rc\"; else echo 'no cloud-init'; fi",
        )
        .await
        .map_err(|e| anyhow!("{e}"))?;
    Ok(o.stdout_str().trim().to_string())
}

/// Image reuse: the manifest beside `image` records the same spec revision, seed (file hashes) and build
/// input (`key`: e.g. the root file system recipe's cache key), and the image file still hashes to the
/// manifest's sha256.
pub fn reusable(
    image: &Path,
    spec_revision: &str,
    seed: &[(String, Vec<u8>)],
    build_key: Option<(&str, &str)>,
) -> Result<bool> {
    let mp = crate::image::manifest_path(image);
    let Ok(text) = std::fs::read(&mp) else {
        return Ok(false);
    };
    let m: crate::image::Manifest = match serde_json::from_slice(&text) {
        Ok(m) => m,
        Err(_) => return Ok(false),
    };
    if m.spec_revision != spec_revision {
        return Ok(false);
    }
    let want = crate::image::seed_files(seed);
    if m.seed.as_ref().map(|s| &s.files) != Some(&want) && !(seed.is_empty() && m.seed.is_none()) {
        return Ok(false);
    }
    if let Some((k, v)) = build_key {
        if m.build
            .as_ref()
            .and_then(|b| b.inputs.get(k))
            .map(String::as_str)
            != Some(v)
        {
            return Ok(false);
        }
    }
    let Ok(f) = std::fs::File::open(image) else {
        return Ok(false);
    };
    if f.metadata()?.len() != m.image.size {
        return Ok(false);
    }
    Ok(crate::image::hash_file(&f, false, "hash")? == m.image.sha256)
}

/// Paths: the repository's image output for the plan entry.
pub fn image_output(root: &Path, output: &str) -> PathBuf {
    root.join(output)
}

/// The management address and SSH port labforge uses for `h`.
pub fn ssh_target(h: &Host) -> Result<(String, u16)> {
    let a = h
        .management_address()
        .with_context(|| format!("host `{}` has no management address", h.name))?;
    Ok((a.to_string(), h.facts.ssh_port))
}
