//! End to end, issue 8 (aarch64): ceres (the example lab's disposable Debian 12 Raspberry Pi 4 node) built
//! from Debian arm64 packages with mmdebstrap on this x86_64 machine (the maintainer scripts run under
//! binfmt_misc + qemu-user), then its root file system booted under `qemu-system-aarch64 -M virt` (TCG,
//! Cortex-A72) with the kernel, initrd and cmdline.txt taken from the image's own firmware partition, and
//! `labforge rebuild`'s SSH (pinned host key), deploy and verify phases run against it.
//!
//! Oracles: sfdisk (the MBR layout), mdir/mtype/minfo and fsck.fat (the firmware FAT and its files), blkid
//! (the label cloud-init's NoCloud looks for), Debian's `cloud-init schema` (the user-data inside the image),
//! e2fsck + debugfs (the ext4 root: no host keys, empty machine-id, arm64 packages installed), the booted
//! guest (kernel → initrd → root by PARTUUID → cloud-init seed from the firmware FAT → sshd with the pinned
//! key; `uname -m`, findmnt and `cloud-init status --long` inside it), and labforge verify's checks.
//!
//! Not provable here: the Pi's own boot path (the VideoCore firmware reading config.txt, start4.elf and the
//! device tree): `-M virt` loads the kernel directly. The test proves config.txt names a kernel and initrd
//! that exist and boot, and that cmdline.txt's root= finds the root file system.
//!
//! The root file system cache is shared through `LABFORGE_CACHE` (target/labforge-cache): a second run
//! does not run mmdebstrap again.
mod common;
mod e2e_lab;

use common::{oracle, stderr};
use e2e_lab::Lab;
use std::path::Path;
use std::process::Command;

