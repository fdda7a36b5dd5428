//! End to end, issue 8: vulcan (the example lab's disposable Debian 12 node) built from Debian packages
//! with mmdebstrap, booted in QEMU (TCG, OVMF, user networking `restrict=on`, SSH forwarded to 127.0.0.1),
//! then `labforge rebuild`'s SSH/deploy/verify phases against it; a second deploy changes nothing; a
//! planted weakness (PasswordAuthentication via a drop-in) is caught by verify with exact check ids.
//!
//! Oracles: sfdisk (GPT layout), mdir (ESP and CIDATA contents), e2fsck + debugfs (the ext4 root: no host
//! keys, empty machine-id, packages installed), the booted guest itself (systemd-boot → kernel → cloud-init
//! seed → sshd with the pinned key), and labforge verify's checks run over SSH inside it.
//!
//! The example lab's admin key belongs to the operator; the test copies the spec and puts a fresh test key
//! in its place. The root file system cache is shared through `LABFORGE_CACHE` (target/labforge-cache),
//! so a second run of the test does not run mmdebstrap again.
mod common;
mod e2e_lab;

use common::{oracle, stderr, stdout};
use e2e_lab::Lab;
use std::path::Path;
use std::process::Command;

fn sfdisk(img: &Path) -> serde_json::Value {
    let o = Command::new(oracle("sfdisk"))
        .arg("-J")
        .arg(img)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

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

/// Judge the built image with the upstream tools.
fn check_image(img: &Path) {
    let t = sfdisk(img);
    let pt = &t["partitiontable"];
    assert_eq!(pt["label"], "gpt");
    let parts = pt["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3, "{t}");
    assert_eq!(parts[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    assert_eq!(parts[0]["name"], "ESP");
    assert_eq!(parts[1]["type"], "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
    assert_eq!(parts[2]["name"], "CIDATA");
    let off = |i: usize| parts[i]["start"].as_u64().unwrap() * 512;
    // ESP: systemd-boot as the removable-media loader, its entry, the kernel and initrd.
    let esp = format!("{}@@{}", img.display(), off(0));
    let listing = tool("mdir", &["-i", &esp, "-/", "-b", "::"]);
    for f in [
        "::/EFI/BOOT/BOOTX64.EFI",
        "::/loader/loader.conf",
        "::/loader/entries/debian.conf",
        "::/vmlinuz",
        "::/initrd.img",
    ] {
        assert!(
            listing.lines().any(|l| l.trim() == f),
            "{f} missing:\n{listing}"
        );
    }
    let entry = tool("mtype", &["-i", &esp, "::/loader/entries/debian.conf"]);
    let root_uuid = parts[1]["uuid"].as_str().unwrap().to_lowercase();
    assert!(
        entry.contains(&format!("root=PARTUUID={root_uuid}")),
        "{entry}"
    );
    // CIDATA: the seed.
    let cidata = format!("{}@@{}", img.display(), off(2));
    let seed = tool("mdir", &["-i", &cidata, "-b", "::"]);
    for f in ["user-data", "meta-data", "network-config"] {
        assert!(seed.contains(f), "{seed}");
    }
    // Root: a clean ext4 without host keys and with an empty machine-id.
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
    assert!(
        !ls.contains("ssh_host_"),
        "host keys must not be in the image:\n{ls}"
    );
    let mid = tool("debugfs", &["-R", "stat /etc/machine-id", &root]);
    assert!(mid.contains("Size: 0"), "{mid}");
    let status = tool("debugfs", &["-R", "cat /var/lib/dpkg/status", &root]);
    for p in [
        "openssh-server",
        "cloud-init",
        "linux-image-amd64",
        "netbase",
        "htop",
    ] {
        assert!(
            status.contains(&format!("Package: {p}\n")),
            "{p} is not installed in the image"
        );
    }
}

#[test]
fn vulcan_is_built_booted_deployed_and_verified_in_qemu() {
    oracle("qemu-system-x86_64");
    oracle("mmdebstrap");
    let lab = Lab::new("vulcan");
    let img = lab.root().join("out/images/vulcan.img");

    // Refusals first: a host that is not disposable.
    let o = lab.run(&["rebuild", "atlas", "--boot", "qemu"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("is not disposable"), "{}", stderr(&o));

    // Build.
    let o = lab.run(&["image", "build", "vulcan", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["build"]["kind"], "mmdebstrap");
    assert_eq!(m["seed"]["method"], "cidata");
    check_image(&img);

    // Rebuild --flash: the image is written to the host's OS disk and read back (here a file, which needs
    // --allow-file); no host answers at vulcan's address on this machine, so the SSH phase fails after
    // --ssh-timeout and rebuild exits 1 — after the write phase left a byte-identical disk.
    let disk = lab.root().join("vulcan-os-disk.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(std::fs::metadata(&img).unwrap().len())
        .unwrap();
    let key = lab.key();
    let o = lab.run(&[
        "rebuild",
        "vulcan",
        "--flash",
        disk.to_str().unwrap(),
        "--allow-file",
        "--yes",
        "--ssh-timeout",
        "3",
        "--identity",
        key.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}\n{}", stdout(&o), stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let phases: Vec<(&str, bool)> = r["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["ok"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        phases,
        [("image", true), ("write", true), ("ssh", false)],
        "{r}"
    );
    let st = Command::new("cmp").arg(&img).arg(&disk).status().unwrap();
    assert!(st.success(), "the flashed disk differs from the image");
    std::fs::remove_file(&disk).unwrap();

    // Rebuild: reuse the image (manifest + hash), boot it, SSH with the pinned key, deploy, verify.
    let (r, _vm, port) = e2e_lab::rebuild_booted(&lab, "vulcan");
    let key = lab.key();
    for p in r["phases"].as_array().unwrap() {
        eprintln!(
            "phase {:<7} {:>7.1}s  {}",
            p["name"].as_str().unwrap(),
            p["seconds"].as_f64().unwrap(),
            p["detail"].as_str().unwrap()
        );
    }
    let via = format!("10.99.0.70:22=127.0.0.1:{port}");
    let ssh = |extra: &[&str]| {
        let mut a: Vec<&str> = extra.to_vec();
        a.extend_from_slice(&["--identity", key.to_str().unwrap(), "--connect-via", &via]);
        lab.run(&a)
    };

    // Every applicable check passes; the rest say why they were skipped.
    let o = ssh(&["verify", "vulcan", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let results = v["hosts"][0]["results"].as_array().unwrap();
    let mut passed = 0;
    for c in results {
        match c["status"].as_str().unwrap() {
            "pass" => passed += 1,
            "skip" => assert!(
                !c["detail"].as_str().unwrap().is_empty(),
                "skip without a reason: {c}"
            ),
            other => panic!("{} is {other}: {c}", c["id"]),
        }
    }
    assert!(passed >= 40, "only {passed} checks passed");

    // A second deploy changes nothing.
    let o = ssh(&["deploy", "vulcan"]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("no changes"), "{}", stdout(&o));

    // Break one rule on the guest: password authentication through a drop-in read before labforge's.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use labforge::transport::Transport;
        let opts = e2e_lab::guest_ssh(&lab, "10.99.0.70", port);
        let t = labforge::transport::ssh::SshTransport::connect("vulcan", "10.99.0.70", 22, &opts)
            .await
            .unwrap();
        let o = t
            .run(
                "break",
                "sudo -n sh -c 'printf \"PasswordAuthentication yes\\n\" > /etc/ssh/sshd_config.d/00-break.conf && systemctl reload ssh'",
            )
            .await
            .unwrap();
        assert!(o.ok());
        t.close().await;
        // sshd re-executes on reload (seconds under TCG): wait until it accepts logins again.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            match labforge::transport::ssh::SshTransport::connect("vulcan", "10.99.0.70", 22, &opts)
                .await
            {
                Ok(t) => {
                    t.close().await;
                    break;
                }
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("waiting for sshd after reload: {e:#}");
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
                Err(e) => panic!("sshd did not come back after reload: {e:#}"),
            }
        }
    });
    let o = ssh(&["verify", "vulcan", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}\n{}", stdout(&o), stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut failing: Vec<&str> = v["hosts"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    failing.sort();
    assert_eq!(
        failing,
        [
            "sshd.mgmt.passwordauthentication",
            "sshd.user.passwordauthentication"
        ],
        "{}",
        stdout(&o)
    );
}
