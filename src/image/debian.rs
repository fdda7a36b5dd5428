//! Debian images built from packages: mmdebstrap (root mode) makes the root file system as a tarball,
//! cached under `out/cache/rootfs/` by (suite, architecture, sorted package set, mmdebstrap options); the
//! image is assembled without loop mounts or root-only mounts:
//!
//! * x86_64 (`gpt-esp-systemd-boot+ext4`): GPT written here (`gpt.rs`) with an EFI system partition
//!   (FAT made by `mformat`, filled by `mcopy`: systemd-boot as the removable-media loader
//!   `EFI/BOOT/BOOTX64.EFI`, `loader/loader.conf`, one boot entry, the kernel and initrd from the root file
//!   system), an ext4 root made by `mkfs.ext4 -d DIR`, and a `CIDATA` FAT with the host's cloud-init seed;
//!   every file system is made in place at its partition's offset in the image.
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
            "--mode=root".to_string(),
            "--variant=apt".to_string(),
            format!("--arch={deb_arch}"),
            format!("--components={components}"),
            "--format=tar".to_string(),
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

/// Build HOST's Debian image; the flag says whether the root file system came from the cache.
pub fn build(inp: &DebianInput) -> Result<(Built, bool)> {
    if inp.arch != Arch::X86_64 || inp.board.is_rpi() {
        bail!(
            "host `{}`: building the Raspberry Pi (aarch64) Debian image needs foreign-architecture maintainer scripts (binfmt_misc + qemu-user-static) or an arm64 machine; this labforge builds x86_64 UEFI Debian images only (see docs/rebuild.md)",
            inp.host
        );
    }
    for (t, p) in [
        ("mkfs.ext4", "e2fsprogs"),
        ("mformat", "mtools"),
        ("mcopy", "mtools"),
        ("tar", "tar"),
    ] {
        need(t, p)?;
    }
    let recipe = Recipe::new(inp.suite, inp.arch, inp.board, inp.packages)?;
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
    let (kernel, initrd) = kernel_files(&root)?;
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
    let used = dir_size(&root);
    let root_size = ((used * 3 / 2 + (768 << 20)).div_ceil(1 << 20)) << 20;

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
        .tempfile_in(&outdir)?;
    let f = tmp.as_file();
    f.set_len(total)?;
    gpt::write(f, total, &parts, &placed, &disk_uuid)?;
    f.sync_all()?;

    // ESP: FAT32 by mformat, filled by mcopy.
    let esp_at = format!("{}@@{}", tmp.path().display(), placed[0].offset());
    let serial = &esp_uuid[..8];
    run(
        Command::new("mformat")
            .arg("-i")
            .arg(&esp_at)
            .args(["-F", "-v", "ESP", "-N", serial])
            .arg("-T")
            .arg((placed[0].len() / 512).to_string())
            .args(["-h", "64", "-s", "32", "::"]),
        "mformat (the EFI system partition)",
    )?;
    let mut mc = Command::new("mcopy");
    mc.arg("-i").arg(&esp_at).args(["-s", "-Q", "-m"]);
    for e in std::fs::read_dir(&espdir)? {
        mc.arg(e?.path());
    }
    mc.arg("::/");
    run(&mut mc, "mcopy (filling the EFI system partition)")?;

    // Root: ext4 made from the directory, in place.
    run(
        Command::new("mkfs.ext4")
            .args(["-F", "-q", "-L", "root", "-U", &fs_uuid, "-E"])
            .arg(format!(
                "offset={},root_owner=0:0,nodiscard",
                placed[1].offset()
            ))
            .arg("-d")
            .arg(&root)
            .arg(tmp.path())
            .arg(format!("{}k", placed[1].len() / 1024))
            .env("E2FSPROGS_FAKE_TIME", "315532800"),
        "mkfs.ext4 -d (the root file system)",
    )?;
    if f.metadata()?.len() != total {
        bail!("mkfs.ext4 changed the image size (expected {total} bytes)");
    }
    let c = placed[2];
    let vol = u32::from_str_radix(&id("cidata-vol")[..8], 16).unwrap_or(0);
    super::format_cidata(f, c.offset(), c.len(), c.start_lba as u32, &inp.seed, vol)
        .with_context(|| format!("writing the cloud-init seed for {}", inp.host))?;
    drop(work);

    let mut inputs = BTreeMap::new();
    inputs.insert("suite".into(), recipe.suite.clone());
    inputs.insert("arch".into(), recipe.arch.clone());
    inputs.insert("packages".into(), recipe.packages.join(","));
    inputs.insert("options".into(), recipe.options.join(" "));
    inputs.insert("cache-key".into(), recipe.key());
    inputs.insert("rootfs-sha256".into(), tar_sha);
    inputs.insert("layout".into(), "gpt-esp-systemd-boot+ext4".into());
    inputs.insert("root-partuuid".into(), root_uuid);
    let seed = SeedRef {
        method: super::decl::SeedMethod::Cidata,
        partition: 3,
        partition_added: true,
        grew_from: None,
        files: super::seed_files(&inp.seed),
    };
    let built = super::publish(
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
    )?;
    Ok((built, cached))
}
