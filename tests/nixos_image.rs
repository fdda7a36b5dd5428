//! Images are the deployed system (issue 18), judged over the rendered hestia/atlas/hermes modules (and the
//! golden rpi5 host) with the miniature module system (tests/nixos_modsys.nix) and copies of what the
//! upstream image and board modules define (tests/nixopts/image-modules.nix, upstream commits named there):
//! * Pis (rpi4, rpi5): nixos-hardware's board profile + nixpkgs' sd-image-aarch64 with the known-good
//!   settings — all-hardware initrd off, ZFS off, extlinux via U-Boot chainloaded by the firmware, the
//!   board's kernel and initrd modules — and no option of the host is dropped or overridden by the image
//!   modules; they add only the card's root and firmware file systems.
//! * x86 (raw-efi): the flake builds the disk image from the host's own configuration (make-disk-image,
//!   called with the stub nixpkgs below), so its file systems, mounts, users and services are the host's;
//!   the root/ESP layout the image writes is the one hardware.nix mounts. The old way (the disk-image
//!   module's `fileSystems = mkImageMediaOverride …`) is shown to drop atlas's /export.
//!
//! What is NOT proven here: that nixpkgs builds the images (no nixpkgs offline; `nix build .#images.<host>`
//! in the operator's CI), nor the content of the upstream modules beyond the copied definitions.

mod common;

use serde_json::Value;
use std::path::Path;
use std::process::Command;

const MODSYS: &str = include_str!("nixos_modsys.nix");
const COPIES: &str = include_str!("nixopts/image-modules.nix");

const STUB_INPUTS: &str = r#"{ nixos-hardware.nixosModules = {
    raspberry-pi-4 = { _external = "nixos-hardware:raspberry-pi-4"; };
    raspberry-pi-5 = { _external = "nixos-hardware:raspberry-pi-5"; };
  }; }"#;

const PKGS: &str = r#"[ "htop" "tmux" "curl" "git" ]"#;

fn nix_str(s: &str) -> String {
    labforge::render::nixos::nix_string(s)
}

fn nix_eval(dir: &Path, expr: &str) -> Result<Value, String> {
    std::fs::write(dir.join("modsys.nix"), MODSYS).unwrap();
    std::fs::write(dir.join("image-modules.nix"), COPIES).unwrap();
    let file = dir.join("eval.nix");
    std::fs::write(&file, expr).unwrap();
    let o = Command::new(common::oracle("nix-instantiate"))
        .args(["--eval", "--strict", "--json"])
        .arg(&file)
        .output()
        .expect("running nix-instantiate");
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&o.stdout).expect("nix-instantiate printed JSON"))
}

/// The typed module-system oracle's declarations (tests/nixopts/declarations.nix, types.nix), as a Nix path.
/// A golden tree (tests/golden/*/out) holds the NixOS backend's files only: the compose side the stack
/// template's assertions look for (docker-compose.yml, hosts/<host>.env) is not in it.
fn check_assertions(root: &Path) -> &'static str {
    if root.starts_with(common::repo().join("tests/golden")) {
        "false"
    } else {
        "true"
    }
}

fn oracle() -> String {
    format!(
        "(/. + {})",
        nix_str(&common::repo().join("tests/nixopts").to_string_lossy())
    )
}

/// `{ config; external; }` of a host under `root`, with `extra` modules (Nix expressions) and, when `copies`,
/// the upstream modules' definitions evaluated instead of only recorded. The configuration (image-module
/// copies included) is type-checked against the oracle's declarations: a type error or an undeclared option
/// is an `Err`, like an evaluation error.
fn eval(root: &Path, host: &str, extra: &str, copies: bool) -> Result<Value, String> {
    let t = tempfile::tempdir().unwrap();
    let host_path = nix_str(&root.join("nixos/hosts").join(host).to_string_lossy());
    let copies = if copies {
        "import ./image-modules.nix"
    } else {
        "{ }"
    };
    let expr = format!(
        "import ./modsys.nix {{ modules = [ (/. + {host_path}) {{ virtualisation.docker.package = \"/stub/docker\"; }} {extra} ]; \
         specialArgs = {{ inputs = {STUB_INPUTS}; }}; pkgNames = {PKGS}; copies = {copies}; oracle = {}; checkAssertions = {}; }}",
        oracle(),
        check_assertions(root)
    );
    let v = nix_eval(t.path(), &expr)?;
    match v["errors"].as_array() {
        Some(e) if e.is_empty() => Ok(v),
        _ => Err(format!(
            "{host}: the module-system oracle rejects:\n{}",
            v["errors"]
        )),
    }
}

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| &v[*k])
}

