//! The cloud-init backend: NoCloud seeds for every `os = "ubuntu"` / `"debian"` host.
//!
//! Per host:
//! * `out/cloud-init/<host>/{user-data,meta-data,network-config}` — sensitive (user-data carries the SSH host
//!   private key from the secrets store), mode 0600, never committed. On Raspberry Pi boards these three files
//!   go onto the `system-boot` FAT partition of Ubuntu's preinstalled image; on x86 they form a `CIDATA`
//!   seed (a FAT/ISO volume labelled CIDATA). The image step writes them; this backend only renders them.
//! * `rendered/<host>/sshd_config.d/10-labforge.conf` (Kind::SshdDropin) and `rendered/<host>/nftables.conf`
//!   (Kind::Nftables) — committed, not secret; deploy uploads them, and user-data embeds the same bytes.

use crate::render::{compose, firewall};
use crate::render::{Artifact, Backend, Kind, RenderCtx};
use crate::spec::model::*;
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

pub struct CloudInit;

pub const NAME: &str = "cloud-init";
pub const SSHD_DROPIN_NAME: &str = "10-labforge.conf";
/// Where stacks live on cloud-init hosts (matches the plan's deploy steps).
pub const STACKS_ON_HOST: &str = "/opt/labforge/stacks";

const SSHD_TEMPLATE: &str = include_str!("../../../templates/cloud-init/sshd-dropin.conf.tera");

/// Marker that replaces the private host key when the instance id is computed.
const REDACTED: &str = "<redacted: SSH host private key>";

pub fn seed_dir(host: &str) -> String {
    format!("out/cloud-init/{host}")
}
pub fn sshd_dropin_path(host: &str) -> String {
    format!("rendered/{host}/sshd_config.d/{SSHD_DROPIN_NAME}")
}
pub fn nftables_path(host: &str) -> String {
    format!("rendered/{host}/nftables.conf")
}

impl Backend for CloudInit {
    fn name(&self) -> &'static str {
        NAME
    }
    fn plan(&self, spec: &Spec) -> Vec<Artifact> {
        let mut out = Vec::new();
        for h in spec.hosts.values().filter(|h| h.os.uses_cloud_init()) {
            let hosts = vec![h.name.clone()];
            let d = seed_dir(&h.name);
            for (f, k) in [
                ("user-data", Kind::CloudInitUserData),
                ("meta-data", Kind::CloudInitMetaData),
                ("network-config", Kind::CloudInitNetworkConfig),
            ] {
                out.push(Artifact::new(format!("{d}/{f}"), k, NAME, hosts.clone()).sensitive());
            }
            out.push(Artifact::new(
                sshd_dropin_path(&h.name),
                Kind::SshdDropin,
                NAME,
                hosts.clone(),
            ));
            out.push(Artifact::new(
                nftables_path(&h.name),
                Kind::Nftables,
                NAME,
                hosts,
            ));
        }
        out
    }
    fn render(&self, ctx: &RenderCtx, artifacts: &[&Artifact]) -> Result<Vec<(String, Vec<u8>)>> {
        let spec = ctx.spec;
        let want: BTreeSet<&str> = artifacts.iter().map(|a| a.path.as_str()).collect();
        let mut out = Vec::new();
        let dirs = stack_dirs_of(spec);
        for h in spec.hosts.values().filter(|h| h.os.uses_cloud_init()) {
            let d = seed_dir(&h.name);
            let seed_paths = [
                format!("{d}/user-data"),
                format!("{d}/meta-data"),
                format!("{d}/network-config"),
            ];
            let sshd_p = sshd_dropin_path(&h.name);
            let nft_p = nftables_path(&h.name);
            let need_seed = seed_paths.iter().any(|p| want.contains(p.as_str()));
            if !need_seed && !want.contains(sshd_p.as_str()) && !want.contains(nft_p.as_str()) {
                continue;
            }
            let sshd = sshd_dropin(spec, h).with_context(|| format!("host `{}`", h.name))?;
            let nft = nftables(spec, h).with_context(|| format!("host `{}`", h.name))?;
            if need_seed {
                let store = ctx.store.ok_or_else(|| {
                    anyhow!("internal error: sensitive cloud-init seed requested without a secrets store")
                })?;
                let key = store.ssh_host_key(&h.name)?;
                let seed = render_seed(
                    spec,
                    h,
                    &sshd,
                    &nft,
                    key.private.expose_str()?,
                    &key.public,
                    &dirs,
                )
                .with_context(|| format!("host `{}`", h.name))?;
                out.push((seed_paths[0].clone(), seed.user_data.into_bytes()));
                out.push((seed_paths[1].clone(), seed.meta_data.into_bytes()));
                out.push((seed_paths[2].clone(), seed.network_config.into_bytes()));
            }
            out.push((sshd_p, sshd.into_bytes()));
            out.push((nft_p, nft.into_bytes()));
        }
        out.retain(|(p, _)| want.contains(p.as_str()));
        Ok(out)
    }
    fn owned_dirs(&self) -> Vec<&'static str> {
        vec!["rendered"]
    }
}

