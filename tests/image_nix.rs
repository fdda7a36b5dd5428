//! `labforge image build` for NixOS hosts, for real with Debian's Nix (2.8) on a small local flake
//! (tests/fixtures/nix-flake) whose image outputs are built without nixpkgs: a private store/state
//! directory, no sandbox, no substituters, no flake registry — nothing touches the network.
//! Oracles: sfdisk (the image's partition table), bmaptool (copy through the block map), sha256 of the Nix
//! store file against the manifest.
mod common;

use common::{labforge_env, oracle, stderr, stdout};
use std::path::{Path, PathBuf};
use std::process::Command;

struct NixEnv {
    dir: tempfile::TempDir,
}

impl NixEnv {
    fn new() -> NixEnv {
        oracle("nix");
        let dir = tempfile::tempdir().unwrap();
        let flake = dir.path().join("flake");
        std::fs::create_dir(&flake).unwrap();
        std::fs::copy(
            common::repo().join("tests/fixtures/nix-flake/flake.nix"),
            flake.join("flake.nix"),
        )
        .unwrap();
        NixEnv { dir }
    }
    fn flake(&self) -> PathBuf {
        self.dir.path().join("flake")
    }
    fn vars(&self) -> Vec<(String, String)> {
        let d = self.dir.path();
        vec![
            (
                "NIX_STORE_DIR".into(),
                d.join("store").display().to_string(),
            ),
            ("NIX_STATE_DIR".into(), d.join("var").display().to_string()),
            ("NIX_LOG_DIR".into(), d.join("log").display().to_string()),
            ("NIX_CONF_DIR".into(), d.join("etc").display().to_string()),
            (
                "NIX_CONFIG".into(),
                "sandbox = false\nbuild-users-group =\nsubstituters =\nflake-registry =\n".into(),
            ),
        ]
    }
    fn labforge(&self, args: &[&str]) -> std::process::Output {
        let vars = self.vars();
        let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        labforge_env(self.dir.path(), args, &env)
    }
}

fn spec() -> String {
    common::repo().join("hosts").display().to_string()
}

fn sha256(p: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

#[test]
fn nixos_host_image_is_built_by_nix_with_manifest_and_block_map() {
    let n = NixEnv::new();
    let out = n.dir.path().join("images/hermes.img");
    let flake = n.flake();
    let o = n.labforge(&[
        "--spec",
        &spec(),
        "image",
        "build",
        "hermes",
        "--flake",
        flake.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    // The build log streamed (plain lines: stderr is not a terminal here).
    assert!(
        stderr(&o).contains("building the test image of hermes"),
        "{}",
        stderr(&o)
    );
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["host"], "hermes");
    assert_eq!(m["build"]["kind"], "nix-build");
    assert_eq!(m["build"]["inputs"]["attr"], ".#images.hermes");
    assert_eq!(m["build"]["inputs"]["strategy"], "native");
    assert!(
        m.get("seed").is_none(),
        "NixOS images carry no cloud-init seed"
    );
    // The store file and the image are the same bytes, and the manifest says so.
    let store_path = PathBuf::from(m["build"]["inputs"]["store-path"].as_str().unwrap());
    assert!(
        store_path.starts_with(n.dir.path().join("store")),
        "{store_path:?}"
    );
    assert_eq!(sha256(&store_path), sha256(&out));
    assert_eq!(m["image"]["sha256"], sha256(&out));
    assert_eq!(m["build"]["inputs"]["store-file-sha256"], sha256(&out));
    // sfdisk reads the MBR partition the derivation wrote.
    let sf = Command::new(oracle("sfdisk"))
        .arg("-J")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        sf.status.success(),
        "{}",
        String::from_utf8_lossy(&sf.stderr)
    );
    let t: serde_json::Value = serde_json::from_slice(&sf.stdout).unwrap();
    assert_eq!(t["partitiontable"]["label"], "dos");
    assert_eq!(t["partitiontable"]["partitions"][0]["start"], 2048);
    assert_eq!(t["partitiontable"]["partitions"][0]["type"], "83");
    // bmaptool copies it through the block map (checking every range's sha256) byte for byte.
    let copy = n.dir.path().join("copy.img");
    let b = Command::new(oracle("bmaptool"))
        .arg("copy")
        .arg("--bmap")
        .arg(format!("{}.bmap", out.display()))
        .arg(&out)
        .arg(&copy)
        .output()
        .unwrap();
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    assert_eq!(sha256(&copy), sha256(&out));
}

#[test]
fn aarch64_image_without_builders_asks_for_emulation_with_builders_goes_remote() {
    let n = NixEnv::new();
    let flake = n.flake();
    // Emulated: `extra-platforms = aarch64-linux` is passed, so Nix accepts the aarch64 derivation (this
    // fixture's builder is the controller's /bin/sh, so it runs without binfmt).
    let out = n.dir.path().join("hestia.img");
    let o = n.labforge(&[
        "--spec",
        &spec(),
        "image",
        "build",
        "hestia",
        "--flake",
        flake.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["build"]["inputs"]["strategy"], "emulated");
    // Remote: the builders are passed through and the build may not run locally (--max-jobs 0). The
    // builder here is a loopback address with nothing listening, so Nix fails and says why.
    let out2 = n.dir.path().join("hestia-remote.img");
    // A fresh store path: change the flake so the derivation is not already built.
    let f = flake.join("flake.nix");
    let text = std::fs::read_to_string(&f).unwrap().replace(
        "labforge nix test image for",
        "labforge nix test image (remote) for",
    );
    std::fs::write(&f, text).unwrap();
    let o = n.labforge(&[
        "--spec",
        &spec(),
        "image",
        "build",
        "hestia",
        "--flake",
        flake.to_str().unwrap(),
        "--out",
        out2.to_str().unwrap(),
        "--builders",
        "ssh://labforge-test@127.0.0.1:1 aarch64-linux",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let e = stderr(&o);
    assert!(e.contains("remote build"), "{e}");
    // Nix lists the one machine it was given, from our --builders.
    assert!(e.contains("(aarch64-linux, 1"), "{e}");
    assert!(!out2.exists(), "a failed build leaves no image");
}

#[test]
fn a_failing_derivation_fails_the_build_with_its_log_and_leaves_nothing() {
    let n = NixEnv::new();
    let out = n.dir.path().join("broken.img");
    let vars = n.vars();
    for (k, v) in &vars {
        std::env::set_var(k, v);
    }
    let r = labforge::image::nix::build(&labforge::image::nix::NixInput {
        host: "broken",
        spec_revision: "test",
        flake: n.flake(),
        attr: "images.broken".into(),
        mode: labforge::plan::BuildMode::Native,
        builders: None,
        nix: "nix".into(),
        out: out.clone(),
        progress: false,
    });
    let e = format!("{:#}", r.unwrap_err());
    assert!(e.contains("this build fails on purpose"), "{e}");
    assert!(e.contains("native build"), "{e}");
    assert!(!out.exists());
    let left: Vec<_> = std::fs::read_dir(n.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with(".labforge"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

#[test]
fn nixos_image_build_without_a_flake_says_how_to_fix() {
    let n = NixEnv::new();
    let empty = n.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = n.labforge(&[
        "--spec",
        &spec(),
        "image",
        "build",
        "hermes",
        "--flake",
        empty.to_str().unwrap(),
        "--out",
        n.dir.path().join("x.img").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("labforge render"), "{}", stderr(&o));
}
