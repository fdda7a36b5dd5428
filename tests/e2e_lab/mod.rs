//! Shared by the QEMU end-to-end tests (e2e_rebuild, e2e_aarch64): a copy of the example lab with a fresh
//! admin key in place of the operator's, rendered for one host, and the QEMU a `--keep-running` rebuild
//! leaves behind. The root file system cache is shared through `LABFORGE_CACHE` (target/labforge-cache).
#![allow(dead_code)]

use crate::common::{self, labforge_env, oracle, stderr, stdout};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A QEMU left running by `rebuild --keep-running`: killed on drop (it is this test's own child's child).
pub struct Vm {
    pub pid: u32,
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.pid > 1 {
            let _ = Command::new("kill")
                .arg("-9")
                .arg(self.pid.to_string())
                .status();
        }
    }
}

pub struct Lab {
    pub dir: tempfile::TempDir,
}

impl Lab {
    /// The example lab with a fresh admin key, secrets initialised and `host` rendered (what deploy
    /// uploads, `rendered/<host>/…`, comes from `labforge render`).
    pub fn new(host: &str) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        copy_dir(&common::repo().join("hosts"), &hosts);
        let key = dir.path().join("id_ed25519");
        let st = Command::new(oracle("ssh-keygen"))
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "labforge-e2e", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(st.success());
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let site = hosts.join("site.toml");
        let text = std::fs::read_to_string(&site).unwrap();
        let old = text
            .lines()
            .find(|l| l.starts_with("ssh_keys = ["))
            .expect("site admin keys")
            .to_string();
        std::fs::write(
            &site,
            text.replace(&old, &format!("ssh_keys = [\"{}\"]", public.trim())),
        )
        .unwrap();
        let lab = Lab { dir };
        let o = lab.run(&["secrets", "init"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let o = lab.run(&["render", host]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        lab
    }
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn key(&self) -> PathBuf {
        self.root().join("id_ed25519")
    }
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        let spec = self.root().join("hosts");
        let mut a = vec!["--spec", spec.to_str().unwrap()];
        a.extend_from_slice(args);
        let cache = common::repo().join("target/labforge-cache");
        let id = self.root().join(".age-identity.txt");
        labforge_env(
            self.root(),
            &a,
            &[
                ("LABFORGE_CACHE", cache.to_str().unwrap()),
                ("LABFORGE_AGE_IDENTITY", id.to_str().unwrap()),
            ],
        )
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// `labforge rebuild HOST --boot qemu --keep-running --json` on an image that was built before: asserts
/// exit 0, the five phases in order and that the image was reused; returns the report, the running VM and
/// the loopback port its SSH is forwarded to.
pub fn rebuild_booted(lab: &Lab, host: &str) -> (serde_json::Value, Vm, u16) {
    let key = lab.key();
    let o = lab.run(&[
        "rebuild",
        host,
        "--boot",
        "qemu",
        "--keep-running",
        "--identity",
        key.to_str().unwrap(),
        "--json",
    ]);
    let err = stderr(&o);
    let pid: u32 = err
        .lines()
        .find_map(|l| l.split("VM left running: pid ").nth(1))
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0);
    let vm = Vm { pid };
    assert_eq!(o.status.code(), Some(0), "{}\n{err}", stdout(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let phases: Vec<&str> = r["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["image", "boot", "ssh", "deploy", "verify"]);
    assert!(r["phases"][0]["detail"]
        .as_str()
        .unwrap()
        .starts_with("reused"));
    let port: u16 = err
        .lines()
        .find_map(|l| l.split("SSH at 127.0.0.1:").nth(1))
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.trim().parse().ok())
        .expect("forwarded port in the output");
    (r, vm, port)
}

/// SSH options for the admin `ops` into a guest whose `addr:22` is forwarded to `127.0.0.1:port` (the pinned
/// host key from the lab's known_hosts is still checked against `addr`).
pub fn guest_ssh(lab: &Lab, addr: &str, port: u16) -> labforge::transport::ssh::SshOptions {
    let mut opts = labforge::transport::ssh::SshOptions {
        user: "ops".into(),
        identity: Some(lab.key()),
        known_hosts: lab.root().join(".labforge/known_hosts"),
        trust_on_first_use: false,
        connect_timeout: std::time::Duration::from_secs(30),
        command_timeout: std::time::Duration::from_secs(120),
        connect_via: Default::default(),
    };
    opts.connect_via.insert(
        format!("{addr}:22").parse().unwrap(),
        format!("127.0.0.1:{port}").parse().unwrap(),
    );
    opts
}