/// The three NoCloud files of one host.
pub struct Seed {
    pub user_data: String,
    pub meta_data: String,
    pub network_config: String,
}

/// Every stack's directories (computed once per render, not once per host).
pub type StackDirs = std::collections::BTreeMap<String, Vec<compose::StackDir>>;

pub fn stack_dirs_of(spec: &Spec) -> StackDirs {
    spec.stacks
        .values()
        .map(|st| (st.name.clone(), compose::stack_dirs(spec, st)))
        .collect()
}

/// Render a host's seed from the given sshd drop-in, nftables ruleset and SSH host key pair.
pub fn render_seed(
    spec: &Spec,
    h: &Host,
    sshd: &str,
    nft: &str,
    host_private_key: &str,
    host_public_key: &str,
    dirs: &StackDirs,
) -> Result<Seed> {
    let sources = compose::host_sources(spec, &h.name);
    let redacted = user_data(
        spec,
        h,
        &sources,
        sshd,
        nft,
        REDACTED,
        host_public_key,
        dirs,
    )?;
    let user_data = user_data(
        spec,
        h,
        &sources,
        sshd,
        nft,
        host_private_key,
        host_public_key,
        dirs,
    )?;
    let iid = instance_id(&h.name, &redacted);
    let meta_data = format!(
        "{}{}",
        compose::header(
            &sources,
            "NoCloud meta-data: instance-id changes whenever the rendered user-data does."
        ),
        serde_yaml_ng::to_string(&MetaData {
            instance_id: iid,
            local_hostname: h.name.clone(),
        })?
    );
    let network_config = network_config(spec, h, &sources)?;
    Ok(Seed {
        user_data,
        meta_data,
        network_config,
    })
}

/// `iid-<host>-<12 hex of sha256(host NUL user-data without the private key)>`.
pub fn instance_id(host: &str, redacted_user_data: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut d = Sha256::new();
    d.update(host.as_bytes());
    d.update([0]);
    d.update(redacted_user_data.as_bytes());
    format!("iid-{host}-{}", &hex::encode(d.finalize())[..12])
}

#[derive(Serialize)]
struct MetaData {
    #[serde(rename = "instance-id")]
    instance_id: String,
    #[serde(rename = "local-hostname")]
    local_hostname: String,
}

// ---------------------------------------------------------------------------------------------------------
// sshd drop-in

/// Addresses sshd listens on: the host's addresses on `hardening.ssh_networks`, else its management address.
/// Where sshd listens (the host's derived facts), refused when the spec gives it nowhere to listen.
fn ssh_listen(h: &Host) -> Result<Vec<(String, IpAddr)>> {
    let want = h.hardening.ssh_networks.len().max(1);
    if h.facts.ssh_listen.len() < want {
        if h.hardening.ssh_networks.is_empty() {
            bail!("no static address on a management network: add an interface on the MGMT network with an address (SSH listens only there)");
        }
        let missing: Vec<&str> = h
            .hardening
            .ssh_networks
            .iter()
            .filter(|n| {
                !h.interfaces
                    .iter()
                    .any(|i| &i.network == *n && i.address.is_some())
            })
            .map(|n| n.as_str())
            .collect();
        bail!(
            "hardening.ssh_networks lists `{}` but the host has no static address there: add one or drop it",
            missing.join("`, `")
        );
    }
    Ok(h.facts.ssh_listen.clone())
}

