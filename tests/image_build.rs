//! `labforge image build`: synthetic bases made with sfdisk + mkfs.vfat + mcopy, customised by labforge,
//! judged by fsck.fat -n, sfdisk --verify / --json, mdir / mtype, blkid, and `bmaptool copy` with our bmap.

#[path = "image_fixtures.rs"]
mod fixtures;
use fixtures::*;
use std::process::Command;

fn check_seed_files(img: &std::path::Path, offset: u64, host: &str) {
    let listing = mdir(img, offset);
    for (name, bytes) in seed_for(host) {
        assert!(
            listing.contains(&name),
            "mdir does not list {name}:\n{listing}"
        );
        assert_eq!(mtype(img, offset, &name), bytes, "mtype {name} differs");
    }
}

/// bmaptool (the upstream tool) accepts our block map and reproduces the image byte for byte.
fn bmaptool_reproduces(img: &std::path::Path, bmap: &std::path::Path) {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy.img");
    run(Command::new(oracle("bmaptool"))
        .arg("copy")
        .arg("--bmap")
        .arg(bmap)
        .arg(img)
        .arg(&copy));
    assert_eq!(
        sha256sum(&copy),
        sha256sum(img),
        "bmaptool copy did not reproduce the image"
    );
}

#[test]
fn pi_image_gets_seed_in_system_boot() {
    let t = tempfile::tempdir().unwrap();
    let base = pi_base(t.path());
    let base_sha = sha256sum(&base);
    declare(
        t.path(),
        "pi",
        &base,
        "raw",
        "aarch64",
        "system-boot",
        Some(&base_sha),
    );
    let out = t.path().join("out/iris.img");
    let b = build(t.path(), "pi", "iris", &base, &out).unwrap();

    // The base is untouched, the seed is in system-boot, the vendor's other files are still there.
    assert_eq!(sha256sum(&base), base_sha);
    let off = 2048 * 512;
    check_seed_files(&out, off, "iris");
    assert_eq!(mtype(&out, off, "config.txt"), b"[all]\narm_64bit=1\n");
    let fsck = fsck_fat(&out, 2048, 131072);
    assert!(
        fsck.contains("system-boot") || fsck.contains("files"),
        "{fsck}"
    );
    sfdisk_verify(&out);
    // The partition table did not change.
    assert_eq!(table_shape(&out), table_shape(&base));

    // Manifest: what sha256sum says, what was injected.
    let m = &b.manifest;
    assert_eq!(m.host, "iris");
    assert_eq!(m.base.as_ref().unwrap().sha256, base_sha);
    assert_eq!(m.image.sha256, sha256sum(&out));
    assert_eq!(m.image.size, std::fs::metadata(&out).unwrap().len());
    assert_eq!(m.seed.as_ref().unwrap().partition, 1);
    assert!(!m.seed.as_ref().unwrap().partition_added);
    let names: Vec<&str> = m
        .seed
        .as_ref()
        .unwrap()
        .files
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(names, ["meta-data", "network-config", "user-data"]);
    for f in &m.seed.as_ref().unwrap().files {
        let want = seed_for("iris")
            .into_iter()
            .find(|(n, _)| *n == f.name)
            .unwrap()
            .1;
        assert_eq!(f.sha256, labforge::io::sha256_hex(&want));
    }
    let on_disk: labforge::image::Manifest =
        serde_json::from_slice(&std::fs::read(&b.manifest_path).unwrap()).unwrap();
    assert_eq!(&on_disk, m);
    assert_eq!(m.bmap.sha256, sha256sum(&b.bmap));

    // Sparse: the bmap maps far less than the image.
    assert!(
        m.bmap.mapped_bytes < m.image.size / 4,
        "{} of {}",
        m.bmap.mapped_bytes,
        m.image.size
    );
    bmaptool_reproduces(&out, &b.bmap);
    // The seed goes into an existing partition of an MBR base, so the copy, the image hash and the block
    // map ran overlapped (the rest copied while the edited start was hashed): they equal one sequential
    // pass over the finished file.
    let (sha, size, map) =
        labforge::image::finalize(&std::fs::File::open(&out).unwrap(), false).unwrap();
    assert_eq!(
        (sha.as_str(), size),
        (m.image.sha256.as_str(), m.image.size)
    );
    assert_eq!(map.to_xml(), std::fs::read_to_string(&b.bmap).unwrap());

    // Reproducible: a second build is byte-identical (fixed FAT timestamps, derived ids).
    let out2 = t.path().join("out/iris2.img");
    let b2 = build(t.path(), "pi", "iris", &base, &out2).unwrap();
    assert_eq!(b2.manifest.image.sha256, m.image.sha256);
    assert_eq!(
        leftovers(&t.path().join("out"), ".labforge"),
        Vec::<String>::new()
    );
}

