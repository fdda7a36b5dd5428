//! Debian images built from packages: mmdebstrap (unshare mode) makes the root file system as a tarball,
//! cached under `out/cache/rootfs/` by (suite, architecture, sorted package set, mmdebstrap options); the
//! image is assembled without loop mounts or root-only mounts:
//!
//! * x86_64 (`gpt-esp-systemd-boot+ext4`): GPT written here (`gpt.rs`) with an EFI system partition
//!   (FAT made by `mformat`, filled by `mcopy`: systemd-boot as the removable-media loader
//!   `EFI/BOOT/BOOTX64.EFI`, `loader/loader.conf`, one boot entry, the kernel and initrd from the root file
//!   system), an ext4 root made by `mkfs.ext4 -d DIR`, and a `CIDATA` FAT with the host's cloud-init seed;
//!   every file system is made in place at its partition's offset in the image.
//! * aarch64 Raspberry Pi (`rpi-firmware+ext4`): an MBR with a FAT32 firmware partition labelled
//!   `system-boot` (raspi-firmware's /boot/firmware: GPU firmware, config.txt, cmdline.txt, device trees,
//!   kernel, initrd; plus the host's cloud-init seed) and the ext4 root. On an x86_64 machine the arm64
//!   maintainer scripts run under binfmt_misc + qemu-user ([`strategy`]).
//!
//! The image carries no SSH host keys (the seed brings the host's pinned key) and an empty /etc/machine-id
//! (systemd makes one on first boot).

use super::gpt::{self, PartSpec};
use super::{BuildRef, Built, SeedRef};
use crate::io as lio;
use crate::spec::model::{Arch, Board};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Packages every labforge Debian image has, besides the host's own (`Host::packages`).
pub const BASE_PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "kmod",
    "iproute2",
    "ifupdown",
    "sudo",
    "openssh-server",
    "cloud-init",
    "initramfs-tools",
    "e2fsprogs",
    "nftables",
    // cloud-init's timezone module needs the zone files (the seed sets site.timezone).
    "tzdata",
    // /etc/protocols and /etc/services: nft resolves `ipv6-icmp` through them (the firewall step fails without).
    "netbase",
    // systemctl/hostnamectl/timedatectl for non-root callers and cloud-init's modules talk over D-Bus.
    "dbus",
];

/// mmdebstrap's hook directory that runs dpkg under eatmydata during the build (shipped with mmdebstrap).
const EATMYDATA_HOOKS: &str = "/usr/share/mmdebstrap/hooks/eatmydata";

/// initramfs-tools' command, diverted during the build so that the initramfs is made once.
const UPDATE_INITRAMFS: &str = "/usr/sbin/update-initramfs";

/// What `build` needs; the CLI fills it from the spec and plan.
pub struct DebianInput<'a> {
    pub host: &'a str,
    pub spec_revision: &'a str,
    pub arch: Arch,
    pub board: Board,
    pub suite: &'a str,
    /// The host's packages (layered from the spec).
    pub packages: &'a [String],
    pub seed: Vec<(String, Vec<u8>)>,
    pub out: PathBuf,
    /// `out/cache` of the repository: the root file system tarballs go to `<cache>/rootfs/`.
    pub cache: PathBuf,
    pub progress: bool,
}

/// The root file system recipe: what the cache key is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    pub suite: String,
    /// Debian architecture name (amd64, arm64).
    pub arch: String,
    /// Sorted, de-duplicated.
    pub packages: Vec<String>,
    /// mmdebstrap's arguments other than suite, target and the package list.
    pub options: Vec<String>,
}

