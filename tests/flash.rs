//! `labforge flash`: to a file target (with stale data on it), to loop devices where the machine allows,
//! read-back catching a flipped bit, interruption and failures leaving the first MiB zeroed, refusals.

#[path = "image_fixtures.rs"]
mod fixtures;
use fixtures::*;
use labforge::flash::{flash_with, Error, Options};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

/// A built Pi image (160 MiB, sparse) with its bmap and manifest, in `dir`.
fn image(dir: &Path) -> PathBuf {
    let base = pi_base(dir);
    declare(
        dir,
        "pi",
        &base,
        "raw",
        "aarch64",
        "system-boot",
        Some(&sha256sum(&base)),
    );
    let out = dir.join("iris.img");
    build(dir, "pi", "iris", &base, &out).unwrap();
    out
}

fn opts(img: &Path, target: &Path) -> Options<'static> {
    Options {
        image: img.to_path_buf(),
        bmap: None,
        target: target.to_path_buf(),
        yes: true,
        allow_file: true,
        progress: false,
        after_write: None,
    }
}

fn first_mib_is_zero(p: &Path) -> bool {
    let f = std::fs::File::open(p).unwrap();
    let mut b = vec![0u8; MIB as usize];
    let n = f.read_at(&mut b, 0).unwrap();
    b[..n].iter().all(|&x| x == 0)
}

/// A mapped offset beyond the first MiB (in the Pi image's root partition data).
const MAPPED: u64 = 133120 * 512 + 1000;
/// An unmapped offset (a hole in the image).
const UNMAPPED: u64 = 100 * MIB + 4096;

