//! Operator-validated gates (seed 001): "Codex MUST NOT attempt to automate, infer, or satisfy
//! operator-validated checks." labforge shows the checklist and evidence and records a human's sign-off;
//! nothing in labforge can confirm a gate by itself (confirmation needs a person at a terminal).
//!
//! A sign-off is `gates/<id>.toml` beside the spec directory, bound to a digest of the gate's definition
//! and its stack: when either changes, the sign-off no longer counts.

use crate::spec::model::{Gate, Spec};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone)]
#[serde(deny_unknown_fields)]
pub struct SignOff {
    pub gate: String,
    pub digest: String,
    pub confirmed_by: String,
    /// Seconds since the Unix epoch.
    pub confirmed_at: u64,
    #[serde(default)]
    pub note: String,
    pub checklist: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Pending,
    Confirmed,
    /// Signed off for an earlier definition of the gate or its stack.
    Stale,
}

/// Digest of what the operator validated: the gate and its stack as the spec defines them.
pub fn digest(spec: &Spec, g: &Gate) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(g).unwrap_or_default());
    if let Some(st) = spec.stacks.get(&g.stack) {
        h.update(serde_json::to_vec(st).unwrap_or_default());
    }
    hex::encode(&h.finalize()[..16])
}

pub fn path(root: &Path, id: &str) -> PathBuf {
    root.join("gates").join(format!("{id}.toml"))
}

pub fn load(root: &Path, id: &str) -> Result<Option<SignOff>> {
    let p = path(root, id);
    match std::fs::read_to_string(&p) {
        Ok(t) => {
            Ok(Some(toml::from_str(&t).with_context(|| {
                format!("reading sign-off {}", p.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

pub fn status(spec: &Spec, root: &Path, g: &Gate) -> Result<(Status, Option<SignOff>)> {
    let s = load(root, &g.id)?;
    let st = match &s {
        None => Status::Pending,
        Some(s) if s.digest == digest(spec, g) => Status::Confirmed,
        Some(_) => Status::Stale,
    };
    Ok((st, s))
}

pub fn record(spec: &Spec, root: &Path, g: &Gate, by: &str, note: &str) -> Result<SignOff> {
    let s = SignOff {
        gate: g.id.clone(),
        digest: digest(spec, g),
        confirmed_by: by.to_string(),
        confirmed_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        note: note.to_string(),
        checklist: g.checklist.clone(),
    };
    let text = format!(
        "# Operator sign-off recorded by `labforge gate confirm` (seed {}).\n{}",
        g.seed,
        toml::to_string(&s)?
    );
    crate::render::write_atomic(&path(root, &g.id), text.as_bytes(), 0o644)?;
    Ok(s)
}

/// Where a host records that a gate was signed off (written by `labforge deploy` once the operator confirmed
/// it): a stack behind a `before` gate starts only when this file exists, at first boot and on every boot.
pub const HOST_MARKER_DIR: &str = "/var/lib/labforge/gates";

/// The host-side marker of gate `id`.
pub fn host_marker(id: &str) -> String {
    format!("{HOST_MARKER_DIR}/{id}")
}