impl Recipe {
    pub fn new(suite: &str, arch: Arch, board: Board, host_packages: &[String]) -> Result<Recipe> {
        let (deb_arch, kernel, boot) = match (arch, board) {
            (Arch::X86_64, b) if !b.is_rpi() => ("amd64", "linux-image-amd64", "systemd-boot-efi"),
            (Arch::Aarch64, b) if b.is_rpi() => ("arm64", "linux-image-arm64", "raspi-firmware"),
            (a, b) => bail!(
                "no Debian image layout for {} on board {} (labforge builds x86_64 UEFI and aarch64 Raspberry Pi images)",
                a.as_str(),
                b.as_str()
            ),
        };
        let mut packages: Vec<String> = BASE_PACKAGES
            .iter()
            .map(|s| s.to_string())
            .chain([kernel.to_string(), boot.to_string()])
            .chain(host_packages.iter().cloned())
            .collect();
        for p in &packages {
            if p.is_empty()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
            {
                bail!("`{p}` is not a Debian package name (lowercase letters, digits, + - . only)");
            }
        }
        packages.sort();
        packages.dedup();
        let components = if board.is_rpi() {
            "main,non-free-firmware"
        } else {
            "main"
        };
        let options = vec![
            // As root, unshare mode still runs in its own mount (and pid) namespace: the mounts inside the
            // chroot (/proc, /sys, /dev) vanish with it, even if the build is interrupted.
            "--mode=unshare".to_string(),
            "--variant=apt".to_string(),
            format!("--arch={deb_arch}"),
            format!("--components={components}"),
            "--format=tar".to_string(),
            // Build speed (an arm64 root file system runs every maintainer script, and dpkg itself, under
            // qemu-user; docs/rebuild.md "Build time"). mmdebstrap's own eatmydata hook: dpkg's fsync()s
            // become no-ops during the build, and its customize hook removes the wrapper again (unlike
            // `--dpkgopt=force-unsafe-io`, which would stay in the image's dpkg configuration).
            format!("--hook-directory={EATMYDATA_HOOKS}"),
            // No manual pages, info pages, message translations or documentation besides the copyright
            // files: the image has no man/info reader (Recommends are not installed) and is administered
            // in English over SSH. dpkg keeps these rules in /etc/dpkg/dpkg.cfg.d/99mmdebstrap, so
            // packages installed later on the host stay as lean.
            "--dpkgopt=path-exclude=/usr/share/man/*".to_string(),
            "--dpkgopt=path-exclude=/usr/share/info/*".to_string(),
            "--dpkgopt=path-exclude=/usr/share/locale/*".to_string(),
            "--dpkgopt=path-include=/usr/share/locale/locale.alias".to_string(),
            "--dpkgopt=path-exclude=/usr/share/doc/*".to_string(),
            "--dpkgopt=path-include=/usr/share/doc/*/copyright".to_string(),
            "--dpkgopt=path-exclude=/usr/share/lintian/*".to_string(),
            // One initramfs, made at the end: while packages are installed, update-initramfs is diverted
            // to a no-op (the kernel's postinst and the initramfs-tools trigger would each build one, at
            // ~35 MiB of modules each); the first customize hook restores it and runs
            // `update-initramfs -c -k all` once, whose post-update hooks run as on an installed system
            // (raspi-firmware's copies the kernel, initrd and device trees to /boot/firmware and writes
            // config.txt and cmdline.txt).
            format!(
                "--essential-hook=chroot \"$1\" dpkg-divert --quiet --local --rename --divert {UPDATE_INITRAMFS}.labforge-deferred --add {UPDATE_INITRAMFS} && printf '#!/bin/sh\\necho \"update-initramfs: deferred by labforge to the end of the build\" >&2\\n' > \"$1\"{UPDATE_INITRAMFS} && chmod 0755 \"$1\"{UPDATE_INITRAMFS}"
            ),
            format!(
                "--customize-hook=rm -f \"$1\"{UPDATE_INITRAMFS} && chroot \"$1\" dpkg-divert --quiet --local --rename --remove {UPDATE_INITRAMFS} && chroot \"$1\" update-initramfs -c -k all"
            ),
            // Host keys come from the seed; systemd creates the machine id on first boot.
            "--customize-hook=rm -f \"$1\"/etc/ssh/ssh_host_*".to_string(),
            "--customize-hook=truncate -s 0 \"$1\"/etc/machine-id".to_string(),
            // No apt lists in the image (they are stale at once and large).
            "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/*".to_string(),
        ];
        Ok(Recipe {
            suite: suite.to_string(),
            arch: deb_arch.to_string(),
            packages,
            options,
        })
    }

    /// The cache key: SHA-256 over suite, architecture, sorted packages and options.
    pub fn key(&self) -> String {
        let mut s = format!("labforge-rootfs-v1\0{}\0{}\0", self.suite, self.arch);
        for p in &self.packages {
            s.push_str(p);
            s.push('\n');
        }
        s.push('\0');
        for o in &self.options {
            s.push_str(o);
            s.push('\n');
        }
        lio::sha256_hex(s.as_bytes())
    }

    pub fn cache_path(&self, cache: &Path) -> PathBuf {
        cache.join("rootfs").join(format!(
            "{}-{}-{}.tar",
            self.suite,
            self.arch,
            &self.key()[..16]
        ))
    }
}

fn need(tool: &str, pkg: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(tool).is_file();
    if !found {
        bail!("`{tool}` is not installed: apt-get install {pkg} (scripts/install-test-deps.sh installs it)");
    }
    Ok(())
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Make (or reuse) the root file system tarball; returns its path and whether it came from the cache.
pub fn rootfs(recipe: &Recipe, cache: &Path, progress: bool) -> Result<(PathBuf, bool)> {
    let path = recipe.cache_path(cache);
    if path.is_file() {
        return Ok((path, true));
    }
    need("mmdebstrap", "mmdebstrap")?;
    if !Path::new(EATMYDATA_HOOKS).is_dir() {
        bail!("mmdebstrap's eatmydata hook directory {EATMYDATA_HOOKS} is missing: install mmdebstrap ≥ 1.0 from Debian (apt-get install mmdebstrap)");
    }
    let dir = path.parent().unwrap_or(cache);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".rootfs-")
        .suffix(".tar")
        .tempfile_in(dir)?;
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(&recipe.options)
        .arg(format!("--include={}", recipe.packages.join(",")))
        .arg(&recipe.suite)
        .arg(tmp.path());
    if !progress {
        cmd.arg("--quiet");
    }
    let pb = lio::progress_bar(0, "mmdebstrap", progress);
    pb.set_message(format!(
        "mmdebstrap {} {} ({} packages)",
        recipe.suite,
        recipe.arch,
        recipe.packages.len()
    ));
    let r = stream(&mut cmd, "mmdebstrap", &pb, progress);
    pb.finish_and_clear();
    r?;
    tmp.persist(&path)
        .map_err(|e| e.error)
        .with_context(|| format!("storing the root file system at {}", path.display()))?;
    Ok((path, false))
}