#[test]
fn gpt_image_gets_a_cidata_partition_in_free_space() {
    let t = tempfile::tempdir().unwrap();
    let base = gpt_base(t.path(), 8);
    declare(
        t.path(),
        "x86",
        &base,
        "raw",
        "x86_64",
        "cidata",
        Some(&sha256sum(&base)),
    );
    let out = t.path().join("platform.img");
    let b = build(t.path(), "x86", "platform", &base, &out).unwrap();
    assert_eq!(b.manifest.seed.as_ref().unwrap().grew_from, None);
    assert!(b.manifest.seed.as_ref().unwrap().partition_added);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 64 * MIB);

    sfdisk_verify(&out);
    let pt = sfdisk_json(&out);
    let parts = pt["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3, "{pt:#}");
    let c = parts
        .iter()
        .find(|p| p["name"] == "CIDATA")
        .expect("a CIDATA partition");
    assert_eq!(c["type"], "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7");
    let start = c["start"].as_u64().unwrap();
    let size = c["size"].as_u64().unwrap();
    assert_eq!(start % 2048, 0, "1 MiB aligned");
    // In the gap after root, before the end.
    let root_end = parts[1]["start"].as_u64().unwrap() + parts[1]["size"].as_u64().unwrap();
    assert!(start >= root_end && start + size <= pt["lastlba"].as_u64().unwrap() + 1);
    // The file system: fsck clean, labelled CIDATA for blkid (what cloud-init's NoCloud looks for).
    fsck_fat(&out, start, size);
    check_seed_files(&out, start * 512, "platform");
    let label = run(Command::new(oracle("blkid"))
        .args(["-p", "-o", "value", "-s", "LABEL", "-O"])
        .arg((start * 512).to_string())
        .arg(&out));
    assert_eq!(label.trim(), "CIDATA");
    // The ESP is untouched.
    assert_eq!(
        mtype(&out, 2048 * 512, "BOOTX64.EFI"),
        [0x4d, 0x5a, 1, 2, 3]
    );
    bmaptool_reproduces(&out, &b.bmap);
}

#[test]
fn full_gpt_image_grows_and_moves_the_backup_header() {
    let t = tempfile::tempdir().unwrap();
    let base = gpt_base(t.path(), 0);
    declare(
        t.path(),
        "x86",
        &base,
        "raw",
        "x86_64",
        "cidata",
        Some(&sha256sum(&base)),
    );
    let out = t.path().join("grown.img");
    let b = build(t.path(), "x86", "prometheus", &base, &out).unwrap();
    assert_eq!(b.manifest.seed.as_ref().unwrap().grew_from, Some(64 * MIB));
    let size = std::fs::metadata(&out).unwrap().len();
    assert!(size > 64 * MIB && size.is_multiple_of(MIB), "{size}");
    assert_eq!(b.manifest.image.size, size);
    // sfdisk checks both headers, both entry arrays, the protective MBR and the backup at the end.
    sfdisk_verify(&out);
    let pt = sfdisk_json(&out);
    assert_eq!(pt["lastlba"].as_u64().unwrap(), size / 512 - 34);
    let c = pt["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "CIDATA")
        .unwrap()
        .clone();
    let start = c["start"].as_u64().unwrap();
    fsck_fat(&out, start, c["size"].as_u64().unwrap());
    check_seed_files(&out, start * 512, "prometheus");
    bmaptool_reproduces(&out, &b.bmap);
}

#[test]
fn existing_cidata_is_rewritten_in_place() {
    let t = tempfile::tempdir().unwrap();
    let base = gpt_base(t.path(), 8);
    // Add a CIDATA FAT with stale seed files by hand (sfdisk + mkfs.vfat + mcopy).
    sfdisk(&base, "label: gpt\nstart=2048, size=16384, type=U, name=esp\nstart=18432, size=20480, type=L, name=root\nstart=40960, size=8192, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name=seed\n");
    mkfs_vfat(&base, 2048, 16384, "ESP", 16);
    mkfs_vfat(&base, 40960, 8192, "cidata", 12);
    mcopy_in(
        &base,
        40960 * 512,
        "user-data",
        b"#cloud-config\nhostname: stale\n",
    );
    declare(
        t.path(),
        "x86",
        &base,
        "raw",
        "x86_64",
        "cidata",
        Some(&sha256sum(&base)),
    );
    let out = t.path().join("h.img");
    let b = build(t.path(), "x86", "hermes", &base, &out).unwrap();
    assert!(!b.manifest.seed.as_ref().unwrap().partition_added);
    assert_eq!(b.manifest.seed.as_ref().unwrap().partition, 3);
    assert_eq!(table_shape(&out), table_shape(&base));
    check_seed_files(&out, 40960 * 512, "hermes");
    fsck_fat(&out, 40960, 8192);
}

#[test]
fn xz_and_zstd_bases_give_the_same_image_as_raw() {
    let t = tempfile::tempdir().unwrap();
    let base = pi_base(t.path());
    declare(
        t.path(),
        "raw",
        &base,
        "raw",
        "aarch64",
        "system-boot",
        Some(&sha256sum(&base)),
    );
    let want = build(t.path(), "raw", "iris", &base, &t.path().join("r.img")).unwrap();

    run(Command::new("xz").args(["-k", "-T1", "-3"]).arg(&base));
    let xz = base.with_extension("img.xz");
    declare(
        t.path(),
        "xz",
        &xz,
        "xz",
        "aarch64",
        "system-boot",
        Some(&sha256sum(&xz)),
    );
    let got = build(t.path(), "xz", "iris", &xz, &t.path().join("x.img")).unwrap();
    assert_eq!(got.manifest.image.sha256, want.manifest.image.sha256);
    assert_eq!(got.manifest.base.as_ref().unwrap().sha256, sha256sum(&xz));

    run(Command::new("zstd").args(["-q", "-3"]).arg(&base));
    let zst = base.with_extension("img.zst");
    declare(
        t.path(),
        "zst",
        &zst,
        "zst",
        "aarch64",
        "system-boot",
        Some(&sha256sum(&zst)),
    );
    let got = build(t.path(), "zst", "iris", &zst, &t.path().join("z.img")).unwrap();
    assert_eq!(got.manifest.image.sha256, want.manifest.image.sha256);
    // Decompressed output is sparse too.
    assert_eq!(
        got.manifest.bmap.mapped_bytes,
        want.manifest.bmap.mapped_bytes
    );
}

#[test]
fn sha256_mismatch_is_a_clear_error_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let base = pi_base(t.path());
    let wrong = "0".repeat(63) + "1";
    declare(
        t.path(),
        "pi",
        &base,
        "raw",
        "aarch64",
        "system-boot",
        Some(&wrong),
    );
    let outdir = t.path().join("out");
    let e = format!(
        "{:#}",
        build(t.path(), "pi", "iris", &base, &outdir.join("iris.img")).unwrap_err()
    );
    assert!(e.contains(&base.display().to_string()), "{e}");
    assert!(e.contains(&format!("expected {wrong}")), "{e}");
    assert!(e.contains(&format!("actual   {}", sha256sum(&base))), "{e}");
    assert!(
        std::fs::read_dir(&outdir).unwrap().next().is_none(),
        "something was written: {:?}",
        leftovers(&outdir, "")
    );

    // The same for a compressed base (hash of the compressed file).
    run(Command::new("zstd").args(["-q", "-1"]).arg(&base));
    let zst = base.with_extension("img.zst");
    declare(
        t.path(),
        "zst",
        &zst,
        "zst",
        "aarch64",
        "system-boot",
        Some(&wrong),
    );
    let e = format!(
        "{:#}",
        build(t.path(), "zst", "iris", &zst, &outdir.join("iris.img")).unwrap_err()
    );
    assert!(e.contains("does not match its pinned sha256"), "{e}");
    assert!(std::fs::read_dir(&outdir).unwrap().next().is_none());
}

#[test]
fn unpinned_and_unsuitable_bases_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let base = pi_base(t.path());
    declare(t.path(), "pi", &base, "raw", "aarch64", "system-boot", None);
    let e = format!(
        "{:#}",
        build(t.path(), "pi", "iris", &base, &t.path().join("o.img")).unwrap_err()
    );
    assert!(e.contains("not pinned") && e.contains("sha256"), "{e}");

    // A GPT image has no system-boot FAT.
    let gpt = gpt_base(t.path(), 8);
    declare(
        t.path(),
        "g",
        &gpt,
        "raw",
        "aarch64",
        "system-boot",
        Some(&sha256sum(&gpt)),
    );
    let e = format!(
        "{:#}",
        build(t.path(), "g", "iris", &gpt, &t.path().join("o.img")).unwrap_err()
    );
    assert!(
        e.contains("no FAT partition labelled system-boot") && e.contains("ESP"),
        "{e}"
    );

    // An MBR image without CIDATA: labforge adds CIDATA to GPT images only.
    declare(
        t.path(),
        "m",
        &base,
        "raw",
        "x86_64",
        "cidata",
        Some(&sha256sum(&base)),
    );
    let e = format!(
        "{:#}",
        build(t.path(), "m", "h", &base, &t.path().join("o.img")).unwrap_err()
    );
    assert!(e.contains("MBR") && e.contains("CIDATA"), "{e}");

    // A GPT with every entry used.
    let full = t.path().join("full.img");
    std::fs::File::create(&full)
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
    sfdisk(&full, "label: gpt\ntable-length: 4\nstart=2048, size=2048, type=L\nstart=4096, size=2048, type=L\nstart=6144, size=2048, type=L\nstart=8192, size=2048, type=L\n");
    declare(
        t.path(),
        "f",
        &full,
        "raw",
        "x86_64",
        "cidata",
        Some(&sha256sum(&full)),
    );
    let e = format!(
        "{:#}",
        build(t.path(), "f", "h", &full, &t.path().join("o.img")).unwrap_err()
    );
    assert!(e.contains("no free partition entry"), "{e}");

    // Not a disk image at all.
    let junk = t.path().join("junk.img");
    std::fs::write(&junk, vec![7u8; 4096]).unwrap();
    declare(
        t.path(),
        "j",
        &junk,
        "raw",
        "x86_64",
        "cidata",
        Some(&sha256sum(&junk)),
    );
    let e = format!(
        "{:#}",
        build(t.path(), "j", "h", &junk, &t.path().join("o.img")).unwrap_err()
    );
    assert!(e.contains("no partition table"), "{e}");
    assert!(!t.path().join("o.img").exists());
}

