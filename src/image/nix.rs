//! NixOS images: `nix build` of the flake's image output for the host (`.#images.<host>`: sd-image for
//! Raspberry Pis, raw-efi for x86), its log streamed under a progress display, then hashed with a block map
//! and a manifest like every labforge image.
//!
//! Builders: the operator's Nix configuration applies as it is (`NIX_CONFIG`, nix.conf, machines file are
//! inherited); `--builders` passes remote builders through. For an aarch64 host on an x86_64 controller the
//! plan says `emulated-or-remote`: with builders given, the build is forced onto them (`--max-jobs 0`); without,
//! it asks for emulation (`extra-platforms = aarch64-linux`, which needs a binfmt_misc handler on the machine).

use super::{BuildRef, Built};
use crate::plan::BuildMode;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct NixInput<'a> {
    pub host: &'a str,
    pub spec_revision: &'a str,
    /// The flake directory (the repository root with flake.nix).
    pub flake: PathBuf,
    /// The attribute, e.g. `images.prometheus` (a leading `.#` is accepted).
    pub attr: String,
    pub mode: BuildMode,
    /// Nix remote builders (`--builders` syntax), passed through.
    pub builders: Option<String>,
    /// The `nix` binary (default: `nix` on PATH).
    pub nix: PathBuf,
    pub out: PathBuf,
    pub progress: bool,
}

/// How the build runs, as the manifest and `plan` say it.
pub fn strategy(mode: BuildMode, builders: Option<&str>) -> &'static str {
    match (mode, builders.map(str::trim).filter(|b| !b.is_empty())) {
        (BuildMode::Native, _) => "native",
        (BuildMode::EmulatedOrRemote, Some(_)) => "remote",
        (BuildMode::EmulatedOrRemote, None) | (BuildMode::Emulated, _) => "emulated",
    }
}

/// The `nix build` arguments (after the program name).
pub fn args(inp: &NixInput, out_link: &Path) -> Vec<String> {
    let attr = inp.attr.trim_start_matches(".#");
    let mut a = vec![
        "--extra-experimental-features".to_string(),
        "nix-command flakes".to_string(),
        "build".to_string(),
        format!("path:{}#{attr}", inp.flake.display()),
        "--out-link".to_string(),
        out_link.display().to_string(),
        "--print-build-logs".to_string(),
    ];
    let builders = inp
        .builders
        .as_deref()
        .map(str::trim)
        .filter(|b| !b.is_empty());
    if let Some(b) = builders {
        a.extend(["--builders".to_string(), b.to_string()]);
    }
    match strategy(inp.mode, builders) {
        "remote" => a.extend(["--max-jobs".to_string(), "0".to_string()]),
        "emulated" => a.extend([
            "--option".to_string(),
            "extra-platforms".to_string(),
            "aarch64-linux".to_string(),
        ]),
        _ => {}
    }
    a
}

/// The image inside a build result: the result itself when it is a file, else the one `*.img`, `*.raw`
/// or `*.img.zst` below it (NixOS sd-image puts it in `sd-image/`).
pub fn find_image(result: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(result)
        .with_context(|| format!("the build result {} is missing", result.display()))?;
    if meta.is_file() {
        return Ok(result.to_path_buf());
    }
    let mut found = Vec::new();
    let mut stack = vec![result.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            let m = std::fs::metadata(&p)?;
            if m.is_dir() {
                stack.push(p);
            } else {
                let n = p.file_name().and_then(|s| s.to_str()).unwrap_or("");
                if n.ends_with(".img") || n.ends_with(".raw") || n.ends_with(".img.zst") {
                    found.push(p);
                }
            }
        }
    }
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!(
            "the build result {} holds no disk image (*.img, *.raw, *.img.zst): is `images.<host>` an image derivation?",
            result.display()
        ),
        _ => bail!(
            "the build result {} holds several disk images ({}): the image output must make one",
            result.display(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Run `nix build` and turn its result into HOST's image (+ .bmap + .manifest.json).
pub fn build(inp: &NixInput) -> Result<Built> {
    if !inp.flake.join("flake.nix").is_file() {
        bail!(
            "no flake.nix in {}: run `labforge render` first (the nixos backend writes it)",
            inp.flake.display()
        );
    }
    let outdir = inp
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    std::fs::create_dir_all(&outdir)?;
    let work = tempfile::Builder::new()
        .prefix(".labforge-nix-")
        .tempdir_in(&outdir)?;
    let link = work.path().join("result");
    let argv = args(inp, &link);
    let mut cmd = Command::new(&inp.nix);
    cmd.args(&argv);
    let pb = crate::io::progress_bar(0, "nix build", inp.progress);
    pb.set_message(format!("nix build {}", inp.attr));
    let r = super::debian::stream(&mut cmd, "nix build", &pb, inp.progress);
    pb.finish_and_clear();
    r.with_context(|| {
        format!(
            "building the NixOS image of `{}` ({} build)",
            inp.host,
            strategy(inp.mode, inp.builders.as_deref())
        )
    })?;
    let store_path = std::fs::read_link(&link)
        .with_context(|| format!("nix build left no result link at {}", link.display()))?;
    let img = find_image(&link)?;

    let tmp = tempfile::Builder::new()
        .prefix(".labforge-image-")
        .tempfile_in(&outdir)?;
    let src = File::open(&img)?;
    let name = img.file_name().and_then(|s| s.to_str()).unwrap_or("");
    let src_sha = if name.ends_with(".zst") {
        super::decompress_zst(&src, tmp.as_file(), inp.progress)?
    } else {
        super::sparse_copy_pub(&src, tmp.as_file(), inp.progress)?
    };
    let mut inputs = BTreeMap::new();
    inputs.insert(
        "attr".to_string(),
        format!(".#{}", inp.attr.trim_start_matches(".#")),
    );
    inputs.insert(
        "strategy".to_string(),
        strategy(inp.mode, inp.builders.as_deref()).to_string(),
    );
    inputs.insert("store-path".to_string(), store_path.display().to_string());
    inputs.insert(
        "store-file".to_string(),
        img.strip_prefix(&link)
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    );
    inputs.insert("store-file-sha256".to_string(), src_sha);
    drop(work);
    super::publish(
        tmp,
        &inp.out,
        inp.host,
        inp.spec_revision,
        None,
        Some(BuildRef {
            kind: "nix-build".into(),
            inputs,
        }),
        None,
        inp.progress,
    )
}