/// Run `cmd`, showing its output lines under the progress display (a TTY) or as plain lines on stderr;
/// the last lines are kept for the error message.
pub fn stream(
    cmd: &mut Command,
    what: &str,
    pb: &indicatif::ProgressBar,
    progress: bool,
) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let tx2 = tx.clone();
    let t1 = std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let t2 = std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx2.send(l);
        }
    });
    let mut tail: std::collections::VecDeque<String> = Default::default();
    let tty = progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
    for l in rx {
        if tty {
            pb.set_message(format!(
                "{what}: {}",
                l.chars().take(100).collect::<String>()
            ));
            pb.tick();
        } else if progress {
            eprintln!("{what}: {l}");
        }
        tail.push_back(l);
        if tail.len() > 40 {
            tail.pop_front();
        }
    }
    let _ = t1.join();
    let _ = t2.join();
    let st = child.wait()?;
    if !st.success() {
        bail!(
            "{what} failed ({st}); its last lines:\n{}",
            tail.into_iter().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

/// The kernel and initrd under `<root>/boot` (the newest version present).
fn kernel_files(root: &Path) -> Result<(PathBuf, PathBuf)> {
    let mut versions: Vec<String> = std::fs::read_dir(root.join("boot"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(|s| s.to_string())
        })
        .collect();
    versions.sort();
    let Some(v) = versions.pop() else {
        bail!("the root file system has no kernel in /boot (is linux-image-* in the package set?)");
    };
    let k = root.join("boot").join(format!("vmlinuz-{v}"));
    let i = root.join("boot").join(format!("initrd.img-{v}"));
    if !i.is_file() {
        bail!("the root file system has a kernel {v} but no initrd (initramfs-tools did not run?)");
    }
    Ok((k, i))
}

fn dir_size(p: &Path) -> u64 {
    let mut n = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if let Ok(m) = e.path().symlink_metadata() {
                    if m.is_dir() {
                        stack.push(e.path());
                    } else {
                        n += m.len().div_ceil(4096) * 4096;
                    }
                }
            }
        }
    }
    n
}

/// Kernel command line of the image: root by the GPT partition UUID, serial + screen console.
pub fn cmdline(root_partuuid: &str) -> String {
    format!("root=PARTUUID={root_partuuid} rw rootwait console=tty0 console=ttyS0,115200")
}

/// The Debian architecture of the machine labforge runs on.
pub fn native_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The ELF magic (and its binfmt_misc text form) of the foreign architectures labforge builds for.
fn elf_magic(deb_arch: &str) -> Option<(&'static str, &'static str)> {
    match deb_arch {
        "arm64" => Some(("aarch64", "7f454c460201010000000000000000000200b700")),
        "amd64" => Some(("x86_64", "7f454c4602010100000000000000000002003e00")),
        _ => None,
    }
}

/// How the root file system's maintainer scripts run: `native`, or `emulated` (binfmt_misc + qemu-user)
/// when the image's architecture is not this machine's. Fails with what to install when emulation is
/// missing: the handler must be enabled and have the F flag (the interpreter is opened at registration,
/// so it works inside the chroot without being copied there).
pub fn strategy(deb_arch: &str) -> Result<&'static str> {
    strategy_in(deb_arch, Path::new("/proc/sys/fs/binfmt_misc"))
}

fn strategy_in(deb_arch: &str, binfmt: &Path) -> Result<&'static str> {
    if deb_arch == native_arch() {
        return Ok("native");
    }
    let Some((cpu, magic)) = elf_magic(deb_arch) else {
        bail!("labforge does not build {deb_arch} root file systems");
    };
    let fix = format!(
        "apt-get install -t bookworm-backports qemu-user qemu-user-binfmt, then (without systemd-binfmt) `cat /usr/lib/binfmt.d/qemu-{cpu}.conf > /proc/sys/fs/binfmt_misc/register`; scripts/install-test-deps.sh does both"
    );
    if !binfmt.join("register").exists() {
        bail!(
            "building a {deb_arch} root file system on this {} machine runs {cpu} maintainer scripts under emulation, but binfmt_misc is not mounted at {}: `mount -t binfmt_misc binfmt_misc {}`, then {fix}",
            std::env::consts::ARCH,
            binfmt.display(),
            binfmt.display()
        );
    }
    let mut disabled = None;
    for e in std::fs::read_dir(binfmt)
        .with_context(|| format!("reading {}", binfmt.display()))?
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        if !text.lines().any(|l| l.trim() == format!("magic {magic}")) {
            continue;
        }
        let enabled = text.lines().next().map(str::trim) == Some("enabled");
        let flags = text
            .lines()
            .find_map(|l| l.strip_prefix("flags: "))
            .unwrap_or("");
        if enabled && flags.contains('F') {
            return Ok("emulated");
        }
        disabled = Some(format!(
            "{} ({}, flags `{flags}`)",
            e.path().display(),
            if enabled { "enabled" } else { "disabled" }
        ));
    }
    match disabled {
        Some(d) => bail!(
            "the binfmt_misc handler for {cpu} at {d} cannot run maintainer scripts inside the chroot: it must be enabled and registered with the F flag; {fix}"
        ),
        None => bail!(
            "building a {deb_arch} root file system on this {} machine runs {cpu} maintainer scripts under emulation, and no binfmt_misc handler for {cpu} ELF binaries is registered: {fix}",
            std::env::consts::ARCH
        ),
    }
}