#[test]
fn cli_image_build_refuses_an_unpinned_declared_base() {
    // The example lab with the repository's image declarations (not pinned): a clear refusal, exit 2.
    let lab = example_lab();
    copy_dir(&repo().join("images"), &lab.path().join("images"));
    let o = labforge(lab.path(), &["image", "build", "iris"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("ubuntu-24.04-preinstalled-server-arm64-raspi") && err.contains("not pinned"),
        "{err}"
    );
    // A host that is not built from a base: clear message.
    let o = labforge(lab.path(), &["image", "build", "nosuchhost"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no host named"), "{}", stderr(&o));
}

#[test]
fn repository_image_declarations_parse() {
    for e in std::fs::read_dir(repo().join("images")).unwrap().flatten() {
        let name = e
            .file_name()
            .to_string_lossy()
            .trim_end_matches(".toml")
            .to_string();
        let l = labforge::image::decl::load(&repo(), &name).unwrap();
        assert!(l.decl.source.starts_with("https://") || l.decl.source.starts_with("out/cache/"));
    }
}

#[test]
fn the_oracles_catch_broken_images() {
    // Proof that the checks above can fail: damage a good image in the ways they look for.
    use std::os::unix::fs::FileExt;
    let t = tempfile::tempdir().unwrap();
    let base = gpt_base(t.path(), 0);
    declare(
        t.path(),
        "x86",
        &base,
        "raw",
        "x86_64",
        "cidata",
        Some(&sha256sum(&base)),
    );
    let out = t.path().join("g.img");
    let b = build(t.path(), "x86", "h", &base, &out).unwrap();
    let size = b.manifest.image.size;
    let pt = sfdisk_json(&out);
    let c = pt["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "CIDATA")
        .unwrap()
        .clone();
    let (start, sectors) = (c["start"].as_u64().unwrap(), c["size"].as_u64().unwrap());

    // 1. A damaged backup GPT header: sfdisk --verify must complain.
    let bad = t.path().join("bad-gpt.img");
    std::fs::copy(&out, &bad).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&bad).unwrap();
    f.write_all_at(&[0xff; 8], size - 512 + 32).unwrap();
    let o = Command::new(oracle("sfdisk"))
        .arg("--verify")
        .arg(&bad)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !o.status.success()
            || text.to_lowercase().contains("error")
            || text.to_lowercase().contains("corrupt")
            || text.to_lowercase().contains("warn"),
        "sfdisk accepted a broken backup GPT:\n{text}"
    );

    // 2. A FAT whose two copies disagree: fsck.fat -n must fail.
    let bad = t.path().join("bad-fat.img");
    std::fs::copy(&out, &bad).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&bad)
        .unwrap();
    let mut bs = [0u8; 512];
    f.read_at(&mut bs, start * 512).unwrap();
    let reserved = u16::from_le_bytes([bs[14], bs[15]]) as u64;
    f.write_all_at(&[0xff, 0xff, 0xff, 0xff], (start + reserved) * 512 + 6)
        .unwrap();
    let dd = tempfile::NamedTempFile::new().unwrap();
    run(Command::new("dd")
        .arg(format!("if={}", bad.display()))
        .arg(format!("of={}", dd.path().display()))
        .args(["bs=512", "status=none"])
        .arg(format!("skip={start}"))
        .arg(format!("count={sectors}")));
    let o = Command::new(oracle("fsck.fat"))
        .arg("-n")
        .arg(dd.path())
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "fsck.fat -n accepted a damaged FAT: {}",
        String::from_utf8_lossy(&o.stdout)
    );

    // 3. An image changed after its bmap was made: bmaptool copy must refuse.
    let bad = t.path().join("bad-data.img");
    std::fs::copy(&out, &bad).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&bad).unwrap();
    f.write_all_at(&[0x5a], 18432 * 512 + 100).unwrap();
    let o = Command::new(oracle("bmaptool"))
        .arg("copy")
        .arg("--bmap")
        .arg(&b.bmap)
        .arg(&bad)
        .arg(t.path().join("copy.img"))
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "bmaptool copy accepted an image that does not match its bmap"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("checksum mismatch"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn cli_image_build_for_an_example_lab_host_with_a_seed_dir() {
    let lab = example_lab();
    let base = pi_base(lab.path());
    declare(
        lab.path(),
        "ubuntu-24.04-preinstalled-server-arm64-raspi",
        &base,
        "raw",
        "aarch64",
        "system-boot",
        Some(&sha256sum(&base)),
    );
    let seed = lab.path().join("seed");
    std::fs::create_dir(&seed).unwrap();
    for (n, b) in seed_for("iris") {
        std::fs::write(seed.join(n), b).unwrap();
    }
    let o = labforge(
        lab.path(),
        &[
            "image",
            "build",
            "iris",
            "--seed-dir",
            seed.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m: labforge::image::Manifest = serde_json::from_str(&stdout(&o)).unwrap();
    let img = lab.path().join("out/images/iris.img");
    assert_eq!(m.host, "iris");
    assert_eq!(m.image.sha256, sha256sum(&img));
    assert!(!m.spec_revision.is_empty());
    check_seed_files(&img, 2048 * 512, "iris");
    assert!(lab.path().join("out/images/iris.img.bmap").is_file());
    assert!(lab
        .path()
        .join("out/images/iris.img.manifest.json")
        .is_file());

    // The wrong kind of base for the board: a Pi host with a cidata base.
    declare(
        lab.path(),
        "ubuntu-24.04-preinstalled-server-arm64-raspi",
        &base,
        "raw",
        "aarch64",
        "cidata",
        Some(&sha256sum(&base)),
    );
    let o = labforge(
        lab.path(),
        &[
            "image",
            "build",
            "iris",
            "--seed-dir",
            seed.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("needs its seed in `system-boot`"),
        "{}",
        stderr(&o)
    );
}

/// The verified-base cache (out/cache/verified-bases): a settled, unchanged base is confirmed without
/// hashing and gives the same image; a changed file (even with its size and mtime put back) is hashed
/// again; an entry cannot make a base pass a pin it does not match.
#[test]
fn verified_base_cache_confirms_only_the_unchanged_file_and_its_own_hash() {
    use labforge::image::BaseCheck;
    use std::os::unix::fs::FileExt;
    let t = tempfile::tempdir().unwrap();
    let base = pi_base(t.path());
    let sha = sha256sum(&base);
    declare(
        t.path(),
        "pi",
        &base,
        "raw",
        "aarch64",
        "system-boot",
        Some(&sha),
    );
    let out = t.path().join("out/iris.img");
    // (A base changed within the last seconds is hashed and not cached: the unit test
    // image::cache::tests::settled_needs_both_times_old_enough covers the rule without a clock.)
    let settle = || {
        std::thread::sleep(labforge::image::cache::SETTLE + std::time::Duration::from_millis(300))
    };
    settle();
    let b1 = build(t.path(), "pi", "iris", &base, &out).unwrap();
    assert_eq!(b1.base_check, BaseCheck::Hashed);
    assert!(
        t.path()
            .join("out/cache/verified-bases")
            .read_dir()
            .unwrap()
            .count()
            == 1
    );
    let b2 = build(t.path(), "pi", "iris", &base, &out).unwrap();
    assert_eq!(b2.base_check, BaseCheck::Cached);
    // Same image, byte for byte (sha256sum is the oracle), same manifest.
    assert_eq!(b2.manifest, b1.manifest);
    assert_eq!(sha256sum(&out), b1.manifest.image.sha256);
    check_seed_files(&out, 2048 * 512, "iris");

    // Change one byte, then put size and mtime back: the ctime still moved, so it is hashed and refused.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(&base)
        .unwrap();
    let mtime = f.metadata().unwrap().modified().unwrap();
    let off = 150 * MIB + 7;
    let mut old = [0u8; 1];
    f.read_at(&mut old, off).unwrap();
    f.write_all_at(&[old[0] ^ 0xff], off).unwrap();
    f.set_modified(mtime).unwrap();
    f.sync_all().unwrap();
    let e = build(t.path(), "pi", "iris", &base, &out).unwrap_err();
    assert!(
        format!("{e:#}").contains("does not match its pinned sha256"),
        "{e:#}"
    );
    // Put the byte back: it matches the pin again, and is hashed (the old entry no longer applies).
    f.write_all_at(&old, off).unwrap();
    f.set_modified(mtime).unwrap();
    f.sync_all().unwrap();
    assert_eq!(sha256sum(&base), sha);
    assert_eq!(
        build(t.path(), "pi", "iris", &base, &out)
            .unwrap()
            .base_check,
        BaseCheck::Hashed
    );

    // An entry for this very file cannot make it pass another pin.
    settle();
    build(t.path(), "pi", "iris", &base, &out).unwrap();
    assert_eq!(
        build(t.path(), "pi", "iris", &base, &out)
            .unwrap()
            .base_check,
        BaseCheck::Cached
    );
    let wrong = "ab".repeat(32);
    declare(
        t.path(),
        "pi",
        &base,
        "raw",
        "aarch64",
        "system-boot",
        Some(&wrong),
    );
    let e = build(t.path(), "pi", "iris", &base, &out).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("does not match its pinned sha256") && msg.contains(&sha),
        "{msg}"
    );
}