fn tool(bin: &str, args: &[&str]) -> String {
    let o = Command::new(oracle(bin)).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{bin} {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The bytes `[offset, offset+len)` of `img` as a file of their own (for fsck.fat and blkid, which take
/// no offset).
fn extract(img: &Path, offset: u64, len: u64, to: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(img).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut out = std::fs::File::create(to).unwrap();
    std::io::copy(&mut f.take(len), &mut out).unwrap();
}

/// Judge the built image with the upstream tools; returns the MBR disk identifier.
fn check_image(img: &Path, lab: &Lab, manifest: &serde_json::Value) -> String {
    let o = Command::new(oracle("sfdisk"))
        .arg("-J")
        .arg(img)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let pt = &t["partitiontable"];
    assert_eq!(pt["label"], "dos", "{t}");
    let parts = pt["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{t}");
    assert_eq!(
        parts[0]["type"], "c",
        "firmware partition: FAT32 (LBA)\n{t}"
    );
    assert_eq!(parts[1]["type"], "83", "{t}");
    let disk_id = pt["id"]
        .as_str()
        .unwrap()
        .trim_start_matches("0x")
        .to_string();
    let root_partuuid = format!("{disk_id}-02");
    assert_eq!(
        manifest["build"]["inputs"]["root-partuuid"], root_partuuid,
        "{manifest}"
    );
    let off = |i: usize| parts[i]["start"].as_u64().unwrap() * 512;
    let len = |i: usize| parts[i]["size"].as_u64().unwrap() * 512;

    // The firmware FAT: what the Pi firmware reads, and the seed.
    let fw = format!("{}@@{}", img.display(), off(0));
    let listing = tool("mdir", &["-i", &fw, "-b", "::"]);
    let config = tool("mtype", &["-i", &fw, "::/config.txt"]);
    let kernel = config
        .lines()
        .find_map(|l| l.strip_prefix("kernel="))
        .expect("config.txt names the kernel")
        .trim()
        .to_string();
    let initrd = config
        .lines()
        .find_map(|l| l.strip_prefix("initramfs "))
        .and_then(|r| r.split_whitespace().next())
        .expect("config.txt names the initramfs")
        .to_string();
    assert!(config.contains("arm_64bit=1"), "{config}");
    for f in [
        "config.txt",
        "cmdline.txt",
        "start4.elf",
        "fixup4.dat",
        "bcm2711-rpi-4-b.dtb",
        kernel.as_str(),
        initrd.as_str(),
        "user-data",
        "meta-data",
        "network-config",
    ] {
        assert!(
            listing.lines().any(|l| l.trim() == format!("::/{f}")),
            "{f} missing from the firmware partition:\n{listing}"
        );
    }
    let cmdline = tool("mtype", &["-i", &fw, "::/cmdline.txt"]);
    assert_eq!(cmdline.lines().count(), 1, "{cmdline:?}");
    assert!(
        cmdline
            .split_whitespace()
            .any(|w| w == format!("root=PARTUUID={root_partuuid}")),
        "{cmdline}"
    );
    // The seed in the image is the host's, and Debian's cloud-init accepts its user-data.
    for f in ["user-data", "meta-data", "network-config"] {
        let inside = tool("mtype", &["-i", &fw, &format!("::/{f}")]);
        let rendered =
            std::fs::read_to_string(lab.root().join("out/cloud-init/ceres").join(f)).unwrap();
        assert_eq!(inside, rendered, "{f} in the image differs from the render");
    }
    let ud = lab.root().join("user-data.from-image");
    std::fs::write(&ud, tool("mtype", &["-i", &fw, "::/user-data"])).unwrap();
    tool(
        "cloud-init",
        &["schema", "--config-file", ud.to_str().unwrap()],
    );
    // fsck.fat and blkid on the partition's own bytes: a clean FAT whose label is the one cloud-init's
    // NoCloud is configured to look for (it tries the label upper- and lower-case).
    let part = lab.root().join("firmware.part");
    extract(img, off(0), len(0), &part);
    tool("fsck.fat", &["-n", part.to_str().unwrap()]);
    let label = tool(
        "blkid",
        &["-o", "value", "-s", "LABEL", part.to_str().unwrap()],
    );
    assert_eq!(label.trim().to_lowercase(), "system-boot");
    std::fs::remove_file(&part).unwrap();

    // Root: a clean ext4 without host keys, with an empty machine-id, arm64 packages, and the NoCloud
    // datasource pointed at the firmware FAT.
    let root = format!("{}?offset={}", img.display(), off(1));
    let fsck = Command::new(oracle("e2fsck"))
        .args(["-fn", &root])
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let ls = tool("debugfs", &["-R", "ls -l /etc/ssh", &root]);
    assert!(ls.contains("sshd_config"), "{ls}");
    assert!(!ls.contains("ssh_host_"), "host keys in the image:\n{ls}");
    let mid = tool("debugfs", &["-R", "stat /etc/machine-id", &root]);
    assert!(mid.contains("Size: 0"), "{mid}");
    let status = tool("debugfs", &["-R", "cat /var/lib/dpkg/status", &root]);
    for p in [
        "openssh-server",
        "cloud-init",
        "linux-image-arm64",
        "raspi-firmware",
        "htop",
    ] {
        let entry = status
            .split("\n\n")
            .find(|e| e.starts_with(&format!("Package: {p}\n")))
            .unwrap_or_else(|| panic!("{p} is not installed in the image"));
        assert!(entry.contains("Status: install ok installed"), "{entry}");
        assert!(
            entry.contains("Architecture: arm64") || entry.contains("Architecture: all"),
            "{entry}"
        );
    }
    let cfg = tool(
        "debugfs",
        &["-R", "cat /etc/cloud/cloud.cfg.d/90-labforge.cfg", &root],
    );
    assert!(cfg.contains("fs_label: system-boot"), "{cfg}");
    let fstab = tool("debugfs", &["-R", "cat /etc/fstab", &root]);
    assert!(
        fstab.contains(&format!("PARTUUID={disk_id}-01 /boot/firmware vfat")),
        "{fstab}"
    );
    // The build-speed cuts (src/image/debian.rs, docs/rebuild.md "Build time") left a complete system:
    // update-initramfs is initramfs-tools' own again (no diversion, not the build's stub) and the root's
    // /boot has the one initramfs made at the end; dpkg is not eatmydata's wrapper; documentation is
    // reduced to the copyright files and the rule stays in dpkg's configuration for later installs.
    let diversions = tool("debugfs", &["-R", "cat /var/lib/dpkg/diversions", &root]);
    assert!(
        !diversions.contains("update-initramfs") && !diversions.contains("dpkg.distrib"),
        "build-time diversions left in the image:\n{diversions}"
    );
    let ui = tool("debugfs", &["-R", "cat /usr/sbin/update-initramfs", &root]);
    assert!(
        ui.contains("mkinitramfs") && !ui.contains("deferred by labforge"),
        "{ui}"
    );
    assert!(
        !tool("debugfs", &["-R", "cat /usr/bin/dpkg", &root]).starts_with("#!"),
        "/usr/bin/dpkg is a wrapper script"
    );
    let kver = kernel.trim_start_matches("vmlinuz-");
    let boot = tool("debugfs", &["-R", "ls /boot", &root]);
    assert!(boot.contains(&format!("initrd.img-{kver}")), "{boot}");
    let doc = tool("debugfs", &["-R", "ls /usr/share/doc/sudo", &root]);
    assert!(doc.contains("copyright"), "{doc}");
    assert!(!doc.contains("changelog"), "{doc}");
    let man = Command::new(oracle("debugfs"))
        .args(["-R", "ls /usr/share/man/man8", &root])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&man.stdout).contains("sshd.8"),
        "manual pages in the image"
    );
    let excl = tool(
        "debugfs",
        &["-R", "cat /etc/dpkg/dpkg.cfg.d/99mmdebstrap", &root],
    );
    assert!(
        excl.contains("path-include=/usr/share/doc/*/copyright"),
        "{excl}"
    );
    let fwdir = tool("debugfs", &["-R", "ls /boot/firmware", &root]);
    assert!(
        !fwdir.contains("config.txt"),
        "/boot/firmware in the root is the (empty) mount point:\n{fwdir}"
    );
    disk_id
}

#[test]
fn ceres_arm64_image_is_built_and_its_root_boots_under_qemu_virt_to_a_verified_host() {
    oracle("qemu-system-aarch64");
    oracle("mmdebstrap");
    let lab = Lab::new("ceres");
    let img = lab.root().join("out/images/ceres.img");

    let o = lab.run(&["plan", "ceres", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ip = &p["hosts"][0]["image"];
    assert_eq!(ip["kind"], "mmdebstrap", "{ip}");
    assert_eq!(ip["layout"], "rpi-firmware+ext4", "{ip}");
    assert_eq!(ip["build"], "emulated", "{ip}");

    // Build (the root file system from the shared cache when a previous run made it).
    let t = std::time::Instant::now();
    let o = lab.run(&["image", "build", "ceres", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    eprintln!("image build: {:.1}s", t.elapsed().as_secs_f64());
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["build"]["kind"], "mmdebstrap");
    assert_eq!(m["build"]["inputs"]["arch"], "arm64");
    assert_eq!(m["build"]["inputs"]["strategy"], "emulated");
    assert_eq!(m["build"]["inputs"]["layout"], "rpi-firmware+ext4");
    assert_eq!(m["seed"]["method"], "system-boot");
    assert_eq!(m["seed"]["partition"], 1);
    let disk_id = check_image(&img, &lab, &m);

    // Rebuild: reuse the image, boot its root under -M virt with its own kernel, SSH with the pinned key,
    // deploy, verify.
    let (r, _vm, port) = e2e_lab::rebuild_booted(&lab, "ceres");
    assert!(
        r["phases"][1]["detail"].as_str().unwrap().contains("virt"),
        "{r}"
    );
    for p in r["phases"].as_array().unwrap() {
        eprintln!(
            "phase {:<7} {:>7.1}s  {}",
            p["name"].as_str().unwrap(),
            p["seconds"].as_f64().unwrap(),
            p["detail"].as_str().unwrap()
        );
    }

    // Inside the guest: an aarch64 kernel, the root by the image's PARTUUID, the firmware FAT mounted by
    // fstab, the seed read by NoCloud from that FAT, a machine id made on first boot, host keys from the seed.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let facts = rt.block_on(async {
        use labforge::transport::Transport;
        let opts = e2e_lab::guest_ssh(&lab, "10.99.0.71", port);
        let t = labforge::transport::ssh::SshTransport::connect("ceres", "10.99.0.71", 22, &opts)
            .await
            .unwrap();
        let o = t
            .run(
                "facts",
                "uname -m; findmnt -no SOURCE,FSTYPE /; findmnt -no SOURCE,FSTYPE /boot/firmware; sudo -n blkid -s PARTUUID -o value \"$(findmnt -no SOURCE /)\"; sudo -n cloud-init status --long | grep -i detail -A1 | tr -s ' \\n' ' '; echo; test -s /etc/machine-id && echo machine-id-set; ls /etc/ssh/ | grep -cx ssh_host_ed25519_key",
            )
            .await
            .unwrap();
        t.close().await;
        assert!(o.ok(), "{}", o.stderr_str());
        o.stdout_str().to_string()
    });
    eprintln!("guest facts:\n{facts}");
    let lines: Vec<&str> = facts.lines().collect();
    assert_eq!(lines[0], "aarch64", "{facts}");
    assert!(
        lines[1].starts_with("/dev/vda2") && lines[1].ends_with("ext4"),
        "{facts}"
    );
    assert!(
        lines[2].starts_with("/dev/vda1") && lines[2].ends_with("vfat"),
        "{facts}"
    );
    assert_eq!(lines[3], format!("{disk_id}-02"), "{facts}");
    assert!(
        lines[4].contains("DataSourceNoCloud") && lines[4].contains("/dev/vda1"),
        "the seed must come from the firmware FAT: {facts}"
    );
    assert_eq!(lines[5], "machine-id-set", "{facts}");
    assert_eq!(lines[6], "1", "{facts}");
}