#[test]
fn flash_to_a_reused_file_reproduces_the_image_exactly() {
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path());
    // The target held something else: non-zero garbage everywhere, and longer than the image.
    let target = t.path().join("disk.raw");
    std::fs::write(&target, vec![0xa5u8; 200 * MIB as usize]).unwrap();
    let o = labforge(
        t.path(),
        &[
            "flash",
            img.to_str().unwrap(),
            "--to",
            target.to_str().unwrap(),
            "--allow-file",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("verified"), "{}", stdout(&o));
    // Byte for byte (sha256sum + cmp): no stale 0xa5 survives where the image has zeros.
    assert_eq!(
        std::fs::metadata(&target).unwrap().len(),
        std::fs::metadata(&img).unwrap().len()
    );
    assert_eq!(sha256sum(&target), sha256sum(&img));
    run(Command::new("cmp").arg(&img).arg(&target));
    // And the seed is readable on the target with mtools.
    assert_eq!(
        mtype(&target, 2048 * 512, "user-data"),
        seed_for("iris")[2].1
    );

    // A regular file needs --allow-file.
    let o = labforge(
        t.path(),
        &[
            "flash",
            img.to_str().unwrap(),
            "--to",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--allow-file"), "{}", stderr(&o));
    // A character device is not a disk.
    let o = labforge(
        t.path(),
        &["flash", img.to_str().unwrap(), "--to", "/dev/null", "--yes"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a block device"), "{}", stderr(&o));
}

#[test]
fn a_bit_flipped_after_the_write_is_caught_by_read_back() {
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path());
    for (what, off) in [("mapped", MAPPED), ("unmapped", UNMAPPED)] {
        let target = t.path().join(format!("flip-{what}.raw"));
        let mut o = opts(&img, &target);
        // Flip once, when the span holding `off` has been written (its O_DIRECT write completed) and is
        // about to be read back (on a file target mapped spans are verified while later ones are still
        // being written, before the final fsync). The flip goes through the page cache and is synced, like
        // a medium that changed under us; the O_DIRECT read-back sees it and the error blames the target.
        let mut flipped = false;
        o.after_write = Some(Box::new(move |p: &Path, a: u64, b: u64| {
            if flipped || off < a || off >= b {
                return;
            }
            flipped = true;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .unwrap();
            let mut b = [0u8; 1];
            f.read_at(&mut b, off).unwrap();
            b[0] ^= 0x10;
            f.write_all_at(&b, off).unwrap();
            f.sync_all().unwrap();
        }));
        let e = flash_with(o, &AtomicBool::new(false)).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::Failed(_)), "{what}: {msg}");
        assert!(msg.contains("read-back mismatch"), "{what}: {msg}");
        if what == "unmapped" {
            assert!(msg.contains(&format!("byte {off} should be zero")), "{msg}");
        }
        assert!(
            first_mib_is_zero(&target),
            "{what}: the first MiB was written after a failed verify"
        );
    }
}

/// The extent-map shortcut for zeros on a file target: holes are proven without reading them, but any data
/// in an unmapped range (written into it after the write phase, as a file system that cannot punch holes
/// or a stray writer would leave it) is found by SEEK_DATA and read: zeros pass (and are not counted as
/// holes), a non-zero byte is reported with its offset.
#[test]
fn unmapped_ranges_of_a_file_target_are_proven_by_extents_and_data_there_is_read() {
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path());
    let size = std::fs::metadata(&img).unwrap().len();
    let m = labforge::flash::load_bmap(&img, None).unwrap();
    let unmapped: u64 = m
        .unmapped()
        .iter()
        .map(|&(a, b)| b.saturating_sub(a.max(MIB)))
        .sum();
    assert!(unmapped > 64 * MIB, "the fixture should be mostly holes");

    // Clean run: every unmapped byte after the first MiB is a hole on the target, proven from the extent map.
    let target = t.path().join("holes.raw");
    let rep = flash_with(opts(&img, &target), &AtomicBool::new(false)).unwrap();
    assert_eq!(rep.verified, size);
    assert_eq!(rep.holes_proven, unmapped, "{rep:?}");
    run(Command::new("cmp").arg(&img).arg(&target));

    // Zeros written as data (not holes) into an unmapped range: read back, found zero, still passes, and
    // those bytes are not counted as holes.
    let target = t.path().join("zero-data.raw");
    let mut o = opts(&img, &target);
    let mut done = false;
    o.after_write = Some(Box::new(move |p: &Path, a: u64, b: u64| {
        if done || UNMAPPED < a || UNMAPPED >= b {
            return;
        }
        done = true;
        let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        f.write_all_at(&vec![0u8; 8192], UNMAPPED - 4096).unwrap();
        f.sync_all().unwrap();
    }));
    let rep = flash_with(o, &AtomicBool::new(false)).unwrap();
    assert!(
        rep.holes_proven <= unmapped - 8192,
        "written zeros must be read, not assumed: {rep:?}"
    );
    run(Command::new("cmp").arg(&img).arg(&target));

    // Non-zero data far into an unmapped range, at its very last byte before a mapped range or the end:
    // caught with the exact offset.
    let (ua, ub) = *m.unmapped().last().unwrap();
    assert!(ub - ua > MIB);
    let off = ub - 1;
    let target = t.path().join("tail.raw");
    let mut o = opts(&img, &target);
    let mut done = false;
    o.after_write = Some(Box::new(move |p: &Path, a: u64, b: u64| {
        if done || off < a || off >= b {
            return;
        }
        done = true;
        let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        f.write_all_at(&[0x01], off).unwrap();
        f.sync_all().unwrap();
    }));
    let e = flash_with(o, &AtomicBool::new(false)).unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("byte {off} should be zero")),
        "{e}"
    );
    assert!(first_mib_is_zero(&target));
}

#[test]
fn interruption_and_a_changed_image_leave_the_target_unbootable() {
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path());
    // Interrupted (the flag Ctrl-C sets) between write and verify.
    let target = t.path().join("int.raw");
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let mut o = opts(&img, &target);
    let s2 = stop.clone();
    o.after_write = Some(Box::new(move |_, _, _| s2.store(true, Ordering::SeqCst)));
    let e = flash_with(o, &stop).unwrap_err();
    assert!(matches!(e, Error::Interrupted), "{e}");
    assert!(first_mib_is_zero(&target));

    // The image changed after it was built. The image is not hashed as it is written (the read-back is
    // checked against the block map's range digests): the changed range fails the read-back, and the
    // error blames the image, not the target. Both in a range after the first MiB and in the boot
    // sector's range inside it (checked against the block map before the first MiB is written).
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    for (what, off) in [("after the first MiB", MAPPED), ("boot code", 0x10)] {
        std::fs::write(&target, vec![0x77u8; 4 * MIB as usize]).unwrap();
        let mut old = [0u8; 1];
        f.read_at(&mut old, off).unwrap();
        f.write_all_at(&[old[0] ^ 0x42], off).unwrap();
        let e = flash_with(opts(&img, &target), &AtomicBool::new(false)).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::Failed(_)), "{what}: {msg}");
        assert!(
            msg.contains("does not match its block map"),
            "{what}: {msg}"
        );
        assert!(!msg.contains("read-back mismatch"), "{what}: {msg}");
        assert!(
            first_mib_is_zero(&target),
            "{what}: the old boot sector must be gone and the changed one never written"
        );
        f.write_all_at(&old, off).unwrap();
    }
    // Restored, it flashes again.
    flash_with(opts(&img, &target), &AtomicBool::new(false)).unwrap();
    f.write_all_at(&[0x42], MAPPED).unwrap();

    // The CLI exits 1 for a failure.
    let o = labforge(
        t.path(),
        &[
            "flash",
            img.to_str().unwrap(),
            "--to",
            target.to_str().unwrap(),
            "--allow-file",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("will not boot"), "{}", stderr(&o));
}

