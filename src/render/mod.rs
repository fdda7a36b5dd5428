//! Rendering: each backend declares the artifacts it will write (used by `plan`) and renders exactly those.
//!
//! Paths are relative to the repository root. Files that carry secrets are `sensitive`, live under `out/`
//! (gitignored) with mode 0600, and are never compared by `render --check`. Every file is written to a
//! temporary file in the same directory and renamed into place: nothing is ever half-written.

pub mod cloud_init;
pub mod compose;
pub mod firewall;
pub mod nixos;
pub mod talos;

use crate::secrets::Store;
use crate::spec::Spec;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What an artifact is (also used by the planner to build deploy steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    NixosModule,
    Flake,
    ServiceNix,
    ComposeFile,
    EnvExample,
    ConfigFile,
    CloudInitUserData,
    CloudInitMetaData,
    CloudInitNetworkConfig,
    SshdDropin,
    Nftables,
    TalosMachineConfig,
    Talosconfig,
    TalosSchematic,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Artifact {
    /// Relative to the repository root; sensitive artifacts are under `out/`.
    pub path: String,
    pub kind: Kind,
    pub backend: &'static str,
    /// Hosts this artifact is for (deploy steps pick their files by host). Not serialized: in the plan an
    /// artifact is listed under each of its hosts, so repeating the list would make `plan --json` quadratic.
    #[serde(skip)]
    pub hosts: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Carries secret material: written 0600 under out/, never committed, never diffed.
    pub sensitive: bool,
    /// The sha256 of the bytes a fresh render of the spec gives (set by the planner; deploy refuses a file on
    /// disk that differs). Never set for a sensitive artifact: the plan carries nothing derived from secrets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl Artifact {
    pub fn new(
        path: impl Into<String>,
        kind: Kind,
        backend: &'static str,
        hosts: Vec<String>,
    ) -> Self {
        Artifact {
            path: path.into(),
            kind,
            backend,
            hosts,
            stack: None,
            cluster: None,
            sensitive: false,
            sha256: None,
        }
    }
    pub fn stack(mut self, s: &str) -> Self {
        self.stack = Some(s.to_string());
        self
    }
    pub fn cluster(mut self, c: &str) -> Self {
        self.cluster = Some(c.to_string());
        self
    }
    pub fn sensitive(mut self) -> Self {
        self.sensitive = true;
        self
    }
    pub fn mode(&self) -> u32 {
        if self.sensitive {
            0o600
        } else {
            0o644
        }
    }
}

/// What a backend gets to render with.
pub struct RenderCtx<'a> {
    pub spec: &'a Spec,
    /// The secrets store; `None` when rendering without secrets (e.g. `render --check` in CI): backends
    /// then skip sensitive artifacts, which `--check` never compares anyway.
    pub store: Option<&'a Store>,
}

pub trait Backend: Sync {
    fn name(&self) -> &'static str;
    /// Pure: the artifacts this backend renders for the spec.
    fn plan(&self, spec: &Spec) -> Vec<Artifact>;
    /// Render the given artifacts (a subset of `plan`): `(path, bytes)` for each, nothing else.
    fn render(&self, ctx: &RenderCtx, artifacts: &[&Artifact]) -> Result<Vec<(String, Vec<u8>)>>;
    /// Directories (relative to the root) this backend owns entirely: `--check` reports files there that
    /// the plan no longer produces.
    fn owned_dirs(&self) -> Vec<&'static str> {
        Vec::new()
    }
}

/// Every backend, in a fixed order.
pub fn backends() -> Vec<&'static dyn Backend> {
    vec![
        &nixos::Nixos,
        &cloud_init::CloudInit,
        &compose::Compose,
        &talos::Talos,
    ]
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub written: Vec<String>,
    pub unchanged: Vec<String>,
    /// `--check`: files whose contents differ from a fresh render.
    pub changed: Vec<String>,
    /// `--check`: planned files that are missing.
    pub missing: Vec<String>,
    /// `--check`: files in backend-owned directories the plan no longer produces.
    pub stale: Vec<String>,
    pub sensitive_skipped: Vec<String>,
}

impl Report {
    pub fn drift(&self) -> bool {
        !(self.changed.is_empty() && self.missing.is_empty() && self.stale.is_empty())
    }
}

/// The bytes of the non-sensitive `artifacts` as a fresh render of the spec gives them (no secrets store, nothing
/// written): what the planner hashes into the plan.
pub fn public_bytes(spec: &Spec, artifacts: &[&Artifact]) -> Result<BTreeMap<String, Vec<u8>>> {
    let ctx = RenderCtx { spec, store: None };
    let mut out = BTreeMap::new();
    for b in backends() {
        let mine: Vec<&Artifact> = artifacts
            .iter()
            .copied()
            .filter(|a| a.backend == b.name() && !a.sensitive)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let produced = b
            .render(&ctx, &mine)
            .with_context(|| format!("rendering with the {} backend", b.name()))?;
        out.extend(produced);
    }
    Ok(out)
}

