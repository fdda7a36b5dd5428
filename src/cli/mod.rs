//! Command-line interface (clap derive). `main.rs` only calls [`run`].

mod commands;
mod rebuild;
mod remote;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Exit codes are API: 0 ok, 1 checks failed / drift, 2 usage or input error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Failed = 1,
    Input = 2,
}

const AFTER_HELP: &str = "\
Examples:
  labforge check                       validate the spec in ./hosts
  labforge plan --json prometheus      what would be rendered, built and deployed for one host
  labforge render && git diff          render every artifact of the example lab
  labforge render --check              exit 1 if committed renders drifted from the spec

Exit codes: 0 ok, 1 checks failed or drift, 2 usage or input error.";

#[derive(Debug, Parser)]
#[command(name = "labforge", version, about = "One spec for the homelab: render, build, flash, deploy and verify", after_help = AFTER_HELP)]
pub struct Cli {
    /// The spec directory (every *.toml below it is one spec).
    #[arg(long, global = true, default_value = "hosts", env = "LABFORGE_SPEC")]
    pub spec: PathBuf,
    /// More detail on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone, Default)]
pub struct JsonFlag {
    /// Machine-readable JSON on stdout (diagnostics and progress stay on stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the spec: every problem at once, with file:line:col, rule id and fix.
    #[command(
        after_help = "Exit 0 when the spec is valid (warnings allowed), 2 when it has errors."
    )]
    Check {
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Print what labforge would render, build and deploy, per host (a pure dry-run).
    #[command(
        after_help = "The --json form is documented in docs/plan-json.md and stable within format_version."
    )]
    Plan {
        #[command(flatten)]
        json: JsonFlag,
        /// Only these hosts (default: all).
        hosts: Vec<String>,
    },
    /// Render artifacts (NixOS, cloud-init, Talos, Compose) from the spec.
    Render {
        /// Compare instead of writing: exit 1 and name every file that differs.
        #[arg(long)]
        check: bool,
        /// Repository root for committed renders (default: the spec directory's parent).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        json: JsonFlag,
        hosts: Vec<String>,
    },
    /// Build a host's bootable image (vendor base + the host's cloud-init seed, manifest, block map).
    Image {
        #[command(subcommand)]
        action: ImageAction,
    },
    /// Write an image to a whole disk through its block map, verified by read-back.
    #[command(
        after_help = "The target must be a whole, unmounted disk that does not hold the running system.\nThe first MiB is written last: an interrupted or failed flash leaves a disk that does not boot.\nExit 0 written and verified, 1 write or verification failed / interrupted, 2 refused."
    )]
    Flash {
        /// The image (its .bmap and .manifest.json beside it).
        image: PathBuf,
        /// The whole disk to write (e.g. /dev/sdX, /dev/mmcblkN).
        #[arg(long = "to", value_name = "TARGET")]
        to: PathBuf,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Allow TARGET to be a regular file (tests, benchmarks, VM disks).
        #[arg(long)]
        allow_file: bool,
        /// The block map (default: IMAGE.bmap).
        #[arg(long)]
        bmap: Option<PathBuf>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Deploy hosts over SSH: run the plan's steps per host, in parallel, strict host keys.
    #[command(
        after_help = "Exit 0 when every host deployed (or had nothing to change), 1 when a host failed or waits for an operator gate\n(with --dry-run: also when a host would change), 2 on input errors."
    )]
    Deploy {
        /// Hosts to deploy; a Talos cluster's name deploys every node of it, then bootstraps (once), fetches the
        /// kubeconfig and waits for health, through talosctl.
        hosts: Vec<String>,
        /// Every host that runs SSH.
        #[arg(long, conflicts_with_all = ["hosts", "on"])]
        all: bool,
        /// Hosts with this tag (or role).
        #[arg(long, value_name = "TAG", conflicts_with = "hosts")]
        on: Option<String>,
        /// How many hosts at once.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=512))]
        parallel: u16,
        /// Connect read-only and report what each step would change (remote sha256 of every planned file,
        /// the ruleset and `.env` files); nothing is written or restarted. Exit 1 when a host would change.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: list the planned steps without connecting.
        #[arg(long, requires = "dry_run")]
        offline: bool,
        /// Seconds a NixOS switch has to be confirmed on a fresh connection before the host rolls back.
        #[arg(long, default_value_t = 300)]
        confirm_timeout: u64,
        /// Seconds a Talos bootstrap node may take after its first install (install + reboot) until its
        /// authenticated API answers.
        #[arg(long, default_value_t = 900, value_name = "SECONDS")]
        talos_wait: u64,
        #[command(flatten)]
        ssh: SshArgs,
        /// One JSON event per line on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Verify the hardening rules on live hosts over SSH.
    #[command(
        after_help = "Exit 0 when every check passes, 1 on findings, 2 when a check could not be evaluated."
    )]
    Verify {
        hosts: Vec<String>,
        #[arg(long, conflicts_with_all = ["hosts", "on"])]
        all: bool,
        #[arg(long, value_name = "TAG", conflicts_with = "hosts")]
        on: Option<String>,
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
        parallel: u16,
        /// Write JUnit XML here as well.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// How long the controller's TCP/KEXINIT probes wait (a filtered port costs this much).
        #[arg(long, default_value_t = 2000, value_name = "MS")]
        probe_timeout_ms: u64,
        #[command(flatten)]
        ssh: SshArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Rebuild a disposable host from nothing: image, write or boot it, wait for SSH (pinned key), deploy, verify.
    #[command(
        after_help = "Refused (exit 2) unless the host is disposable and every persistent path is on a remote mount or a\ndisposable disk. Exactly one of --flash DEV or --boot qemu. Exit 0 when every phase passed, 1 when one failed."
    )]
    Rebuild {
        host: String,
        /// Write the image to this whole disk (as `labforge flash --to DEV`), then wait for the host to boot.
        #[arg(long, value_name = "DEV", conflicts_with = "boot")]
        flash: Option<PathBuf>,
        /// Boot the image in a VM instead (`qemu`: TCG, OVMF, restricted user networking, SSH forwarded to loopback).
        #[arg(long, value_name = "qemu", value_parser = ["qemu"])]
        boot: Option<String>,
        /// Allow --flash to write a regular file (tests, VM disks).
        #[arg(long)]
        allow_file: bool,
        /// Do not ask before flashing.
        #[arg(long)]
        yes: bool,
        /// Build the image even if the one in out/images matches the spec (manifest + hash).
        #[arg(long)]
        rebuild_image: bool,
        /// Nix remote builders for NixOS images (passed to `nix build --builders`).
        #[arg(long)]
        builders: Option<String>,
        /// Seconds to wait for SSH after boot.
        #[arg(long, default_value_t = 900)]
        ssh_timeout: u64,
        /// Guest memory for --boot qemu (MiB).
        #[arg(long, default_value_t = 1536)]
        memory: u32,
        /// With --boot qemu: leave the VM running at the end (its pid and SSH port are printed).
        #[arg(long)]
        keep_running: bool,
        #[command(flatten)]
        ssh: SshArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Operator-validated gates (seed 001): show evidence, record the operator's sign-off.
    Gate {
        #[command(subcommand)]
        action: GateAction,
    },
    /// The lab as a graph (Graphviz DOT): networks, hosts, stacks, clusters, mounts.
    Graph,
    /// The secrets store (age-encrypted, in secrets/ beside the spec).
    Secrets {
        #[command(subcommand)]
        action: SecretsAction,
    },
    /// Shell completions for bash, zsh, fish, elvish or powershell.
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (labforge.1 and one per subcommand) into a directory.
    Man { dir: PathBuf },
}