pub fn sshd_dropin(spec: &Spec, h: &Host) -> Result<String> {
    let hd = &h.hardening;
    let listen: Vec<String> = ssh_listen(h)?
        .into_iter()
        .map(|(_, a)| match a {
            IpAddr::V4(_) => a.to_string(),
            IpAddr::V6(_) => format!("[{a}]"),
        })
        .collect();
    let users = h.facts.admins.clone();
    if users.is_empty() {
        bail!("no admin users: add [[site.admins]] with SSH keys (root login is disabled)");
    }
    let yn = |b: bool| if b { "yes" } else { "no" };
    let mut ynm = BTreeMap::new();
    ynm.insert("pubkey_authentication", yn(hd.pubkey_authentication));
    ynm.insert("password_authentication", yn(hd.password_authentication));
    ynm.insert(
        "kbd_interactive_authentication",
        yn(hd.kbd_interactive_authentication),
    );
    ynm.insert("x11_forwarding", yn(hd.x11_forwarding));
    ynm.insert("allow_agent_forwarding", yn(hd.allow_agent_forwarding));
    ynm.insert("allow_tcp_forwarding", yn(hd.allow_tcp_forwarding));
    ynm.insert(
        "disable_forwarding",
        yn(!(hd.x11_forwarding || hd.allow_agent_forwarding || hd.allow_tcp_forwarding)),
    );
    let mut c = tera::Context::new();
    c.insert(
        "header",
        compose::header(
            &compose::host_sources(spec, &h.name),
            &format!("Hardened sshd settings of host `{}`.", h.name),
        )
        .trim_end(),
    );
    c.insert("file_name", SSHD_DROPIN_NAME);
    c.insert("h", hd);
    c.insert("yn", &ynm);
    c.insert("listen", &listen);
    c.insert("users", &users);
    tpl("sshd-dropin", &c)
}

/// The compiled templates, built once per process (compiling per host made seeding N hosts slow).
fn engine() -> Result<&'static tera::Tera> {
    static ENGINE: std::sync::OnceLock<std::result::Result<tera::Tera, String>> =
        std::sync::OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut t = tera::Tera::default();
            t.autoescape_on(vec![]);
            t.add_raw_templates([("sshd-dropin", SSHD_TEMPLATE)])
                .map_err(|e| format!("{e:?}"))?;
            Ok(t)
        })
        .as_ref()
        .map_err(|e| anyhow!("internal error: a cloud-init template does not compile: {e}"))
}

fn tpl(name: &str, c: &tera::Context) -> Result<String> {
    engine()?
        .render(name, c)
        .map_err(|e| anyhow!("internal error: rendering template {name}: {e:?}"))
}

// ---------------------------------------------------------------------------------------------------------
// nftables

/// The host's `/etc/nftables.conf`: its exposure policy compiled by `render::firewall`.
pub fn nftables(spec: &Spec, h: &Host) -> Result<String> {
    let hd = &h.hardening;
    if !matches!(hd.firewall_default.as_str(), "drop" | "reject") {
        bail!(
            "hardening.firewall_default = `{}`: labforge renders `drop` or `reject` for incoming traffic",
            hd.firewall_default
        );
    }
    let x = crate::plan::exposure::exposure(spec, h)
        .ok_or_else(|| anyhow!("internal error: host `{}` has no exposure policy", h.name))?;
    let header = compose::header(
        &compose::host_sources(spec, &h.name),
        &format!(
            "nftables ruleset of host `{}`: default {} for incoming traffic.",
            h.name, hd.firewall_default
        ),
    );
    let body = firewall::table_body(
        &x,
        firewall::Plumbing {
            dhcp_client: h.interfaces.iter().any(|i| i.address.is_none()),
        },
    );
    Ok(firewall::nftables_conf(header.trim_end(), &body))
}

// ---------------------------------------------------------------------------------------------------------
// user-data

#[derive(Serialize)]
struct UserData {
    hostname: String,
    fqdn: String,
    prefer_fqdn_over_hostname: bool,
    manage_etc_hosts: bool,
    locale: String,
    timezone: String,
    disable_root: bool,
    ssh_pwauth: bool,
    users: Vec<User>,
    ssh_deletekeys: bool,
    ssh_genkeytypes: Vec<String>,
    ssh_keys: BTreeMap<String, String>,
    package_update: bool,
    package_upgrade: bool,
    packages: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disk_setup: Option<BTreeMap<String, DiskSetup>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    fs_setup: Vec<FsSetup>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    mounts: Vec<Vec<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    bootcmd: Vec<Vec<String>>,
    write_files: Vec<WriteFile>,
    runcmd: Vec<Vec<String>>,
}

