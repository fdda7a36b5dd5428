//! The flake builds on the NixOS release it pins (issue 18):
//! * the MSRV is true: Cargo.toml's `rust-version` equals the highest `rust-version` of the locked
//!   dependency tree (`cargo metadata --locked`, every platform's packages), and it does not exceed the rustc
//!   of the pinned release (`rustc` in tests/nixos-options.toml `[meta]`, read from nixpkgs'
//!   pkgs/development/compilers/rust/ on that release);
//! * the flake (committed and as rendered) pins one release for nixpkgs and one nixos-hardware commit, and the
//!   manifest's `[meta]` names the same release and commit (so the option manifest is recorded for the
//!   release the flake builds with).

mod common;

use std::path::Path;
use std::process::Command;

/// A `rust-version` as numbers (`1.88` = `1.88.0`).
fn version(s: &str) -> Vec<u64> {
    let mut v: Vec<u64> = s
        .trim()
        .split('.')
        .map(|p| {
            p.parse()
                .unwrap_or_else(|_| panic!("{s:?} is not a rust-version"))
        })
        .collect();
    v.resize(3, 0);
    v
}

fn meta() -> toml::Table {
    let text = std::fs::read_to_string(common::repo().join("tests/nixos-options.toml")).unwrap();
    let t: toml::Table = toml::from_str(&text).unwrap();
    t["meta"].as_table().expect("[meta]").clone()
}

fn meta_str(key: &str) -> String {
    meta()[key]
        .as_str()
        .unwrap_or_else(|| panic!("[meta] {key} is not a string"))
        .to_string()
}

/// Cargo.toml's own `rust-version`.
fn declared_msrv(repo: &Path) -> String {
    let text = std::fs::read_to_string(repo.join("Cargo.toml")).unwrap();
    let t: toml::Table = toml::from_str(&text).unwrap();
    t["package"]["rust-version"]
        .as_str()
        .expect("Cargo.toml has a package.rust-version")
        .to_string()
}

/// The highest `rust-version` among the locked dependencies (not the crate itself), with the package that
/// sets it.
fn tree_msrv(repo: &Path) -> (String, String) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(repo)
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata --locked failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let root = m["resolve"]["root"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let resolved: std::collections::BTreeSet<&str> = m["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    let mut best: Option<(Vec<u64>, String, String)> = None;
    for p in m["packages"].as_array().unwrap() {
        let id = p["id"].as_str().unwrap_or_default();
        if id == root || !resolved.contains(id) {
            continue;
        }
        let Some(rv) = p["rust_version"].as_str() else {
            continue;
        };
        let v = version(rv);
        let who = format!(
            "{} {}",
            p["name"].as_str().unwrap(),
            p["version"].as_str().unwrap()
        );
        if best.as_ref().is_none_or(|b| v > b.0) {
            best = Some((v, rv.to_string(), who));
        }
    }
    let (_, rv, who) = best.expect("some dependency declares a rust-version");
    (rv, who)
}

/// The MSRV rule: the declared version is the tree's highest, and the pinned release's rustc builds it.
fn msrv_problems(declared: &str, tree: &str, tree_who: &str, rustc: &str) -> Vec<String> {
    let mut p = Vec::new();
    if version(declared) != version(tree) {
        p.push(format!(
            "Cargo.toml rust-version = {declared:?}, but the locked tree needs {tree} ({tree_who}): set rust-version = \"{tree}\""
        ));
    }
    if version(tree) > version(rustc) || version(declared) > version(rustc) {
        p.push(format!(
            "the locked tree needs rustc {tree} ({tree_who}) but the pinned NixOS release ships rustc {rustc}: \
             downgrade that crate (cargo update -p … --precise …) or pin a newer release"
        ));
    }
    p
}

#[test]
fn rust_version_is_the_locked_trees_and_the_pinned_release_builds_it() {
    let repo = common::repo();
    let declared = declared_msrv(&repo);
    let (tree, who) = tree_msrv(&repo);
    let rustc = meta_str("rustc");
    let problems = msrv_problems(&declared, &tree, &who, &rustc);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    println!(
        "MSRV {declared} (from {who}); NixOS {} rustc {rustc}",
        meta_str("release")
    );
}

#[test]
fn the_msrv_rule_bites() {
    // A crate bump past the release's compiler, a stale claim in Cargo.toml, an over-claim.
    let p = msrv_problems("1.89", "1.96", "uuid 9.9.9", "1.95.0");
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[1].contains("ships rustc 1.95.0"), "{p:?}");
    let p = msrv_problems("1.82", "1.89", "uuid 1.29.1", "1.95.0");
    assert!(
        p.len() == 1 && p[0].contains("set rust-version = \"1.89\""),
        "{p:?}"
    );
    assert!(msrv_problems("1.89.0", "1.89", "x", "1.95.0").is_empty());
    assert_eq!(msrv_problems("1.96", "1.89", "x", "1.95.0").len(), 2);
}

/// `inputs` of a flake.nix, evaluated by Nix itself (the file is a plain attribute set; `outputs` is not called).
fn flake_inputs(flake: &Path) -> serde_json::Value {
    let expr = format!(
        "builtins.mapAttrs (_: i: i.url) (import (/. + {})).inputs",
        labforge::render::nixos::nix_string(&flake.to_string_lossy())
    );
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "--expr", &expr])
        .output()
        .expect("running nix-instantiate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn assert_pins(flake: &Path) {
    let inputs = flake_inputs(flake);
    let release = meta_str("release");
    let hw = meta_str("nixos_hardware");
    assert_eq!(
        inputs["nixpkgs"],
        format!("github:NixOS/nixpkgs/{release}"),
        "{}: nixpkgs must pin the manifest's release",
        flake.display()
    );
    assert_eq!(
        inputs["nixos-hardware"],
        format!("github:NixOS/nixos-hardware/{hw}"),
        "{}: nixos-hardware must pin the manifest's commit",
        flake.display()
    );
    assert_eq!(
        inputs.as_object().unwrap().len(),
        2,
        "one nixpkgs for every host: {inputs}"
    );
}

#[test]
fn the_flake_pins_the_manifests_release_and_nixos_hardware_commit() {
    let release = meta_str("release");
    assert!(
        release.starts_with("nixos-") && version(&release["nixos-".len()..]) >= version("26.05"),
        "a supported stable release: {release}"
    );
    assert_eq!(release, labforge::render::nixos::NIXOS_RELEASE);
    assert_eq!(
        meta_str("nixos_hardware"),
        labforge::render::nixos::NIXOS_HARDWARE_REV
    );
    let hw = meta_str("nixos_hardware");
    assert!(
        hw.len() == 40 && hw.chars().all(|c| c.is_ascii_hexdigit()),
        "a full commit: {hw}"
    );
    // The committed flake and a fresh render of the example lab.
    assert_pins(&common::repo().join("flake.nix"));
    let lab = common::example_lab();
    let out = common::labforge(lab.path(), &["secrets", "init"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let out = common::labforge(lab.path(), &["render"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_pins(&lab.path().join("flake.nix"));
}

#[test]
fn a_flake_on_another_release_fails_the_pin_check() {
    let t = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(common::repo().join("flake.nix"))
        .unwrap()
        .replace("nixos-26.05", "nixos-25.05");
    let f = t.path().join("flake.nix");
    std::fs::write(&f, text).unwrap();
    let r = std::panic::catch_unwind(|| assert_pins(&f));
    assert!(r.is_err(), "a flake on nixos-25.05 passed the pin check");
}