/// Render `artifacts` under `root`, or compare them when `check` is set.
pub fn run(
    spec: &Spec,
    store: Option<&Store>,
    artifacts: &[Artifact],
    root: &Path,
    check: bool,
) -> Result<Report> {
    let mut by_path: BTreeMap<&str, &Artifact> = BTreeMap::new();
    for a in artifacts {
        by_path.entry(a.path.as_str()).or_insert(a);
    }
    let ctx = RenderCtx {
        spec,
        store: if check { None } else { store },
    };
    // Every SSH host gets its host key in the store on first render (seeds and images carry the private half;
    // deploy pins the public half in known_hosts), whatever backend renders the host.
    if let Some(store) = ctx.store {
        let mut hosts: BTreeSet<&str> = BTreeSet::new();
        for a in by_path.values() {
            hosts.extend(a.hosts.iter().map(|h| h.as_str()));
        }
        for h in hosts {
            if spec.hosts.get(h).is_some_and(|h| h.os.has_ssh()) {
                store
                    .ssh_host_key(h)
                    .with_context(|| format!("preparing the SSH host key of {h}"))?;
            }
        }
    }
    let mut report = Report::default();
    let mut outputs: Vec<(String, Vec<u8>, &Artifact)> = Vec::new();
    for b in backends() {
        let mine: Vec<&Artifact> = by_path
            .values()
            .copied()
            .filter(|a| a.backend == b.name())
            .filter(|a| !(a.sensitive && ctx.store.is_none()))
            .collect();
        for a in by_path
            .values()
            .filter(|a| a.backend == b.name() && a.sensitive && ctx.store.is_none())
        {
            report.sensitive_skipped.push(a.path.clone());
        }
        if mine.is_empty() {
            continue;
        }
        let produced = b
            .render(&ctx, &mine)
            .with_context(|| format!("rendering with the {} backend", b.name()))?;
        let want: BTreeSet<&str> = mine.iter().map(|a| a.path.as_str()).collect();
        let got: BTreeSet<&str> = produced.iter().map(|(p, _)| p.as_str()).collect();
        if want != got {
            bail!(
                "internal error: the {} backend rendered {:?} but the plan says {:?}",
                b.name(),
                got.difference(&want).collect::<Vec<_>>(),
                want.difference(&got).collect::<Vec<_>>()
            );
        }
        for (p, bytes) in produced {
            let a = by_path[p.as_str()];
            outputs.push((p, bytes, a));
        }
    }
    for (rel, bytes, a) in &outputs {
        check_relative(rel)?;
        let path = root.join(rel);
        let current = std::fs::read(&path).ok();
        if check {
            if a.sensitive {
                continue;
            }
            match current {
                None => report.missing.push(rel.clone()),
                Some(c) if &c != bytes => report.changed.push(rel.clone()),
                Some(_) => report.unchanged.push(rel.clone()),
            }
        } else if current.as_deref() == Some(bytes.as_slice()) {
            set_mode(&path, a.mode())?;
            report.unchanged.push(rel.clone());
        } else {
            write_atomic_with(&path, bytes, a.mode(), false)?;
            report.written.push(rel.clone());
        }
    }
    if !report.written.is_empty() {
        sync_filesystem(root)?;
    }
    if let Some(store) = ctx.store {
        store.sync()?;
    }
    if check {
        let planned: BTreeSet<&str> = artifacts.iter().map(|a| a.path.as_str()).collect();
        for b in backends() {
            for dir in b.owned_dirs() {
                for f in walk(&root.join(dir))? {
                    let rel = f
                        .strip_prefix(root)
                        .unwrap_or(&f)
                        .to_string_lossy()
                        .replace('\\', "/");
                    if !planned.contains(rel.as_str()) {
                        report.stale.push(rel);
                    }
                }
            }
        }
    }
    Ok(report)
}

fn check_relative(rel: &str) -> Result<()> {
    let p = Path::new(rel);
    if p.is_absolute()
        || p.components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        bail!("internal error: artifact path `{rel}` is not a plain relative path");
    }
    Ok(())
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for e in rd {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            out.extend(walk(&p)?);
        } else {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let cur = std::fs::metadata(path)
        .with_context(|| format!("reading metadata of {}", path.display()))?;
    if cur.permissions().mode() & 0o777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting mode {mode:o} on {}", path.display()))?;
    }
    Ok(())
}

/// Write `bytes` to `path` through a temporary file in the same directory, fsync, then rename.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    write_atomic_with(path, bytes, mode, true)
}

/// Flush the file system holding `path` once (after many unsynced atomic writes).
pub fn sync_filesystem(path: &Path) -> Result<()> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("opening {} to sync it", path.display()))?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: syncfs takes a valid open descriptor and has no memory effects.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("syncing the file system of {}", path.display()));
        }
    }
    #[cfg(not(target_os = "linux"))]
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

/// [`write_atomic`]; with `durable = false` the per-file fsync is skipped (renders: the caller flushes the
/// file system once at the end). The rename still makes every file appear whole or not at all.
pub fn write_atomic_with(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating directory {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".labforge-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting mode on a temporary file for {}", path.display()))?;
    }
    tmp.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    if durable {
        tmp.as_file()
            .sync_all()
            .with_context(|| format!("syncing {}", path.display()))?;
    }
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming into place {}", path.display()))?;
    Ok(())
}