#[test]
fn a_bmap_from_another_image_is_refused_before_writing() {
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path());
    let target = t.path().join("t.raw");
    std::fs::write(&target, b"keep me").unwrap();
    // Edit the bmap: its own checksum no longer matches.
    let bp = labforge::image::bmap_path(&img);
    let text =
        std::fs::read_to_string(&bp)
            .unwrap()
            .replacen("<BlockSize> 4096", "<BlockSize> 8192", 1);
    std::fs::write(&bp, text).unwrap();
    let e = flash_with(opts(&img, &target), &AtomicBool::new(false)).unwrap_err();
    assert!(
        matches!(e, Error::Refused(_)) && e.to_string().contains("checksum"),
        "{e}"
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
}

// ---- loop devices: the real block-device path (skipped, with the reason, where losetup is not allowed) ----

struct Loop(String);
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new(oracle("losetup"))
            .arg("-d")
            .arg(&self.0)
            .status();
    }
}

fn attach(file: &Path, partscan: bool) -> Result<Loop, String> {
    let mut c = Command::new(oracle("losetup"));
    c.arg("--find").arg("--show");
    if partscan {
        c.arg("--partscan");
    }
    let o = c.arg(file).output().map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).trim().to_string());
    }
    Ok(Loop(String::from_utf8_lossy(&o.stdout).trim().to_string()))
}

fn sparse(p: &Path, size: u64) {
    std::fs::File::create(p).unwrap().set_len(size).unwrap();
}