/// Every leaf of the host's own configuration `host`, compared with the configuration the image is built
/// from (`image`): a missing or different value is reported with its option path; a list must keep all its
/// elements (list options concatenate, the image modules may add to them).
fn dropped_or_overridden(
    host: &Value,
    image: &Value,
    path: &mut Vec<String>,
    out: &mut Vec<String>,
) {
    match (host, image) {
        (Value::Object(h), Value::Object(i)) => {
            for (k, hv) in h {
                path.push(k.clone());
                match i.get(k) {
                    None => out.push(format!("{}: dropped by the image", path.join("."))),
                    Some(iv) => dropped_or_overridden(hv, iv, path, out),
                }
                path.pop();
            }
        }
        (Value::Array(h), Value::Array(i)) => {
            for e in h {
                if !i.contains(e) {
                    out.push(format!(
                        "{}: element {e} dropped by the image",
                        path.join(".")
                    ));
                }
            }
        }
        (h, i) if h == i => {}
        (h, i) => out.push(format!(
            "{}: {h} overridden by the image with {i}",
            path.join(".")
        )),
    }
}

fn image_diff(host: &Value, image: &Value) -> Vec<String> {
    let mut out = Vec::new();
    dropped_or_overridden(host, image, &mut Vec::new(), &mut out);
    out
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// The known-good Raspberry Pi combination (nixos-hardware raspberry-pi README + board profile, nixpkgs
/// sd-image-aarch64): what is wrong with an evaluated Pi configuration, one line per problem.
fn pi_problems(c: &Value, board: u8) -> Vec<String> {
    let mut p = Vec::new();
    let mut want = |path: &[&str], v: Value, why: &str| {
        let got = at(c, path);
        if *got != v {
            p.push(format!("{} = {got} (want {v}: {why})", path.join(".")));
        }
    };
    want(
        &["hardware", "enableAllHardware"],
        false.into(),
        "the Raspberry Pi kernel lacks the all-hardware initrd modules (nixpkgs#154163)",
    );
    want(
        &["boot", "supportedFilesystems", "zfs"],
        false.into(),
        "ZFS is not cached for the Pi kernel (nixpkgs#562666)",
    );
    want(
        &["boot", "loader", "grub", "enable"],
        false.into(),
        "no GRUB on a Pi",
    );
    want(
        &["boot", "loader", "generic-extlinux-compatible", "enable"],
        true.into(),
        "U-Boot reads extlinux.conf",
    );
    want(
        &["hardware", "raspberry-pi", "firmware", "uboot", "enable"],
        true.into(),
        "the firmware partition needs u-boot.bin to reach extlinux.conf",
    );
    want(
        &[
            "hardware",
            "raspberry-pi",
            "configtxt",
            "settings",
            "all",
            "kernel",
        ],
        "u-boot.bin".into(),
        "config.txt chainloads U-Boot",
    );
    want(
        &["sdImage", "compressImage"],
        false.into(),
        "labforge flashes the raw image",
    );
    want(
        &["hardware", "enableRedistributableFirmware"],
        true.into(),
        "Wi-Fi/Bluetooth firmware",
    );
    let kernel = at(c, &["boot", "kernelPackages"])
        .as_str()
        .unwrap_or_default();
    let (kernel_want, modules): (&str, &[&str]) = if board == 5 {
        ("rpiVersion = 5", &["nvme", "pcie-brcmstb", "clk-rp1"])
    } else {
        ("linux_rpi4", &["pcie_brcmstb", "reset-raspberrypi", "vc4"])
    };
    if !kernel.contains(kernel_want) {
        p.push(format!(
            "boot.kernelPackages = {kernel:?}: not the board profile's kernel ({kernel_want})"
        ));
    }
    let initrd = at(c, &["boot", "initrd", "availableKernelModules"]);
    for m in modules {
        if !initrd
            .as_array()
            .is_some_and(|a| a.contains(&Value::from(*m)))
        {
            p.push(format!(
                "boot.initrd.availableKernelModules lacks {m} (the board profile's)"
            ));
        }
    }
    let fw = at(c, &["sdImage", "populateFirmwareCommands"])
        .as_str()
        .unwrap_or_default();
    if !fw.contains("install-rpi-firmware") {
        p.push(format!(
            "sdImage.populateFirmwareCommands = {fw:?}: not nixos-hardware's firmware install"
        ));
    }
    p
}

fn pi_hosts() -> Vec<(std::path::PathBuf, &'static str, u8)> {
    vec![
        (common::repo(), "hestia", 4),
        (
            common::repo().join("tests/golden/nixos-compute/out"),
            "pi5",
            5,
        ),
    ]
}

#[test]
fn pi_images_use_the_known_good_nixos_hardware_combination() {
    for (root, host, board) in pi_hosts() {
        let r = eval(&root, host, "", true).unwrap_or_else(|e| panic!("{host}: {e}"));
        let problems = pi_problems(&r["config"], board);
        assert!(problems.is_empty(), "{host}:\n{}", problems.join("\n"));
        let ext = strs(&r["external"]);
        assert!(
            ext.contains(
                &"/stub/nixpkgs/nixos/modules/installer/sd-card/sd-image-aarch64.nix".to_string()
            ) && ext.contains(&format!("nixos-hardware:raspberry-pi-{board}")),
            "{host}: {ext:?}"
        );
    }
}

#[test]
fn a_pi_without_the_all_hardware_override_is_caught() {
    // The SD-image module's `hardware.enableAllHardware = true` wins when hardware.nix does not force it off
    // (the initrd then fails to build on the Pi kernel), and a plain `false` conflicts with it.
    let lab = tempfile::tempdir().unwrap();
    common::copy_dir(&common::repo().join("nixos"), &lab.path().join("nixos"));
    common::copy_dir(
        &common::repo().join("services"),
        &lab.path().join("services"),
    );
    let hw = lab.path().join("nixos/hosts/hestia/hardware.nix");
    let text = std::fs::read_to_string(&hw).unwrap();
    std::fs::write(
        &hw,
        text.replace("hardware.enableAllHardware = lib.mkForce false;", ""),
    )
    .unwrap();
    let r = eval(lab.path(), "hestia", "", true).unwrap();
    let p = pi_problems(&r["config"], 4);
    assert!(
        p.len() == 1 && p[0].starts_with("hardware.enableAllHardware = true"),
        "{p:?}"
    );
    std::fs::write(
        &hw,
        text.replace(
            "hardware.enableAllHardware = lib.mkForce false;",
            "hardware.enableAllHardware = false;",
        ),
    )
    .unwrap();
    let e = eval(lab.path(), "hestia", "", true).unwrap_err();
    assert!(
        e.contains("conflicting definitions of hardware.enableAllHardware"),
        "{e}"
    );
}

#[test]
fn pi_image_modules_drop_and_override_nothing_of_the_host() {
    for (root, host, _) in pi_hosts() {
        let own = eval(&root, host, "", false).unwrap_or_else(|e| panic!("{host}: {e}"));
        let image = eval(&root, host, "", true).unwrap_or_else(|e| panic!("{host}: {e}"));
        let d = image_diff(&own["config"], &image["config"]);
        assert!(d.is_empty(), "{host}:\n{}", d.join("\n"));
        // The only file systems the image adds are the card's root and firmware partitions.
        let fs = |v: &Value| -> Vec<String> {
            at(v, &["config", "fileSystems"])
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default()
        };
        let (mine, all) = (fs(&own), fs(&image));
        let added: Vec<&String> = all.iter().filter(|k| !mine.contains(k)).collect();
        assert_eq!(added, ["/", "/boot/firmware"], "{host}");
        assert_eq!(
            at(&image["config"], &["fileSystems", "/", "device"]),
            "/dev/disk/by-label/NIXOS_SD"
        );
    }
}

#[test]
fn the_disk_image_modules_override_would_drop_atlas_export_and_is_caught() {
    // What `system.build.images.raw-efi` adds (nixpkgs virtualisation/disk-image.nix:
    // `fileSystems = lib.mkImageMediaOverride { … }`, priority 60): the image would lack /export.
    let root = common::repo();
    let disk_image = r#"{ fileSystems = { _type = "override"; priority = 60; content = {
        "/" = { device = "/dev/disk/by-label/nixos"; autoResize = true; fsType = "ext4"; };
        "/boot" = { device = "/dev/disk/by-label/ESP"; fsType = "vfat"; }; }; }; }"#;
    let own = eval(&root, "atlas", "", false).unwrap();
    let image = eval(&root, "atlas", disk_image, false).unwrap();
    let d = image_diff(&own["config"], &image["config"]);
    assert!(
        d.iter()
            .any(|l| l == "fileSystems./export: dropped by the image"),
        "{d:?}"
    );
    assert!(
        d.iter().any(|l| l.starts_with("fileSystems./boot.options")),
        "{d:?}"
    );
}