#[derive(Serialize)]
struct User {
    name: String,
    gecos: String,
    groups: Vec<String>,
    shell: String,
    sudo: String,
    lock_passwd: bool,
    ssh_authorized_keys: Vec<String>,
}

#[derive(Serialize)]
struct DiskSetup {
    table_type: String,
    layout: bool,
    overwrite: bool,
}

#[derive(Serialize)]
struct FsSetup {
    label: String,
    filesystem: String,
    device: String,
    partition: String,
    overwrite: bool,
}

#[derive(Serialize)]
struct WriteFile {
    path: String,
    owner: String,
    permissions: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    defer: bool,
    content: String,
}

/// Packages of the host plus what the seed itself needs.
fn packages(spec: &Spec, h: &Host) -> Vec<String> {
    let mut p: BTreeSet<String> = h.packages.iter().cloned().collect();
    p.insert("nftables".into());
    p.insert("openssh-server".into());
    if h.mounts.iter().any(|m| m.kind == MountKind::Nfs) {
        p.insert("nfs-common".into());
    }
    if h.mounts.iter().any(|m| m.kind == MountKind::Smb) {
        p.insert("cifs-utils".into());
    }
    if !h.stacks.is_empty() {
        if !p.contains("docker-ce") {
            p.insert("docker.io".into());
        }
        let has_compose = [
            "docker-compose-v2",
            "docker-compose-plugin",
            "docker-compose",
        ]
        .iter()
        .any(|x| p.contains(*x));
        if !has_compose {
            p.insert(
                match h.os {
                    Os::Debian => "docker-compose",
                    _ => "docker-compose-v2",
                }
                .into(),
            );
        }
    }
    let _ = spec;
    p.into_iter().collect()
}

/// The storage host's address for a mount: `Mount::server` when the validator resolved it, else the
/// `from` host's static address on a network both hosts share (storage role first, then servers).
fn mount_server(spec: &Spec, h: &Host, m: &Mount) -> Result<IpAddr> {
    if !m.server.is_unspecified() {
        return Ok(m.server);
    }
    let srv = spec.hosts.get(&m.from).ok_or_else(|| {
        anyhow!(
            "mount of {} comes from `{}`, which is not a host of the spec",
            m.at,
            m.from
        )
    })?;
    srv.interfaces
        .iter()
        .filter(|si| si.address.is_some() && h.interfaces.iter().any(|hi| hi.network == si.network))
        .min_by_key(|si| match spec.networks.get(&si.network).map(|n| n.role) {
            Some(NetRole::Storage) => 0,
            Some(NetRole::Servers) => 1,
            _ => 2,
        })
        .and_then(|si| si.address)
        .ok_or_else(|| {
            anyhow!(
                "mount of {} from `{}`: the hosts share no network with a static address on `{}`; put both on the storage network",
                m.at, m.from, m.from
            )
        })
}