#[derive(Debug, Args, Clone)]
pub struct SshArgs {
    /// The operator's private key (default: ssh-agent via SSH_AUTH_SOCK).
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Log in as this user (default: the host's first admin).
    #[arg(long)]
    pub user: Option<String>,
    /// known_hosts to use as-is (default: .labforge/known_hosts, rewritten from the secrets store).
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Accept and record an unknown host key for this host (repeatable). Never for a changed key.
    #[arg(long, value_name = "HOST")]
    pub trust_on_first_use: Vec<String>,
    /// Seconds to wait for a connection.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout: u64,
    /// Connect to ADDR:PORT when the spec says HOSTADDR:PORT (e.g. a VM's SSH forwarded to loopback);
    /// host keys are still checked for HOSTADDR. Repeatable.
    #[arg(long, value_name = "HOSTADDR:PORT=ADDR:PORT", value_parser = parse_via)]
    pub connect_via: Vec<(std::net::SocketAddr, std::net::SocketAddr)>,
}

fn parse_via(s: &str) -> Result<(std::net::SocketAddr, std::net::SocketAddr), String> {
    let (a, b) = s
        .split_once('=')
        .ok_or_else(|| "expected HOSTADDR:PORT=ADDR:PORT".to_string())?;
    let p = |x: &str| {
        x.parse::<std::net::SocketAddr>()
            .map_err(|e| format!("`{x}` is not an address:port ({e})"))
    };
    Ok((p(a)?, p(b)?))
}

#[derive(Debug, Subcommand)]
pub enum ImageAction {
    /// Build HOST's image: its declared base (images/<name>.toml, checked against the pinned sha256) with
    /// the host's cloud-init seed written in; IMAGE.bmap and IMAGE.manifest.json beside it.
    Build {
        host: String,
        /// The base image file (default: the declaration's source, or out/cache/images/ for URLs).
        #[arg(long)]
        base: Option<PathBuf>,
        /// Output image (default: out/images/HOST.img).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Take the seed files (user-data, meta-data, network-config, …) from this directory, e.g.
        /// out/cloud-init/HOST after `labforge render`, instead of rendering them afresh.
        #[arg(long, value_name = "DIR")]
        seed_dir: Option<PathBuf>,
        /// NixOS hosts: Nix remote builders, passed through to `nix build --builders` (NIX_CONFIG and
        /// nix.conf apply as usual). With builders, an aarch64 image is built on them, else emulated.
        #[arg(long)]
        builders: Option<String>,
        /// NixOS hosts: the flake to build (default: the repository root, where `labforge render` writes it).
        #[arg(long, value_name = "DIR")]
        flake: Option<PathBuf>,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum GateAction {
    /// List gates and whether the operator has signed them off for the current spec.
    List {
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Show a gate's checklist and evidence commands.
    Show { id: String },
    /// Record the operator's sign-off. Interactive: the operator types the gate id to confirm.
    Confirm {
        id: String,
        /// Who signs off (default: $USER).
        #[arg(long)]
        by: Option<String>,
        /// A note kept with the sign-off.
        #[arg(long)]
        note: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretsAction {
    /// Create an age identity for the operator (if none) and print its public key for site.age_recipients.
    Init,
    /// List secrets: every reference in the spec and whether the store or environment has a value.
    List {
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Set a store secret's value from stdin.
    Set { name: String },
    /// Generate values for every `store` secret that has a generator and no value yet.
    Generate,
}

pub fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                Exit::Input as i32
            } else {
                0
            };
            let _ = e.print();
            return code;
        }
    };
    match commands::dispatch(cli) {
        Ok(code) => code as i32,
        Err(e) => {
            eprintln!("error: {e:#}");
            Exit::Input as i32
        }
    }
}