/// Unpacked root file system, its tarball's hash and the recipe; shared by both layouts.
struct Prepared {
    recipe: Recipe,
    tar_sha: String,
    work: tempfile::TempDir,
    root: PathBuf,
    outdir: PathBuf,
    strategy: &'static str,
}

/// Build HOST's Debian image; the flag says whether the root file system came from the cache.
pub fn build(inp: &DebianInput) -> Result<(Built, bool)> {
    for (t, p) in [
        ("mkfs.ext4", "e2fsprogs"),
        ("mformat", "mtools"),
        ("mcopy", "mtools"),
        ("tar", "tar"),
    ] {
        need(t, p)?;
    }
    let recipe = Recipe::new(inp.suite, inp.arch, inp.board, inp.packages)?;
    let strategy = strategy(&recipe.arch)
        .with_context(|| format!("host `{}` ({} image)", inp.host, recipe.arch))?;
    let (tarball, cached) = rootfs(&recipe, &inp.cache, inp.progress)?;
    let tar_sha = {
        let f = File::open(&tarball)?;
        super::hash_file(&f, false, "hash")?
    };
    let outdir = inp
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    std::fs::create_dir_all(&outdir)?;
    let work = tempfile::Builder::new()
        .prefix(".labforge-debian-")
        .tempdir_in(&outdir)?;
    let root = work.path().join("root");
    std::fs::create_dir(&root)?;
    run(
        Command::new("tar")
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
            .arg(&tarball)
            .arg("-C")
            .arg(&root),
        "tar (unpacking the root file system)",
    )?;
    let p = Prepared {
        recipe,
        tar_sha,
        work,
        root,
        outdir,
        strategy,
    };
    let built = if inp.board.is_rpi() {
        assemble_rpi(inp, p)?
    } else {
        assemble_uefi(inp, p)?
    };
    Ok((built, cached))
}

fn build_inputs(p: &Prepared, layout: &str) -> BTreeMap<String, String> {
    let mut inputs = BTreeMap::new();
    inputs.insert("suite".into(), p.recipe.suite.clone());
    inputs.insert("arch".into(), p.recipe.arch.clone());
    inputs.insert("packages".into(), p.recipe.packages.join(","));
    inputs.insert("options".into(), p.recipe.options.join(" "));
    inputs.insert("cache-key".into(), p.recipe.key());
    inputs.insert("rootfs-sha256".into(), p.tar_sha.clone());
    inputs.insert("layout".into(), layout.into());
    inputs.insert("strategy".into(), p.strategy.into());
    inputs
}

