//! Base image declarations: `images/<name>.toml` (strict: unknown keys are errors).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Raw,
    Xz,
    Zst,
}

/// Where the seed goes.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SeedMethod {
    /// Raspberry Pi images: the FAT partition labelled `system-boot` (cloud-init NoCloud reads it there).
    SystemBoot,
    /// x86 GPT images: a FAT partition labelled `CIDATA` (existing, or added by labforge).
    Cidata,
}

impl SeedMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            SeedMethod::SystemBoot => "system-boot",
            SeedMethod::Cidata => "cidata",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageDecl {
    /// One line for humans.
    pub description: String,
    /// `https://…` (downloaded by the operator into `out/cache/images/`) or a path relative to the repo root.
    pub source: String,
    /// The pinned SHA-256 of the file at `source` (compressed, as published). Absent = not pinned yet:
    /// `labforge image build` refuses to use the base until the operator pins it.
    #[serde(default)]
    pub sha256: Option<String>,
    pub format: Format,
    /// `x86_64` or `aarch64`.
    pub arch: String,
    pub seed: SeedMethod,
}

#[derive(Debug, Clone)]
pub struct Loaded {
    pub name: String,
    pub file: PathBuf,
    pub decl: ImageDecl,
}

impl Loaded {
    /// The pinned sha256, or the error an unpinned base gets: labforge never uses an unverified base.
    pub fn pinned(&self) -> Result<&str> {
        match &self.decl.sha256 {
            Some(h) => Ok(h),
            None => bail!(
                "base image `{}` is not pinned: {} has no sha256.\n  Download {} , check it against the publisher's signed checksum list, then set sha256 = \"<64 hex>\" in {}",
                self.name,
                self.file.display(),
                self.decl.source,
                self.file.display()
            ),
        }
    }
    /// The repository root the declaration was loaded from (`<root>/images/<name>.toml`).
    pub fn root(&self) -> Option<&Path> {
        self.file.parent().and_then(Path::parent)
    }
    /// The local file the base comes from (the download cache for URLs).
    pub fn local_path(&self, root: &Path) -> PathBuf {
        if is_url(&self.decl.source) {
            let base = self
                .decl
                .source
                .rsplit('/')
                .next()
                .unwrap_or(&self.name)
                .to_string();
            root.join("out/cache/images").join(base)
        } else {
            root.join(&self.decl.source)
        }
    }
}

pub fn is_url(s: &str) -> bool {
    s.starts_with("https://") || s.starts_with("http://")
}

/// Load and check `images/<name>.toml` under `root`.
pub fn load(root: &Path, name: &str) -> Result<Loaded> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c))
        || name.starts_with('.')
    {
        bail!("base image name `{name}` is not a plain name (letters, digits, - _ . +)");
    }
    let file = root.join("images").join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "base image `{name}` is not declared: create {} (source, sha256, format, arch, seed; see docs/images.md)",
            file.display()
        )
    })?;
    let decl: ImageDecl =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    if let Some(h) = &decl.sha256 {
        if h.len() != 64
            || !h
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        {
            bail!(
                "{}: sha256 = \"{h}\" is not 64 lowercase hex digits",
                file.display()
            );
        }
    }
    if crate::spec::model::Arch::parse(&decl.arch).is_none() {
        bail!(
            "{}: arch = \"{}\" is not one of x86_64, aarch64",
            file.display(),
            decl.arch
        );
    }
    if decl.source.trim().is_empty() {
        bail!("{}: source is empty", file.display());
    }
    Ok(Loaded {
        name: name.to_string(),
        file,
        decl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_hashes_are_errors() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("images")).unwrap();
        let w = |s: &str| std::fs::write(t.path().join("images/x.toml"), s).unwrap();
        w("description='d'\nsource='a.img'\nformat='raw'\narch='x86_64'\nseed='cidata'\ncolour='red'\n");
        let e = load(t.path(), "x").unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
        w("description='d'\nsource='a.img'\nsha256='ABC'\nformat='raw'\narch='x86_64'\nseed='cidata'\n");
        assert!(load(t.path(), "x")
            .unwrap_err()
            .to_string()
            .contains("64 lowercase hex"));
        w("description='d'\nsource='a.img'\nformat='gz'\narch='x86_64'\nseed='cidata'\n");
        assert!(load(t.path(), "x").is_err());
        w("description='d'\nsource='https://h/x/y.img.xz'\nformat='xz'\narch='aarch64'\nseed='system-boot'\n");
        let l = load(t.path(), "x").unwrap();
        assert!(l.decl.sha256.is_none());
        assert!(l
            .local_path(t.path())
            .ends_with("out/cache/images/y.img.xz"));
        assert!(load(t.path(), "../x").is_err());
    }
}