/// The flake's outputs with stub inputs whose nixpkgs has a `nixos/lib/make-disk-image.nix` that returns
/// what it was called with.
fn flake_images(flake_root: &Path) -> Value {
    let t = tempfile::tempdir().unwrap();
    let stub = t.path().join("nixpkgs");
    std::fs::create_dir_all(stub.join("nixos/lib")).unwrap();
    std::fs::write(
        stub.join("nixos/lib/make-disk-image.nix"),
        "args: { makeDiskImage = removeAttrs args [ \"lib\" ]; }\n",
    )
    .unwrap();
    let expr = format!(
        r#"
let
  flake = import (/. + {flake});
  modsys = import ./modsys.nix;
  genAttrs = names: f: builtins.listToAttrs (map (n: {{ name = n; value = f n; }}) names);
  lib = {{
    inherit genAttrs;
    mapAttrs = builtins.mapAttrs;
    filterAttrs = pred: set: builtins.listToAttrs (builtins.filter (x: pred x.name x.value) (map (n: {{ name = n; value = set.${{n}}; }}) (builtins.attrNames set)));
    mapAttrs' = f: set: builtins.listToAttrs (map (n: f n set.${{n}}) (builtins.attrNames set));
    nameValuePair = name: value: {{ inherit name value; }};
    optionalAttrs = c: s: if c then s else {{ }};
    fileset = {{ toSource = a: a; unions = l: l; }};
    nixosSystem = args: {{
      config = let r = modsys {{ modules = args.modules ++ [ {{ virtualisation.docker.package = "/stub/docker"; }} ]; inherit (args) specialArgs; pkgNames = {PKGS}; oracle = {oracle}; }}; in
        if r.errors == [ ] then r.config else throw (builtins.concatStringsSep "\n" r.errors);
      pkgs = "the host's pkgs";
    }};
  }};
  nixpkgs = {{ inherit lib; outPath = {stub}; legacyPackages = {{ }}; }};
  inputs = {STUB_INPUTS} // {{ inherit nixpkgs self; }};
  self = outputs // {{ outPath = "/stub/self"; }};
  outputs = flake.outputs inputs;
  raw = builtins.filter (n: n != "hestia") (builtins.attrNames outputs.images);
in builtins.listToAttrs (map (n: {{ name = n; value = {{
  image = outputs.images.${{n}}.makeDiskImage;
  system = outputs.nixosConfigurations.${{n}}.config;
}}; }}) raw)
"#,
        flake = nix_str(&flake_root.join("flake.nix").to_string_lossy()),
        stub = nix_str(&stub.to_string_lossy()),
        oracle = oracle(),
    );
    nix_eval(t.path(), &expr).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn x86_images_are_built_from_the_hosts_own_configuration() {
    let v = flake_images(&common::repo());
    let hosts: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(hosts, ["atlas", "hermes"]);
    for (host, mount) in [("atlas", "/export"), ("hermes", "/srv/appdata")] {
        let img = &v[host]["image"];
        let sys = &v[host]["system"];
        assert_eq!(img["format"], "raw", "{host}");
        assert_eq!(img["partitionTableType"], "efi", "{host}");
        assert_eq!(img["pkgs"], "the host's pkgs", "{host}");
        // The image's configuration is the deployed one: nothing dropped, nothing overridden, nothing added.
        let d = image_diff(sys, &img["config"]);
        assert!(d.is_empty(), "{host}:\n{}", d.join("\n"));
        let d = image_diff(&img["config"], sys);
        assert!(d.is_empty(), "{host}: the image adds\n{}", d.join("\n"));
        for part in ["fileSystems", "users", "services", "systemd", "networking"] {
            assert!(img["config"].get(part).is_some(), "{host}: {part}");
        }
        assert!(
            img["config"]["fileSystems"].get(mount).is_some(),
            "{host}: {mount}"
        );
        // make-disk-image's efi layout (ESP labelled ESP, root labelled nixos) is what hardware.nix mounts,
        // and no other file system is on the OS disk's partitions.
        let fs = img["config"]["fileSystems"].as_object().unwrap();
        assert_eq!(fs["/"]["device"], "/dev/disk/by-label/nixos", "{host}");
        assert_eq!(fs["/"]["fsType"], "ext4", "{host}");
        assert_eq!(fs["/boot"]["device"], "/dev/disk/by-label/ESP", "{host}");
        assert_eq!(fs["/boot"]["fsType"], "vfat", "{host}");
        for (m, f) in fs {
            if m != "/" && m != "/boot" {
                let dev = f["device"].as_str().unwrap_or_default();
                assert!(
                    !dev.ends_with("by-label/nixos") && !dev.ends_with("by-label/ESP"),
                    "{host}: {m} on the image's partition {dev}"
                );
            }
        }
    }
}