#[test]
fn flash_to_loop_devices_and_refusals() {
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path());
    let size = std::fs::metadata(&img).unwrap().len();

    let backing = t.path().join("loop-big.raw");
    std::fs::write(&backing, vec![0x3cu8; (size + 8 * MIB) as usize]).unwrap();
    let dev = match attach(&backing, false) {
        Ok(d) => d,
        Err(why) => {
            println!(
                "SKIPPED flash_to_loop_devices_and_refusals: losetup is not permitted here: {why}"
            );
            return;
        }
    };
    // Whole device, not mounted, large enough: written and verified with O_DIRECT.
    let o = labforge(
        t.path(),
        &[
            "flash",
            img.to_str().unwrap(),
            "--to",
            &dev.0,
            "--yes",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rep: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(rep["direct"], true);
    assert_eq!(rep["verified"].as_u64().unwrap(), size);
    // The device's first `size` bytes are the image; the stale tail MiB (old backup GPT spot) is zeroed.
    run(Command::new("cmp")
        .arg("-n")
        .arg(size.to_string())
        .arg(&img)
        .arg(&dev.0));
    let f = std::fs::File::open(&backing).unwrap();
    let mut tail = vec![0u8; MIB as usize];
    f.read_at(&mut tail, size + 7 * MIB).unwrap();
    assert!(
        tail.iter().all(|&b| b == 0),
        "the device's last MiB should be zeroed"
    );
    // Without --yes and without a terminal: refused.
    let o = labforge(t.path(), &["flash", img.to_str().unwrap(), "--to", &dev.0]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--yes"), "{}", stderr(&o));
    drop(dev);

    // Too small: refused, naming the device, what it is and its size.
    let small = t.path().join("loop-small.raw");
    sparse(&small, size - 8 * MIB);
    let dev = attach(&small, false).unwrap();
    let o = labforge(
        t.path(),
        &["flash", img.to_str().unwrap(), "--to", &dev.0, "--yes"],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("too small")
            && err.contains(&dev.0)
            && err.contains("loop device backed by")
            && err.contains("MiB"),
        "{err}"
    );
    drop(dev);

    // A partition is not a whole disk; a mounted device is refused.
    let parted = t.path().join("loop-parted.raw");
    std::fs::copy(&img, &parted).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&parted)
        .unwrap()
        .set_len(size + 8 * MIB)
        .unwrap();
    let dev = attach(&parted, true).unwrap();
    let mut p1 = format!("{}p1", dev.0);
    let name = dev.0.trim_start_matches("/dev/").to_string();
    for _ in 0..50 {
        if Path::new(&p1).exists() {
            break;
        }
        // Containers without udev: the kernel knows the partition (sysfs) but nobody made the node.
        if let Ok(mm) = std::fs::read_to_string(format!("/sys/block/{name}/{name}p1/dev")) {
            let node = t.path().join(format!("{name}p1"));
            let (ma, mi) = mm.trim().split_once(':').unwrap();
            if Command::new("mknod")
                .arg(&node)
                .arg("b")
                .arg(ma)
                .arg(mi)
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
            {
                p1 = node.display().to_string();
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if Path::new(&p1).exists() {
        let o = labforge(
            t.path(),
            &["flash", img.to_str().unwrap(), "--to", &p1, "--yes"],
        );
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains("is a partition"), "{}", stderr(&o));
        let mnt = tempfile::tempdir().unwrap();
        let m = Command::new("mount")
            .args(["-o", "ro"])
            .arg(&p1)
            .arg(mnt.path())
            .output()
            .unwrap();
        if m.status.success() {
            let o = labforge(
                t.path(),
                &["flash", img.to_str().unwrap(), "--to", &dev.0, "--yes"],
            );
            let _ = Command::new("umount").arg(mnt.path()).status();
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(2), "{err}");
            assert!(
                err.contains("is mounted") && err.contains(&mnt.path().display().to_string()),
                "{err}"
            );
        } else {
            println!(
                "SKIPPED the mounted-device refusal: mount is not permitted here: {}",
                String::from_utf8_lossy(&m.stderr).trim()
            );
        }
    } else {
        println!("SKIPPED the partition/mounted refusals: the kernel did not create {p1}");
    }
    drop(dev);

    // A whole device with a mounted file system on it (no partition table needed): refused.
    let fsfile = t.path().join("loop-fs.raw");
    sparse(&fsfile, size + 8 * MIB);
    run(Command::new(oracle("mkfs.ext4"))
        .args(["-q", "-F", "-L", "MOUNTED"])
        .arg(&fsfile));
    let dev = attach(&fsfile, false).unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let m = Command::new("mount")
        .args(["-o", "ro"])
        .arg(&dev.0)
        .arg(mnt.path())
        .output()
        .unwrap();
    if m.status.success() {
        let o = labforge(
            t.path(),
            &["flash", img.to_str().unwrap(), "--to", &dev.0, "--yes"],
        );
        let _ = Command::new("umount").arg(mnt.path()).status();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains("is mounted")
                && err.contains(&mnt.path().display().to_string())
                && err.contains(&dev.0),
            "{err}"
        );
    } else {
        println!(
            "SKIPPED the mounted-device refusal: mount is not permitted here: {}",
            String::from_utf8_lossy(&m.stderr).trim()
        );
    }
    drop(dev);
}

#[test]
fn the_running_system_is_refused() {
    // Whatever holds / on this machine must be refused (when it is a block device we can see).
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = mi
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .unwrap();
    let src = root
        .split(" - ")
        .nth(1)
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .to_string();
    if !src.starts_with("/dev/") || !Path::new(&src).exists() {
        println!("SKIPPED the_running_system_is_refused: / is mounted from `{src}`, not a visible block device");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path());
    let o = labforge(
        t.path(),
        &["flash", img.to_str().unwrap(), "--to", &src, "--yes"],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("running system")
            || err.contains("is mounted")
            || err.contains("is a partition"),
        "{err}"
    );
}
