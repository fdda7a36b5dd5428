//! Boot an image in QEMU for a rebuild rehearsal or a test: TCG (no KVM needed), OVMF (x86_64 UEFI) or
//! `-M virt` with a direct kernel (aarch64), one user-mode network per spec interface with `restrict=on`,
//! the guest's SSH forwarded to a loopback port. The disk is opened with `snapshot=on`: the image file is
//! never written. QEMU is killed when the [`Guest`] is dropped.

use crate::spec::model::{Host, Spec};
use anyhow::{bail, Context, Result};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// OVMF firmware (Debian package `ovmf`).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

pub struct Guest {
    child: Option<Child>,
    /// Where the guest's SSH (management address, SSH port) is reachable on the controller.
    pub ssh: SocketAddr,
    /// The guest's management address:port (what the spec says), for the connect-address override.
    pub ssh_guest: SocketAddr,
    /// The serial console log.
    pub console: PathBuf,
    _dir: tempfile::TempDir,
}

impl Guest {
    /// Fails when QEMU has exited (with the tail of its console log).
    pub fn alive(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(st) = c.try_wait()? {
                let log = std::fs::read_to_string(&self.console).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                let mut err = String::new();
                if let Some(mut e) = c.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                bail!(
                    "QEMU exited ({st}) {}\nconsole (last lines):\n{}",
                    err.trim(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        Ok(())
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    /// Stop the guest now (kill; the disk is a snapshot, nothing to flush).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    /// Leave QEMU running beyond this process: its pid, the forwarded SSH address, the console log.
    pub fn detach(mut self) -> (u32, SocketAddr, PathBuf) {
        let pid = self.child.take().map(|c| c.id()).unwrap_or(0);
        let dir = std::mem::replace(&mut self._dir, tempfile::TempDir::new().expect("temp dir"));
        let kept = dir.keep();
        (pid, self.ssh, kept.join("console.log"))
    }
    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; QEMU binds it right after).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The QEMU command line for `h` booting `image` (x86_64 UEFI).
pub fn command(
    spec: &Spec,
    h: &Host,
    image: &Path,
    dir: &Path,
    ssh_port_host: u16,
    memory_mib: u32,
) -> Result<(Command, SocketAddr)> {
    for f in [OVMF_CODE, OVMF_VARS] {
        if !Path::new(f).is_file() {
            bail!("{f} is missing: apt-get install ovmf (scripts/install-test-deps.sh)");
        }
    }
    let vars = dir.join("OVMF_VARS.fd");
    std::fs::copy(OVMF_VARS, &vars).context("copying the OVMF variable store")?;
    let mgmt = h
        .management_address(spec)
        .with_context(|| format!("host `{}` has no management address", h.name))?;
    let port = h.hardening.ssh_port;
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-machine",
        "q35",
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
    ])
    .args(["-smp", "2", "-m", &memory_mib.to_string()])
    .args(["-nodefaults", "-display", "none", "-no-user-config"])
    .arg("-serial")
    .arg(format!("file:{}", dir.join("console.log").display()))
    .arg("-drive")
    .arg(format!(
        "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
    ))
    .arg("-drive")
    .arg(format!(
        "if=pflash,format=raw,unit=1,file={}",
        vars.display()
    ))
    .arg("-drive")
    .arg(format!(
        "file={},format=raw,if=virtio,snapshot=on,cache=unsafe",
        image.display()
    ));
    let mut forwarded = false;
    for (i, iface) in h.interfaces.iter().enumerate() {
        let Some(net) = spec.networks.get(&iface.network) else {
            continue;
        };
        let IpAddr::V4(_) = net.cidr.addr() else {
            continue;
        };
        let base = match net.cidr.network() {
            IpAddr::V4(a) => a,
            _ => continue,
        };
        // slirp's own address on that subnet: .2 unless the guest or gateway has it.
        let taken: Vec<IpAddr> = iface.address.into_iter().collect();
        let slirp = (2..250u32)
            .map(|n| Ipv4Addr::from(u32::from(base) + n))
            .find(|a| !taken.contains(&IpAddr::V4(*a)))
            .unwrap_or(Ipv4Addr::from(u32::from(base) + 2));
        let mut nd = format!("user,id=n{i},net={},host={slirp},restrict=on", net.cidr);
        if iface.address == Some(mgmt) {
            nd.push_str(&format!(
                ",hostfwd=tcp:127.0.0.1:{ssh_port_host}-{mgmt}:{port}"
            ));
            forwarded = true;
        }
        c.arg("-netdev").arg(nd);
        let mut dev = format!("virtio-net-pci,netdev=n{i}");
        if let Some(m) = &iface.mac {
            dev.push_str(&format!(",mac={m}"));
        }
        c.arg("-device").arg(dev);
    }
    if !forwarded {
        bail!(
            "host `{}`: no interface carries the management address {mgmt}",
            h.name
        );
    }
    c.arg("-device").arg("virtio-rng-pci");
    Ok((c, SocketAddr::new(mgmt, port)))
}

/// Start QEMU for `h` with `image`; returns at once (wait for SSH with `super::wait_ssh`).
pub fn boot(spec: &Spec, h: &Host, image: &Path, memory_mib: u32) -> Result<Guest> {
    let dir = tempfile::Builder::new()
        .prefix("labforge-qemu-")
        .tempdir()?;
    let port = free_port()?;
    let (mut cmd, guest) = command(spec, h, image, dir.path(), port, memory_mib)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context(
            "starting qemu-system-x86_64 (apt-get install -t bookworm-backports qemu-system-x86)",
        )?;
    Ok(Guest {
        child: Some(child),
        ssh: SocketAddr::from(([127, 0, 0, 1], port)),
        ssh_guest: guest,
        console: dir.path().join("console.log"),
        _dir: dir,
    })
}
