//! Synthetic base images for the image and flash tests, built with the real tools (sfdisk, mkfs.vfat,
//! mcopy), and the oracle wrappers. Included by tests/image_build.rs and tests/flash.rs via `#[path]`.
#![allow(dead_code)]

#[path = "common/mod.rs"]
mod common;
pub use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

pub const MIB: u64 = 1 << 20;

pub fn run(cmd: &mut Command) -> String {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn sfdisk(img: &Path, script: &str) {
    use std::io::Write;
    let mut c = Command::new(oracle("sfdisk"))
        .arg("--no-reread")
        .arg("--no-tell-kernel")
        .arg("-q")
        .arg(img)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "sfdisk: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// mkfs.vfat on a byte range of an image (`--offset` in sectors, size in KiB blocks).
pub fn mkfs_vfat(img: &Path, start_lba: u64, sectors: u64, label: &str, fat: u8) {
    let mut c = Command::new(oracle("mkfs.vfat"));
    if fat == 16 {
        c.args(["-s", "1"]);
    }
    run(c
        .args(["-F", &fat.to_string(), "-n", label, "-i", "12345678"])
        .arg("--offset")
        .arg(start_lba.to_string())
        .arg(img)
        .arg((sectors / 2).to_string()));
}

pub fn mtools_env(c: &mut Command) -> &mut Command {
    c.env("MTOOLS_SKIP_CHECK", "1").env("MTOOLS_NO_VFAT", "0")
}

/// Copy `bytes` as `name` into the FAT at byte `offset` of `img` with mcopy.
pub fn mcopy_in(img: &Path, offset: u64, name: &str, bytes: &[u8]) {
    let t = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(t.path(), bytes).unwrap();
    run(mtools_env(&mut Command::new(oracle("mcopy")))
        .arg("-o")
        .arg("-i")
        .arg(format!("{}@@{offset}", img.display()))
        .arg(t.path())
        .arg(format!("::{name}")));
}

/// `mtype` a file out of the FAT at byte `offset`.
pub fn mtype(img: &Path, offset: u64, name: &str) -> Vec<u8> {
    let o = mtools_env(&mut Command::new(oracle("mtype")))
        .arg("-i")
        .arg(format!("{}@@{offset}", img.display()))
        .arg(format!("::{name}"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mtype {name}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

pub fn mdir(img: &Path, offset: u64) -> String {
    run(mtools_env(&mut Command::new(oracle("mdir")))
        .arg("-i")
        .arg(format!("{}@@{offset}", img.display()))
        .arg("::"))
}

/// `fsck.fat -n` on one partition (extracted, since fsck.fat has no offset option). Returns the output.
pub fn fsck_fat(img: &Path, start_lba: u64, sectors: u64) -> String {
    let t = tempfile::NamedTempFile::new().unwrap();
    run(Command::new("dd")
        .arg(format!("if={}", img.display()))
        .arg(format!("of={}", t.path().display()))
        .args(["bs=512", "status=none", "conv=sparse"])
        .arg(format!("skip={start_lba}"))
        .arg(format!("count={sectors}")));
    let o = Command::new(oracle("fsck.fat"))
        .arg("-n")
        .arg(t.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "fsck.fat -n found problems:\n{text}");
    text
}

pub fn sha256sum(p: &Path) -> String {
    run(Command::new("sha256sum").arg(p))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Put recognisable non-zero data at `offset` (file-system content stand-in).
pub fn scribble(img: &Path, offset: u64, len: usize, seed: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect();
    f.write_all_at(&data, offset).unwrap();
}

fn sparse_file(p: &Path, size: u64) {
    let f = std::fs::File::create(p).unwrap();
    f.set_len(size).unwrap();
}

/// A Raspberry-Pi-like image: MBR, p1 FAT32 `system-boot` (64 MiB, with the files Ubuntu ships there),
/// p2 Linux (the rest, some data scattered in it).
pub fn pi_base(dir: &Path) -> PathBuf {
    let img = dir.join("pi-base.img");
    sparse_file(&img, 160 * MIB);
    sfdisk(
        &img,
        "label: dos\nstart=2048, size=131072, type=c, bootable\nstart=133120, type=83\n",
    );
    mkfs_vfat(&img, 2048, 131072, "system-boot", 32);
    let off = 2048 * 512;
    mcopy_in(&img, off, "config.txt", b"[all]\narm_64bit=1\n");
    mcopy_in(
        &img,
        off,
        "user-data",
        b"#cloud-config\n# the vendor default, to be replaced\n",
    );
    mcopy_in(&img, off, "meta-data", b"");
    scribble(&img, 133120 * 512, 300_000, 7);
    scribble(&img, 140 * MIB + 12345, 50_000, 9);
    img
}

/// An x86-like GPT image: p1 ESP (FAT16 8 MiB), p2 Linux root. `free_mib` MiB left free at the end
/// (0 = the root partition takes everything: adding CIDATA must grow the image).
pub fn gpt_base(dir: &Path, free_mib: u64) -> PathBuf {
    let img = dir.join(format!("gpt-base-{free_mib}.img"));
    sparse_file(&img, 64 * MIB);
    let root = if free_mib == 0 {
        "start=18432, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n".to_string()
    } else {
        // 64 MiB disk, 2048 first, 33 sectors of backup GPT: leave free_mib MiB before the end.
        let size = (64 - 9 - free_mib) * 2048 - 34;
        format!("start=18432, size={size}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n")
    };
    sfdisk(
        &img,
        &format!("label: gpt\nstart=2048, size=16384, type=U, name=esp\n{root}"),
    );
    mkfs_vfat(&img, 2048, 16384, "ESP", 16);
    mcopy_in(&img, 2048 * 512, "BOOTX64.EFI", &[0x4d, 0x5a, 1, 2, 3]);
    scribble(&img, 18432 * 512, 200_000, 3);
    img
}

/// Declare a base image in `root/images/<name>.toml`, pinned to the sha256 `sha256sum` computes (or not).
pub fn declare(
    root: &Path,
    name: &str,
    file: &Path,
    format: &str,
    arch: &str,
    seed: &str,
    pin: Option<&str>,
) {
    std::fs::create_dir_all(root.join("images")).unwrap();
    let sha = match pin {
        Some(h) => format!("sha256 = \"{h}\"\n"),
        None => String::new(),
    };
    std::fs::write(
        root.join("images").join(format!("{name}.toml")),
        format!(
            "description = \"test base\"\nsource = \"{}\"\n{sha}format = \"{format}\"\narch = \"{arch}\"\nseed = \"{seed}\"\n",
            file.display()
        ),
    )
    .unwrap();
}

pub fn seed_for(host: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "meta-data".into(),
            format!("instance-id: {host}-1\nlocal-hostname: {host}\n").into_bytes(),
        ),
        (
            "network-config".into(),
            b"version: 2\nethernets:\n  eth0:\n    dhcp4: true\n".to_vec(),
        ),
        (
            "user-data".into(),
            format!("#cloud-config\nhostname: {host}\nssh_pwauth: false\n").into_bytes(),
        ),
    ]
}

/// Build with the library API.
pub fn build(
    root: &Path,
    name: &str,
    host: &str,
    base_path: &Path,
    out: &Path,
) -> anyhow::Result<labforge::image::Built> {
    let decl = labforge::image::decl::load(root, name)?;
    labforge::image::build(&labforge::image::BuildInput {
        host,
        spec_revision: "test-revision",
        base: &decl,
        base_path: base_path.to_path_buf(),
        seed: seed_for(host),
        out: out.to_path_buf(),
        progress: false,
    })
}

/// `sfdisk --json` of an image: the partition table object.
pub fn sfdisk_json(img: &Path) -> serde_json::Value {
    let out = run(Command::new(oracle("sfdisk")).arg("--json").arg(img));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["partitiontable"].clone()
}

/// The partition table without the file-name-dependent fields (device, node).
pub fn table_shape(img: &Path) -> serde_json::Value {
    let mut v = sfdisk_json(img);
    v.as_object_mut().unwrap().remove("device");
    for p in v["partitions"].as_array_mut().unwrap() {
        p.as_object_mut().unwrap().remove("node");
    }
    v
}

pub fn sfdisk_verify(img: &Path) -> String {
    let o = Command::new(oracle("sfdisk"))
        .arg("--verify")
        .arg(img)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "sfdisk --verify failed:\n{text}");
    assert!(
        !text.to_lowercase().contains("error:") && !text.to_lowercase().contains("warning"),
        "sfdisk --verify complained:\n{text}"
    );
    text
}

/// Files in a directory whose name starts with `prefix` (temporary leftovers).
pub fn leftovers(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}