/// x86_64: GPT with an ESP (systemd-boot), the ext4 root and a CIDATA seed partition.
fn assemble_uefi(inp: &DebianInput, p: Prepared) -> Result<Built> {
    let Prepared {
        ref root,
        ref tar_sha,
        ref work,
        ref outdir,
        ..
    } = p;
    // Per-host identifiers, derived so the same inputs give the same layout.
    let id = |what: &str| gpt::derived_guid(&format!("labforge {what}\0{}\0{tar_sha}", inp.host));
    let (esp_uuid, root_uuid, cidata_uuid, disk_uuid, fs_uuid) =
        (id("esp"), id("root"), id("cidata"), id("disk"), id("ext4"));

    // Host-specific files in the root: fstab, cloud-init's datasource (NoCloud only: no network probing).
    std::fs::write(
        root.join("etc/fstab"),
        format!("# Generated by labforge for host `{}`.\nPARTUUID={root_uuid} / ext4 errors=remount-ro 0 1\n", inp.host),
    )?;
    let ccd = root.join("etc/cloud/cloud.cfg.d");
    std::fs::create_dir_all(&ccd)?;
    std::fs::write(
        ccd.join("90-labforge.cfg"),
        "# Generated by labforge: the seed is the CIDATA partition of this image.\ndatasource_list: [NoCloud, None]\n",
    )?;

    // ESP: systemd-boot, the kernel and initrd.
    let (kernel, initrd) = kernel_files(root)?;
    let loader = root.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    if !loader.is_file() {
        bail!("the root file system has no systemd-boot EFI binary (systemd-boot-efi)");
    }
    let espdir = work.path().join("esp");
    for d in ["EFI/BOOT", "loader/entries"] {
        std::fs::create_dir_all(espdir.join(d))?;
    }
    std::fs::copy(&loader, espdir.join("EFI/BOOT/BOOTX64.EFI"))?;
    std::fs::copy(&kernel, espdir.join("vmlinuz"))?;
    std::fs::copy(&initrd, espdir.join("initrd.img"))?;
    std::fs::write(
        espdir.join("loader/loader.conf"),
        "default debian.conf\ntimeout 0\nconsole-mode keep\n",
    )?;
    std::fs::write(
        espdir.join("loader/entries/debian.conf"),
        format!(
            "title Debian {} ({})\nlinux /vmlinuz\ninitrd /initrd.img\noptions {}\n",
            inp.suite,
            inp.host,
            cmdline(&root_uuid)
        ),
    )?;
    let esp_size = ((dir_size(&espdir) * 5 / 4 + (16 << 20)).max(64 << 20)).div_ceil(1 << 20) << 20;
    let root_size = root_size(root);

    // The disk: the GPT first, then each file system made in place at its partition's offset (mtools
    // `IMAGE@@OFFSET`, `mkfs.ext4 -E offset=`): no intermediate partition files, no copies.
    let seed_bytes: u64 = inp.seed.iter().map(|(_, b)| b.len() as u64).sum();
    let cidata_size = (seed_bytes * 2 + (1 << 20)).max(4 << 20);
    let parts = vec![
        PartSpec {
            name: "ESP".into(),
            type_guid: super::part::ESP.into(),
            unique: esp_uuid.clone(),
            size: esp_size,
        },
        PartSpec {
            name: "root".into(),
            type_guid: gpt::ROOT_X86_64.into(),
            unique: root_uuid.clone(),
            size: root_size,
        },
        PartSpec {
            name: "CIDATA".into(),
            type_guid: super::part::BASIC_DATA.into(),
            unique: cidata_uuid,
            size: cidata_size,
        },
    ];
    let (total, placed) = gpt::layout(&parts);
    let tmp = tempfile::Builder::new()
        .prefix(".labforge-image-")
        .tempfile_in(outdir)?;
    let f = tmp.as_file();
    f.set_len(total)?;
    gpt::write(f, total, &parts, &placed, &disk_uuid)?;
    f.sync_all()?;

    // ESP: FAT32 by mformat, filled by mcopy.
    make_fat(
        tmp.path(),
        placed[0].offset(),
        placed[0].len(),
        "ESP",
        &esp_uuid[..8],
        &espdir,
        "the EFI system partition",
    )?;
    make_ext4(
        tmp.path(),
        placed[1].offset(),
        placed[1].len(),
        &fs_uuid,
        root,
    )?;
    if f.metadata()?.len() != total {
        bail!("mkfs.ext4 changed the image size (expected {total} bytes)");
    }
    let c = placed[2];
    let vol = u32::from_str_radix(&id("cidata-vol")[..8], 16).unwrap_or(0);
    super::format_cidata(f, c.offset(), c.len(), c.start_lba as u32, &inp.seed, vol)
        .with_context(|| format!("writing the cloud-init seed for {}", inp.host))?;

    let mut inputs = build_inputs(&p, "gpt-esp-systemd-boot+ext4");
    inputs.insert("root-partuuid".into(), root_uuid);
    let seed = SeedRef {
        method: super::decl::SeedMethod::Cidata,
        partition: 3,
        partition_added: true,
        grew_from: None,
        files: super::seed_files(&inp.seed),
    };
    drop(p);
    super::publish(
        tmp,
        &inp.out,
        inp.host,
        inp.spec_revision,
        None,
        Some(BuildRef {
            kind: "mmdebstrap".into(),
            inputs,
        }),
        Some(seed),
        inp.progress,
    )
}

/// The root partition's size for the unpacked tree: half as much again plus 768 MiB of room.
fn root_size(root: &Path) -> u64 {
    let used = dir_size(root);
    (used * 3 / 2 + (768 << 20)).div_ceil(1 << 20) << 20
}

/// A FAT32 file system made by `mformat` at `offset` of `image`, filled from `dir` by `mcopy`.
fn make_fat(
    image: &Path,
    offset: u64,
    len: u64,
    label: &str,
    serial: &str,
    dir: &Path,
    what: &str,
) -> Result<()> {
    let at = format!("{}@@{offset}", image.display());
    run(
        Command::new("mformat")
            .arg("-i")
            .arg(&at)
            .args(["-F", "-v", label, "-N", serial])
            .arg("-T")
            .arg((len / 512).to_string())
            .args(["-h", "64", "-s", "32", "::"]),
        &format!("mformat ({what})"),
    )?;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    entries.sort();
    if entries.is_empty() {
        return Ok(());
    }
    let mut mc = Command::new("mcopy");
    mc.arg("-i").arg(&at).args(["-s", "-Q", "-m"]);
    mc.args(&entries);
    mc.arg("::/");
    run(&mut mc, &format!("mcopy (filling {what})"))
}

/// The ext4 root made from `root` by `mkfs.ext4 -d`, in place at `offset` of `image`.
fn make_ext4(image: &Path, offset: u64, len: u64, fs_uuid: &str, root: &Path) -> Result<()> {
    run(
        Command::new("mkfs.ext4")
            .args(["-F", "-q", "-L", "root", "-U", fs_uuid, "-E"])
            .arg(format!("offset={offset},root_owner=0:0,nodiscard"))
            .arg("-d")
            .arg(root)
            .arg(image)
            .arg(format!("{}k", len / 1024))
            .env("E2FSPROGS_FAKE_TIME", "315532800"),
        "mkfs.ext4 -d (the root file system)",
    )
}

/// The device tree the board's firmware loads (raspi-firmware copies it from the kernel package).
fn rpi_dtb(board: Board) -> &'static str {
    match board {
        Board::Rpi5 => "bcm2712-rpi-5-b.dtb",
        _ => "bcm2711-rpi-4-b.dtb",
    }
}