#[allow(clippy::too_many_arguments)]
fn user_data(
    spec: &Spec,
    h: &Host,
    sources: &[String],
    sshd: &str,
    nft: &str,
    host_private_key: &str,
    host_public_key: &str,
    dirs: &StackDirs,
) -> Result<String> {
    let mut users = Vec::new();
    for name in h.facts.admins.clone() {
        let a = spec
            .site
            .admins
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| {
                anyhow!("admin `{name}` is not in [[site.admins]]: declare it with its SSH keys")
            })?;
        if a.ssh_keys.is_empty() {
            bail!("admin `{name}` has no SSH keys: add ssh_keys (password login is off)");
        }
        users.push(User {
            name: a.name.clone(),
            gecos: format!("{} (labforge admin)", a.name),
            groups: vec!["adm".into(), "sudo".into()],
            shell: "/bin/bash".into(),
            sudo: "ALL=(ALL) NOPASSWD:ALL".into(),
            lock_passwd: true,
            ssh_authorized_keys: a.ssh_keys.clone(),
        });
    }
    let mut ssh_keys = BTreeMap::new();
    let mut private = host_private_key.to_string();
    if !private.ends_with('\n') {
        private.push('\n');
    }
    ssh_keys.insert("ed25519_private".to_string(), private);
    ssh_keys.insert(
        "ed25519_public".to_string(),
        host_public_key.trim().to_string(),
    );

    // Scratch disks: formatted if empty (never overwritten), mounted by label.
    let mut disk_setup = BTreeMap::new();
    let mut fs_setup = Vec::new();
    let mut mounts = Vec::new();
    for d in h.disks.iter().filter(|d| d.purpose == DiskPurpose::Scratch) {
        let Some(mp) = &d.mountpoint else {
            bail!(
                "scratch disk `{}` has no mountpoint: set hosts.{}.disks.{}.mountpoint",
                d.name,
                h.name,
                d.name
            );
        };
        let label: String = d.name.chars().take(16).collect();
        disk_setup.insert(
            d.device.clone(),
            DiskSetup {
                table_type: "gpt".into(),
                layout: true,
                overwrite: false,
            },
        );
        fs_setup.push(FsSetup {
            label: label.clone(),
            filesystem: d.fs.clone(),
            device: d.device.clone(),
            partition: "auto".into(),
            overwrite: false,
        });
        mounts.push(vec![
            format!("LABEL={label}"),
            mp.clone(),
            d.fs.clone(),
            "defaults,nofail,x-systemd.device-timeout=30s".into(),
            "0".into(),
            "2".into(),
        ]);
    }
    for m in &h.mounts {
        let mut opts = m.options.clone();
        for extra in ["_netdev", "nofail"] {
            if !opts.iter().any(|o| o == extra) {
                opts.push(extra.into());
            }
        }
        let server = mount_server(spec, h, m)?;
        let (what, fs) = match m.kind {
            MountKind::Nfs => (format!("{server}:{}", m.export), "nfs"),
            MountKind::Smb => (
                format!("//{server}/{}", m.export.trim_start_matches('/')),
                "cifs",
            ),
        };
        mounts.push(vec![
            what,
            m.at.clone(),
            fs.into(),
            opts.join(","),
            "0".into(),
            "0".into(),
        ]);
    }

    let mut write_files = vec![
        WriteFile {
            path: format!("/etc/ssh/sshd_config.d/{SSHD_DROPIN_NAME}"),
            owner: "root:root".into(),
            permissions: "0644".into(),
            defer: false,
            content: sshd.to_string(),
        },
        WriteFile {
            path: "/etc/nftables.conf".into(),
            owner: "root:root".into(),
            permissions: "0644".into(),
            defer: true,
            content: nft.to_string(),
        },
    ];
    let mut runcmd: Vec<Vec<String>> = vec![
        // The firewall first: nftables.service loads /etc/nftables.conf now and on every boot.
        vec!["systemctl".into(), "enable".into(), "--now".into(), "nftables.service".into()],
        // Socket-activated sshd (Ubuntu 24.04) takes ListenAddress from a generator: re-run it.
        vec![
            "sh".into(),
            "-c".into(),
            "sshd -t && systemctl daemon-reload && if systemctl is-enabled --quiet ssh.socket 2>/dev/null; then systemctl restart ssh.socket; else systemctl reload-or-restart ssh.service; fi".into(),
        ],
    ];
    if !h.stacks.is_empty() {
        runcmd.push(vec![
            "systemctl".into(),
            "enable".into(),
            "--now".into(),
            "docker.service".into(),
        ]);
    }
    // The host's stacks: their committed files (no secrets), in dependency order (a stack after the stacks
    // whose networks it joins or scrapes). A stack starts at first boot only when it reads no secret, waits
    // behind no `before` operator gate (seed 001: MUST NOT proceed until validation passes) and every stack it
    // needs starts too; the others start at `labforge deploy` (their .env from the secrets store, the gate
    // signed off).
    let edges = crate::spec::deps::edges(spec);
    let order = crate::spec::deps::stack_order(h, &edges).unwrap_or_else(|_| h.stacks.clone());
    let mut started: Vec<&str> = Vec::new();
    for sname in &order {
        let st = spec
            .stacks
            .get(sname)
            .ok_or_else(|| anyhow!("internal error: stack `{sname}` is not in the spec"))?;
        let sd = dirs
            .get(sname)
            .into_iter()
            .flatten()
            .find(|sd| sd.hosts.contains(&h.name))
            .ok_or_else(|| {
                anyhow!("internal error: stack `{sname}` has no directory for this host")
            })?;
        let dest = format!("{STACKS_ON_HOST}/{sname}");
        for (rel, bytes) in compose::render_dir_for(spec, st, sd, Some(&h.name))? {
            if rel.starts_with("hosts/") && rel != format!("hosts/{}.env", h.name) {
                continue;
            }
            write_files.push(WriteFile {
                path: format!("{dest}/{rel}"),
                owner: "root:root".into(),
                permissions: "0644".into(),
                defer: true,
                content: String::from_utf8(bytes)
                    .map_err(|_| anyhow!("internal error: non-UTF-8 stack file"))?,
            });
        }
        let gated = spec
            .gates
            .values()
            .any(|g| g.stack == *sname && g.when == crate::spec::model::GateWhen::Before);
        let me = format!("{}/{sname}", h.name);
        let needs_ok = edges
            .iter()
            .filter(|e| e.from == me && e.to.starts_with(&format!("{}/", h.name)))
            .all(|e| started.contains(&&e.to[h.name.len() + 1..]));
        if compose::stack_secrets(st).is_empty() && !gated && needs_ok {
            started.push(sname.as_str());
            runcmd.push(vec![
                "docker".into(),
                "compose".into(),
                "--project-directory".into(),
                dest.clone(),
                "--env-file".into(),
                format!("{dest}/hosts/{}.env", h.name),
                "up".into(),
                "--detach".into(),
            ]);
        }
    }

    let mut bootcmd: Vec<Vec<String>> = Vec::new();
    if h.nfs_v4_only() && packages(spec, h).iter().any(|p| p == "nfs-common") {
        // nfs-common pulls in rpcbind, which listens on 0.0.0.0:111 / [::]:111 (seed 000: services bind
        // to the SERVERS network only; verify's `listen.no-wildcard`). NFSv4 needs no portmapper, so with
        // every NFS mount pinned to v4 it is masked — in bootcmd, i.e. early on every boot and before the
        // packages module installs nfs-common (a masked unit is not started by the package's scripts).
        bootcmd.push(vec![
            "systemctl".into(),
            "mask".into(),
            "--now".into(),
            "rpcbind.socket".into(),
            "rpcbind.service".into(),
        ]);
    }
    let ud = UserData {
        hostname: h.name.clone(),
        fqdn: format!("{}.{}", h.name, spec.site.domain),
        prefer_fqdn_over_hostname: false,
        manage_etc_hosts: true,
        locale: spec.site.locale.clone(),
        timezone: spec.site.timezone.clone(),
        disable_root: true,
        ssh_pwauth: false,
        users,
        ssh_deletekeys: true,
        ssh_genkeytypes: vec!["ed25519".into()],
        ssh_keys,
        package_update: true,
        package_upgrade: true,
        packages: packages(spec, h),
        disk_setup: (!disk_setup.is_empty()).then_some(disk_setup),
        fs_setup,
        mounts,
        bootcmd,
        write_files,
        runcmd,
    };
    let layout = if h.board.is_rpi() {
        "Seed layout: the root of the `system-boot` FAT partition of Ubuntu's preinstalled Raspberry Pi image."
    } else {
        "Seed layout: a NoCloud `CIDATA` volume (user-data, meta-data, network-config at its root)."
    };
    Ok(format!(
        "#cloud-config\n{}{}",
        compose::header(
            sources,
            &format!(
                "cloud-init user-data of host `{}`. Contains the SSH host private key: keep out of git.\n{layout}",
                h.name
            )
        ),
        serde_yaml_ng::to_string(&ud)?
    ))
}

