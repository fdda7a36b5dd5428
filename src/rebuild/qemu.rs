//! Boot an image in QEMU for a rebuild rehearsal or a test: TCG (no KVM needed), OVMF (x86_64 UEFI) or
//! `-M virt` with a direct kernel (aarch64), one user-mode network per spec interface with `restrict=on`,
//! the guest's SSH forwarded to a loopback port. The disk is opened with `snapshot=on`: the image file is
//! never written. QEMU is killed when the [`Guest`] is dropped.

use crate::spec::model::{Arch, Host, Spec};
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

/// The QEMU command line for `h` booting `image`: x86_64 UEFI (q35 + OVMF) or aarch64 (`-M virt` with the
/// kernel, initrd and command line from the image's Raspberry Pi firmware partition).
pub fn command(
    spec: &Spec,
    h: &Host,
    image: &Path,
    dir: &Path,
    ssh_port_host: u16,
    memory_mib: u32,
) -> Result<(Command, SocketAddr)> {
    let mgmt = h
        .management_address()
        .with_context(|| format!("host `{}` has no management address", h.name))?;
    let port = h.facts.ssh_port;
    let mut c = match h.arch {
        Arch::X86_64 => x86_64_machine(image, dir)?,
        Arch::Aarch64 => aarch64_machine(image, dir)?,
    };
    c.args(["-smp", "2", "-m", &memory_mib.to_string()])
        .args(["-nodefaults", "-display", "none", "-no-user-config"])
        .arg("-serial")
        .arg(format!("file:{}", dir.join("console.log").display()));
    let mut forwarded = false;
    // One NIC per physical interface; a tagged VLAN rides on its parent (slirp does not carry tags, so
    // only untagged networks are reachable in the rehearsal).
    for (i, iface) in h.interfaces.iter().enumerate() {
        if iface.link.is_some() {
            continue;
        }
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

fn x86_64_machine(image: &Path, dir: &Path) -> Result<Command> {
    for f in [OVMF_CODE, OVMF_VARS] {
        if !Path::new(f).is_file() {
            bail!("{f} is missing: apt-get install ovmf (scripts/install-test-deps.sh)");
        }
    }
    let vars = dir.join("OVMF_VARS.fd");
    std::fs::copy(OVMF_VARS, &vars).context("copying the OVMF variable store")?;
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-machine",
        "q35",
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
    ])
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
    Ok(c)
}

/// aarch64: `-M virt` (TCG, Cortex-A72 like the Pi 4) booting the kernel and initrd that the image's
/// config.txt names, with the image's cmdline.txt (its consoles replaced by the virt board's PL011).
fn aarch64_machine(image: &Path, dir: &Path) -> Result<Command> {
    let boot = pi_boot_files(image, dir)?;
    let mut c = Command::new("qemu-system-aarch64");
    c.args([
        "-machine",
        "virt",
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "cortex-a72",
    ])
    .arg("-kernel")
    .arg(&boot.kernel)
    .arg("-initrd")
    .arg(&boot.initrd)
    .arg("-append")
    .arg(virt_cmdline(&boot.cmdline))
    .arg("-drive")
    .arg(format!(
        "if=none,id=disk0,file={},format=raw,snapshot=on,cache=unsafe",
        image.display()
    ))
    .args(["-device", "virtio-blk-pci,drive=disk0"]);
    Ok(c)
}

/// What a Raspberry Pi image boots, read from its firmware partition with mtools (no mounts).
#[derive(Debug)]
pub struct PiBoot {
    /// The kernel config.txt names (`kernel=`), copied out.
    pub kernel: PathBuf,
    /// The initramfs config.txt names, copied out.
    pub initrd: PathBuf,
    /// cmdline.txt, one line.
    pub cmdline: String,
    /// config.txt.
    pub config: String,
    /// The firmware partition (1-based) and its byte offset.
    pub partition: u32,
    pub offset: u64,
}

/// Find the image's firmware partition (the FAT labelled `system-boot`), read config.txt and cmdline.txt,
/// and copy the kernel and initrd config.txt names into `dir`.
pub fn pi_boot_files(image: &Path, dir: &Path) -> Result<PiBoot> {
    let f = std::fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let table = crate::image::part::read(&f)?;
    let Some(p) = table.parts.iter().find(|p| {
        p.maybe_fat
            && crate::image::fat::label(&f, p.offset(), p.len())
                .map(|l| l.eq_ignore_ascii_case("system-boot"))
                .unwrap_or(false)
    }) else {
        bail!(
            "{} has no FAT partition labelled system-boot: not a Raspberry Pi image labforge built",
            image.display()
        );
    };
    let at = format!("{}@@{}", image.display(), p.offset());
    let mtype = |name: &str| -> Result<String> {
        let o = Command::new("mtype")
            .arg("-i")
            .arg(&at)
            .arg(format!("::{name}"))
            .stdin(Stdio::null())
            .output()
            .context("running mtype (apt-get install mtools)")?;
        if !o.status.success() {
            bail!(
                "reading {name} from the firmware partition of {}: {}",
                image.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let config = mtype("config.txt")?;
    let cmdline = mtype("cmdline.txt")?.trim().to_string();
    let (kernel, initrd) = crate::image::debian::rpi_boot_files(&config);
    let (Some(kernel), Some(initrd)) = (kernel, initrd) else {
        bail!(
            "config.txt of {} names no kernel= and initramfs: it cannot boot",
            image.display()
        );
    };
    let copy = |name: &str, to: &Path| -> Result<()> {
        let o = Command::new("mcopy")
            .arg("-n")
            .arg("-i")
            .arg(&at)
            .arg(format!("::{name}"))
            .arg(to)
            .stdin(Stdio::null())
            .output()
            .context("running mcopy (apt-get install mtools)")?;
        if !o.status.success() {
            bail!(
                "copying {name} (named by config.txt) out of the firmware partition of {}: {}",
                image.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(())
    };
    let (k, i) = (dir.join("kernel"), dir.join("initrd"));
    copy(&kernel, &k)?;
    copy(&initrd, &i)?;
    Ok(PiBoot {
        kernel: k,
        initrd: i,
        cmdline,
        config,
        partition: p.number,
        offset: p.offset(),
    })
}

/// The Pi's kernel command line for the virt board: its `console=` settings (the Pi's UARTs) replaced by
/// the PL011 serial console, everything else (root=, rootwait, …) as the image has it.
pub fn virt_cmdline(pi: &str) -> String {
    let mut w: Vec<&str> = pi
        .split_whitespace()
        .filter(|w| !w.starts_with("console="))
        .collect();
    w.push("console=ttyAMA0,115200");
    w.join(" ")
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
        .with_context(|| match h.arch {
            Arch::X86_64 => {
                "starting qemu-system-x86_64 (apt-get install -t bookworm-backports qemu-system-x86)"
            }
            Arch::Aarch64 => {
                "starting qemu-system-aarch64 (apt-get install -t bookworm-backports qemu-system-arm)"
            }
        })?;
    Ok(Guest {
        child: Some(child),
        ssh: SocketAddr::from(([127, 0, 0, 1], port)),
        ssh_guest: guest,
        console: dir.path().join("console.log"),
        _dir: dir,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_pi_command_line_gets_the_virt_console() {
        assert_eq!(
            super::virt_cmdline("root=PARTUUID=0a1b2c3d-02 console=tty0 console=ttyS1,115200 rw net.ifnames=0 rootwait"),
            "root=PARTUUID=0a1b2c3d-02 rw net.ifnames=0 rootwait console=ttyAMA0,115200"
        );
    }
}