/// What the Pi firmware loads according to `config.txt`: (`kernel=`, `initramfs` file); the last
/// setting wins, as in the firmware.
pub fn rpi_boot_files(config_txt: &str) -> (Option<String>, Option<String>) {
    let (mut kernel, mut initramfs) = (None, None);
    for l in config_txt.lines() {
        let l = l.trim();
        if l.starts_with('#') || l.starts_with('[') {
            continue;
        }
        if let Some(k) = l.strip_prefix("kernel=") {
            kernel = Some(k.trim().to_string());
        } else if let Some(rest) = l.strip_prefix("initramfs ") {
            initramfs = rest.split_whitespace().next().map(str::to_string);
        }
    }
    (kernel, initramfs)
}

/// `cmdline.txt` with its `root=` replaced by `root=PARTUUID=<root>` (added when absent); one line.
pub fn rpi_cmdline(existing: &str, root_partuuid: &str) -> String {
    let mut out: Vec<String> = existing
        .split_whitespace()
        .filter(|w| !w.starts_with("root="))
        .map(str::to_string)
        .collect();
    out.insert(0, format!("root=PARTUUID={root_partuuid}"));
    if !out.iter().any(|w| w == "rootwait") {
        out.push("rootwait".into());
    }
    format!("{}\n", out.join(" "))
}