// ---------------------------------------------------------------------------------------------------------
// network-config (v2)

#[derive(Serialize, Default)]
struct NetIface {
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    match_: Option<BTreeMap<String, String>>,
    #[serde(rename = "set-name", skip_serializing_if = "Option::is_none")]
    set_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    link: Option<String>,
    dhcp4: bool,
    dhcp6: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    addresses: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    routes: Vec<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nameservers: Option<Nameservers>,
}

#[derive(Serialize)]
struct Nameservers {
    search: Vec<String>,
    addresses: Vec<String>,
}

#[derive(Serialize)]
struct NetV2 {
    version: u8,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    ethernets: BTreeMap<String, NetIface>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    vlans: BTreeMap<String, NetIface>,
}

#[derive(Serialize)]
struct NetDoc {
    network: NetV2,
}

fn network_config(spec: &Spec, h: &Host, sources: &[String]) -> Result<String> {
    // Default route: via the servers network's gateway, else the first network that has one.
    let gw_iface = h
        .interfaces
        .iter()
        .filter(|i| i.address.is_some())
        .filter_map(|i| spec.networks.get(&i.network).map(|n| (i, n)))
        .filter(|(_, n)| n.gateway.is_some())
        .min_by_key(|(_, n)| if n.role == NetRole::Servers { 0 } else { 1 })
        .map(|(i, _)| i.name.clone());
    let mut ethernets = BTreeMap::new();
    let mut vlans = BTreeMap::new();
    for i in &h.interfaces {
        let net = spec.networks.get(&i.network).ok_or_else(|| {
            anyhow!(
                "internal error: interface `{}` is on unknown network `{}`",
                i.name,
                i.network
            )
        })?;
        let mut ni = NetIface::default();
        match &i.address {
            Some(a) => {
                ni.addresses.push(format!("{a}/{}", i.prefix_len));
                let mut ns: Vec<String> = Vec::new();
                if gw_iface.as_deref() == Some(i.name.as_str()) {
                    let gw = net.gateway.expect("filtered on gateway");
                    let mut r = BTreeMap::new();
                    // `0.0.0.0/0` rather than netplan's `default`: Debian 12's cloud-init (22.4) rejects
                    // `to: default` ("Address default is not a valid ip address", found booting vulcan).
                    let to = if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
                    r.insert("to".to_string(), to.to_string());
                    r.insert("via".to_string(), gw.to_string());
                    ni.routes.push(r);
                    ns.extend(spec.site.nameservers.iter().map(|x| x.to_string()));
                }
                for x in &net.nameservers {
                    let s = x.to_string();
                    if !ns.contains(&s) {
                        ns.push(s);
                    }
                }
                // The lab resolver is a stack that starts only at deploy: the first boot falls back to the
                // site's bootstrap resolvers (listed last, so the lab resolver is asked first once it is up).
                if gw_iface.as_deref() == Some(i.name.as_str())
                    && !crate::spec::deps::stack_served_resolvers(spec, h).is_empty()
                {
                    for b in &spec.site.bootstrap_nameservers {
                        let s = b.to_string();
                        if !ns.contains(&s) {
                            ns.push(s);
                        }
                    }
                }
                if !ns.is_empty() {
                    ni.nameservers = Some(Nameservers {
                        search: vec![spec.site.domain.clone()],
                        addresses: ns,
                    });
                }
            }
            None => ni.dhcp4 = true,
        }
        match &i.link {
            Some(parent) => {
                ni.id = Some(i.vlan);
                ni.link = Some(parent.clone());
                vlans.insert(i.name.clone(), ni);
            }
            None => {
                if let Some(mac) = &i.mac {
                    let mut m = BTreeMap::new();
                    m.insert("macaddress".to_string(), mac.to_ascii_lowercase());
                    ni.match_ = Some(m);
                    ni.set_name = Some(i.name.clone());
                }
                ethernets.insert(i.name.clone(), ni);
            }
        }
    }
    // A VLAN's parent that carries no network of its own still has to be brought up.
    for v in vlans.values() {
        let parent = v.link.clone().unwrap_or_default();
        if !ethernets.contains_key(&parent) {
            bail!(
                "VLAN interface on `{parent}`: `{parent}` is not an interface of the host; declare it (with its MAC address)"
            );
        }
    }
    let doc = NetDoc {
        network: NetV2 {
            version: 2,
            ethernets,
            vlans,
        },
    };
    Ok(format!(
        "{}{}",
        compose::header(
            sources,
            &format!(
                "cloud-init network-config (version 2) of host `{}`: NICs matched by MAC, static unless the spec says DHCP.",
                h.name
            )
        ),
        serde_yaml_ng::to_string(&doc)?
    ))
}