/// An MBR (DOS) partition table: `(type, first LBA, sectors)` per partition, disk identifier `disk_id`.
fn write_mbr(f: &File, disk_id: u32, parts: &[(u8, u64, u64)]) -> Result<()> {
    use std::os::unix::fs::FileExt;
    if parts.len() > 4 {
        bail!("an MBR holds four primary partitions");
    }
    let mut s = [0u8; 512];
    s[440..444].copy_from_slice(&disk_id.to_le_bytes());
    for (i, &(ty, start, sectors)) in parts.iter().enumerate() {
        let (Ok(start), Ok(sectors)) = (u32::try_from(start), u32::try_from(sectors)) else {
            bail!("partition {} does not fit an MBR (beyond 2 TiB)", i + 1);
        };
        let e = 446 + i * 16;
        s[e] = 0x00;
        // CHS fields: the "beyond CHS" marker; every reader uses the LBA fields.
        s[e + 1..e + 4].copy_from_slice(&[0xfe, 0xff, 0xff]);
        s[e + 4] = ty;
        s[e + 5..e + 8].copy_from_slice(&[0xfe, 0xff, 0xff]);
        s[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
        s[e + 12..e + 16].copy_from_slice(&sectors.to_le_bytes());
    }
    s[510] = 0x55;
    s[511] = 0xaa;
    f.write_all_at(&s, 0)?;
    Ok(())
}

/// Raspberry Pi: MBR, a FAT32 firmware partition labelled `system-boot` (the Pi firmware, config.txt,
/// cmdline.txt, the device trees, the kernel and initrd, as raspi-firmware's hooks laid them out in the
/// root's /boot/firmware, plus the host's cloud-init seed), and the ext4 root.
fn assemble_rpi(inp: &DebianInput, p: Prepared) -> Result<Built> {
    let Prepared {
        ref root,
        ref tar_sha,
        ref work,
        ref outdir,
        ..
    } = p;
    let derive = |what: &str| {
        lio::sha256_hex(format!("labforge {what}\0{}\0{tar_sha}", inp.host).as_bytes())
    };
    // The MBR disk identifier (never 0: some firmware treats 0 as "none"); the partitions' PARTUUIDs
    // follow from it as `<id>-01`, `<id>-02`.
    let disk_id = match u32::from_str_radix(&derive("mbr-disk-id")[..8], 16).unwrap_or(1) {
        0 => 1,
        n => n,
    };
    let fw_part = format!("{disk_id:08x}-01");
    let root_part = format!("{disk_id:08x}-02");
    let fs_uuid = gpt::derived_guid(&format!("labforge ext4\0{}\0{tar_sha}", inp.host));
    let fat_serial = derive("firmware-vol")[..8].to_string();

    // The firmware partition's contents are what raspi-firmware's hooks put under /boot/firmware.
    let fw_src = root.join("boot/firmware");
    let need_files = [
        "config.txt",
        "cmdline.txt",
        "start4.elf",
        "fixup4.dat",
        rpi_dtb(inp.board),
    ];
    for n in need_files {
        if !fw_src.join(n).is_file() {
            bail!(
                "the root file system's /boot/firmware has no {n}: raspi-firmware's hooks did not lay out the Raspberry Pi firmware{}",
                if inp.board == Board::Rpi5 {
                    " (Debian 12's kernel 6.1 and raspi-firmware do not support the Raspberry Pi 5)"
                } else {
                    ""
                }
            );
        }
    }
    let config = std::fs::read_to_string(fw_src.join("config.txt"))?;
    let (kernel, initramfs) = rpi_boot_files(&config);
    for (what, f) in [("kernel=", &kernel), ("initramfs", &initramfs)] {
        match f {
            Some(f) if fw_src.join(f).is_file() => {}
            Some(f) => bail!("config.txt's {what} names {f}, which is not in /boot/firmware"),
            None => bail!("config.txt from raspi-firmware has no {what} line"),
        }
    }
    let fwdir = work.path().join("firmware");
    std::fs::rename(&fw_src, &fwdir).context("moving /boot/firmware out of the root")?;
    std::fs::create_dir(&fw_src)?;
    let old = std::fs::read_to_string(fwdir.join("cmdline.txt"))?;
    std::fs::write(fwdir.join("cmdline.txt"), rpi_cmdline(&old, &root_part))?;
    super::check_seed(&inp.seed)?;
    for (name, bytes) in &inp.seed {
        if fwdir.join(name).exists() {
            bail!("seed file {name} would overwrite a firmware file of the same name");
        }
        std::fs::write(fwdir.join(name), bytes)?;
    }

    // Host-specific files in the root: fstab; raspi-firmware's own settings, so that a kernel upgrade on the
    // Pi writes the same root= into cmdline.txt; cloud-init's datasource: NoCloud reading the seed from
    // the FAT labelled system-boot (the project's Pi convention, as on Ubuntu's Pi images).
    std::fs::write(
        root.join("etc/fstab"),
        format!(
            "# Generated by labforge for host `{}`.\nPARTUUID={root_part} / ext4 errors=remount-ro 0 1\nPARTUUID={fw_part} /boot/firmware vfat defaults 0 2\n",
            inp.host
        ),
    )?;
    let dflt = root.join("etc/default/raspi-firmware");
    let cur = std::fs::read_to_string(&dflt).unwrap_or_default();
    let mut lines: Vec<String> = cur
        .lines()
        .filter(|l| !l.trim_start().starts_with("ROOTPART="))
        .map(str::to_string)
        .collect();
    lines.push("# Set by labforge: the root partition by its MBR PARTUUID.".into());
    lines.push(format!("ROOTPART=PARTUUID={root_part}"));
    std::fs::write(&dflt, format!("{}\n", lines.join("\n")))?;
    let ccd = root.join("etc/cloud/cloud.cfg.d");
    std::fs::create_dir_all(&ccd)?;
    std::fs::write(
        ccd.join("90-labforge.cfg"),
        "# Generated by labforge: the seed is on the firmware partition (FAT labelled system-boot).\ndatasource_list: [NoCloud, None]\ndatasource:\n  NoCloud:\n    fs_label: system-boot\n",
    )?;

    let mib = 1u64 << 20;
    let fw_size = (dir_size(&fwdir) * 5 / 4 + (32 << 20))
        .max(256 << 20)
        .div_ceil(mib)
        * mib;
    let rsize = root_size(root);
    // 4 MiB before the first partition (the Pi images' usual alignment, erase-block friendly on SD cards).
    let fw_at = 4 * mib;
    let root_at = fw_at + fw_size;
    let total = root_at + rsize;
    let tmp = tempfile::Builder::new()
        .prefix(".labforge-image-")
        .tempfile_in(outdir)?;
    let f = tmp.as_file();
    f.set_len(total)?;
    write_mbr(
        f,
        disk_id,
        &[
            (0x0c, fw_at / 512, fw_size / 512),
            (0x83, root_at / 512, rsize / 512),
        ],
    )?;
    f.sync_all()?;
    make_fat(
        tmp.path(),
        fw_at,
        fw_size,
        // Upper case: mformat writes the label as given into the boot sector but upper-cased into the root
        // directory, and fsck.fat flags the two differing. cloud-init tries the label in both cases.
        "SYSTEM-BOOT",
        &fat_serial,
        &fwdir,
        "the firmware partition",
    )?;
    make_ext4(tmp.path(), root_at, rsize, &fs_uuid, root)?;
    if f.metadata()?.len() != total {
        bail!("mkfs.ext4 changed the image size (expected {total} bytes)");
    }

    let mut inputs = build_inputs(&p, "rpi-firmware+ext4");
    inputs.insert("root-partuuid".into(), root_part);
    inputs.insert("board".into(), inp.board.as_str().into());
    let seed = SeedRef {
        method: super::decl::SeedMethod::SystemBoot,
        partition: 1,
        partition_added: false,
        grew_from: None,
        files: super::seed_files(&inp.seed),
    };
    drop(p);
    super::publish(
        tmp,
        &inp.out,
        inp.host,
        inp.spec_revision,
        None,
        Some(BuildRef {
            kind: "mmdebstrap".into(),
            inputs,
        }),
        Some(seed),
        inp.progress,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler(dir: &Path, name: &str, enabled: bool, flags: &str, magic: &str) {
        std::fs::write(
            dir.join(name),
            format!(
                "{}\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: {flags}\noffset 0\nmagic {magic}\nmask ffffffffffffff00fffffffffffffffffeffffff\n",
                if enabled { "enabled" } else { "disabled" }
            ),
        )
        .unwrap();
    }

    #[test]
    fn foreign_builds_need_an_enabled_binfmt_handler_with_the_f_flag() {
        let a64 = "7f454c460201010000000000000000000200b700";
        let t = tempfile::tempdir().unwrap();
        let foreign = if native_arch() == "arm64" {
            "amd64"
        } else {
            "arm64"
        };
        assert_eq!(strategy_in(native_arch(), t.path()).unwrap(), "native");
        // binfmt_misc not mounted.
        let e = format!("{:#}", strategy_in(foreign, t.path()).unwrap_err());
        assert!(e.contains("binfmt_misc is not mounted"), "{e}");
        std::fs::write(t.path().join("register"), "").unwrap();
        std::fs::write(t.path().join("status"), "enabled\n").unwrap();
        if foreign != "arm64" {
            return;
        }
        // Mounted, nothing for aarch64 (another architecture's handler does not count).
        handler(t.path(), "python3.11", true, "", "a70d0d0a");
        let e = format!("{:#}", strategy_in("arm64", t.path()).unwrap_err());
        assert!(e.contains("no binfmt_misc handler for aarch64"), "{e}");
        assert!(e.contains("qemu-user-binfmt"), "{e}");
        // Registered without F: the interpreter is not reachable inside the chroot.
        handler(t.path(), "qemu-aarch64", true, "OP", a64);
        let e = format!("{:#}", strategy_in("arm64", t.path()).unwrap_err());
        assert!(e.contains("F flag"), "{e}");
        // Disabled.
        handler(t.path(), "qemu-aarch64", false, "OPF", a64);
        let e = format!("{:#}", strategy_in("arm64", t.path()).unwrap_err());
        assert!(e.contains("disabled"), "{e}");
        handler(t.path(), "qemu-aarch64", true, "POF", a64);
        assert_eq!(strategy_in("arm64", t.path()).unwrap(), "emulated");
        assert!(strategy_in("riscv64", t.path()).is_err());
    }

    #[test]
    fn config_txt_and_cmdline_txt() {
        let cfg = "# comment\n[pi4]\narm_64bit=1\nkernel=vmlinuz-6.1.0-1-arm64\n# kernel=old\ninitramfs initrd.img-6.1.0-1-arm64 followkernel\n[all]\n";
        assert_eq!(
            rpi_boot_files(cfg),
            (
                Some("vmlinuz-6.1.0-1-arm64".into()),
                Some("initrd.img-6.1.0-1-arm64".into())
            )
        );
        assert_eq!(rpi_boot_files("arm_64bit=1\n"), (None, None));
        assert_eq!(
            rpi_cmdline(
                "console=tty0 console=ttyS1,115200 root=/dev/mmcblk0p2 rw fsck.repair=yes net.ifnames=0 cma=64M rootwait\n",
                "0a1b2c3d-02"
            ),
            "root=PARTUUID=0a1b2c3d-02 console=tty0 console=ttyS1,115200 rw fsck.repair=yes net.ifnames=0 cma=64M rootwait\n"
        );
        assert_eq!(
            rpi_cmdline("", "0a1b2c3d-02"),
            "root=PARTUUID=0a1b2c3d-02 rootwait\n"
        );
    }

    #[test]
    fn the_mbr_reads_back() {
        let t = tempfile::tempfile().unwrap();
        t.set_len(64 << 20).unwrap();
        write_mbr(&t, 0x0a1b2c3d, &[(0x0c, 8192, 32768), (0x83, 40960, 90112)]).unwrap();
        let table = super::super::part::read(&t).unwrap();
        assert_eq!(table.scheme, super::super::part::Scheme::Mbr);
        let got: Vec<(u32, u64, u64, bool)> = table
            .parts
            .iter()
            .map(|p| (p.number, p.start_lba, p.sectors, p.maybe_fat))
            .collect();
        assert_eq!(got, [(1, 8192, 32768, true), (2, 40960, 90112, false)]);
        assert!(write_mbr(&t, 1, &[(0x83, 1 << 33, 1)]).is_err());
    }

    #[test]
    fn recipes_for_the_pi_use_non_free_firmware_and_differ_by_architecture() {
        let x = Recipe::new("bookworm", Arch::X86_64, Board::GenericUefi, &[]).unwrap();
        let p = Recipe::new("bookworm", Arch::Aarch64, Board::Rpi4, &[]).unwrap();
        assert_eq!(p.arch, "arm64");
        assert!(p.packages.contains(&"raspi-firmware".to_string()));
        assert!(p.packages.contains(&"linux-image-arm64".to_string()));
        assert!(p
            .options
            .iter()
            .any(|o| o == "--components=main,non-free-firmware"));
        assert!(p.options.iter().any(|o| o == "--mode=unshare"));
        // The build-speed cuts apply to both architectures; the initramfs is made once, at the end.
        for r in [&x, &p] {
            assert!(r
                .options
                .iter()
                .any(|o| o == "--dpkgopt=path-include=/usr/share/doc/*/copyright"));
            assert!(r.options.iter().any(|o| o.starts_with("--hook-directory=")));
            let div = r
                .options
                .iter()
                .position(|o| o.starts_with("--essential-hook=") && o.contains("dpkg-divert"))
                .expect("update-initramfs diverted");
            let once = r
                .options
                .iter()
                .position(|o| o.contains("update-initramfs -c -k all"))
                .expect("one update-initramfs at the end");
            assert!(r.options[once].starts_with("--customize-hook="));
            assert!(div < once);
        }
        assert_ne!(x.key(), p.key());
        assert_ne!(x.cache_path(Path::new("c")), p.cache_path(Path::new("c")));
        assert!(Recipe::new("bookworm", Arch::Aarch64, Board::GenericUefi, &[]).is_err());
        assert!(Recipe::new("bookworm", Arch::Aarch64, Board::Rpi4, &["Bad Name".into()]).is_err());
    }
}
