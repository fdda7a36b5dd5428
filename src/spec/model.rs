//! The validated model. Everything downstream (plan, render, image, deploy, verify) takes these types,
//! never raw input: hostnames are valid, addresses sit inside their network, every reference resolves.

use super::source::{Loc, SourceMap};
use ipnet::IpNet;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Os {
    Nixos,
    Ubuntu,
    Debian,
    Talos,
}

impl Os {
    pub const ALL: &'static [&'static str] = &["nixos", "ubuntu", "debian", "talos"];
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "nixos" => Os::Nixos,
            "ubuntu" => Os::Ubuntu,
            "debian" => Os::Debian,
            "talos" => Os::Talos,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Os::Nixos => "nixos",
            Os::Ubuntu => "ubuntu",
            Os::Debian => "debian",
            Os::Talos => "talos",
        }
    }
    /// Hosts configured through cloud-init seeds.
    pub fn uses_cloud_init(self) -> bool {
        matches!(self, Os::Ubuntu | Os::Debian)
    }
    /// Hosts that run an OpenSSH server labforge manages.
    pub fn has_ssh(self) -> bool {
        !matches!(self, Os::Talos)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub const ALL: &'static [&'static str] = &["x86_64", "aarch64"];
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
    /// The OCI platform name.
    pub fn oci_platform(self) -> &'static str {
        match self {
            Arch::X86_64 => "linux/amd64",
            Arch::Aarch64 => "linux/arm64",
        }
    }
    pub fn nix_system(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-linux",
            Arch::Aarch64 => "aarch64-linux",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Board {
    Rpi4,
    Rpi5,
    GenericUefi,
    Vm,
}

impl Board {
    pub const ALL: &'static [&'static str] = &["rpi4", "rpi5", "generic-uefi", "vm"];
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "rpi4" => Board::Rpi4,
            "rpi5" => Board::Rpi5,
            "generic-uefi" => Board::GenericUefi,
            "vm" => Board::Vm,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Board::Rpi4 => "rpi4",
            Board::Rpi5 => "rpi5",
            Board::GenericUefi => "generic-uefi",
            Board::Vm => "vm",
        }
    }
    pub fn is_rpi(self) -> bool {
        matches!(self, Board::Rpi4 | Board::Rpi5)
    }
    /// The only architecture this board runs, if it is fixed.
    pub fn required_arch(self) -> Option<Arch> {
        if self.is_rpi() {
            Some(Arch::Aarch64)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetRole {
    Management,
    Servers,
    User,
    Guest,
    Storage,
}

impl NetRole {
    pub const ALL: &'static [&'static str] = &["management", "servers", "user", "guest", "storage"];
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "management" => NetRole::Management,
            "servers" => NetRole::Servers,
            "user" => NetRole::User,
            "guest" => NetRole::Guest,
            "storage" => NetRole::Storage,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            NetRole::Management => "management",
            NetRole::Servers => "servers",
            NetRole::User => "user",
            NetRole::Guest => "guest",
            NetRole::Storage => "storage",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Spec {
    pub revision: String,
    pub site: Site,
    pub networks: BTreeMap<String, Network>,
    pub hosts: BTreeMap<String, Host>,
    pub stacks: BTreeMap<String, Stack>,
    pub clusters: BTreeMap<String, Cluster>,
    pub secrets: BTreeMap<String, SecretRef>,
    pub gates: BTreeMap<String, Gate>,
    #[serde(skip)]
    pub sources: SourceMap,
}

#[derive(Debug, Clone, Serialize)]
pub struct Site {
    pub name: String,
    pub domain: String,
    pub timezone: String,
    pub locale: String,
    pub nameservers: Vec<IpAddr>,
    /// Resolvers that answer before the lab does (e.g. the router): listed after a host's lab resolvers
    /// whenever those are served by a lab stack, so a first boot resolves before that stack is deployed.
    pub bootstrap_nameservers: Vec<IpAddr>,
    pub admins: Vec<Admin>,
    pub age_recipients: Vec<String>,
    /// Where `[site]` is defined (renders name their spec files in headers).
    #[serde(skip)]
    pub loc: Option<Loc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Admin {
    pub name: String,
    /// OpenSSH public keys (`type base64 [comment]`), validated.
    pub ssh_keys: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Network {
    pub name: String,
    pub vlan: u16,
    pub cidr: IpNet,
    pub gateway: Option<IpAddr>,
    pub role: NetRole,
    pub nameservers: Vec<IpAddr>,
    #[serde(skip)]
    pub loc: Option<Loc>,
    #[serde(skip)]
    pub cidr_loc: Option<Loc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hardening {
    pub ssh_port: u16,
    pub ssh_networks: Vec<String>,
    pub permit_root_login: String,
    pub password_authentication: bool,
    pub kbd_interactive_authentication: bool,
    pub pubkey_authentication: bool,
    pub x11_forwarding: bool,
    pub allow_agent_forwarding: bool,
    pub allow_tcp_forwarding: bool,
    pub max_auth_tries: u32,
    pub login_grace_time: u32,
    pub kex_algorithms: Vec<String>,
    pub ciphers: Vec<String>,
    pub macs: Vec<String>,
    pub host_key_algorithms: Vec<String>,
    pub firewall_default: String,
}

impl Default for Hardening {
    /// labforge's hardened baseline. Every algorithm list keeps at least one method that both Debian 12's
    /// OpenSSH 9.2 and russh implement, so labforge can always reach a host it configured.
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Hardening {
            ssh_port: 22,
            ssh_networks: Vec::new(),
            permit_root_login: "no".into(),
            password_authentication: false,
            kbd_interactive_authentication: false,
            pubkey_authentication: true,
            x11_forwarding: false,
            allow_agent_forwarding: false,
            allow_tcp_forwarding: false,
            max_auth_tries: 3,
            login_grace_time: 30,
            kex_algorithms: s(&[
                "sntrup761x25519-sha512@openssh.com",
                "curve25519-sha256",
                "curve25519-sha256@libssh.org",
            ]),
            ciphers: s(&[
                "chacha20-poly1305@openssh.com",
                "aes256-gcm@openssh.com",
                "aes128-gcm@openssh.com",
            ]),
            macs: s(&[
                "hmac-sha2-512-etm@openssh.com",
                "hmac-sha2-256-etm@openssh.com",
            ]),
            host_key_algorithms: s(&["ssh-ed25519"]),
            firewall_default: "drop".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub name: String,
    pub os: Os,
    pub arch: Arch,
    pub board: Board,
    pub role: String,
    pub tags: Vec<String>,
    pub description: Option<String>,
    pub disposable: bool,
    pub interfaces: Vec<Interface>,
    pub disks: Vec<Disk>,
    pub mounts: Vec<Mount>,
    pub persistent_paths: Vec<String>,
    pub stacks: Vec<String>,
    pub packages: Vec<String>,
    pub virtualisation: Option<Virtualisation>,
    pub exceptions: Vec<Exception>,
    pub hardening: Hardening,
    /// Where each hardening field was set (for messages): field → (spec path, location).
    #[serde(skip)]
    pub hardening_origin: BTreeMap<&'static str, (String, Option<Loc>)>,
    pub admins: Vec<String>,
    pub image: Option<String>,
    pub state_version: Option<String>,
    pub talos: Option<TalosNode>,
    pub cluster: Option<String>,
    pub exports: Vec<Export>,
    /// Derived once from the validated spec (`Spec::derive_facts`); every consumer reads these.
    #[serde(skip)]
    pub facts: HostFacts,
    #[serde(skip)]
    pub loc: Option<Loc>,
}

impl Host {
    /// Whether the host can live without rpcbind: every NFS mount is pinned to NFSv4 (`nfsvers=4…` /
    /// `vers=4…`). An unpinned mount may negotiate NFSv3, which needs the portmapper (and rpc.statd).
    pub fn nfs_v4_only(&self) -> bool {
        self.mounts
            .iter()
            .filter(|m| m.kind == MountKind::Nfs)
            .all(|m| {
                m.options.iter().any(|o| {
                    o.strip_prefix("nfsvers=")
                        .or_else(|| o.strip_prefix("vers="))
                        .is_some_and(|v| v == "4" || v.starts_with("4."))
                })
            })
    }

    /// The first interface on a network of the given role.
    pub fn iface_on_role<'a>(&'a self, spec: &'a Spec, role: NetRole) -> Option<&'a Interface> {
        self.interfaces
            .iter()
            .find(|i| spec.networks.get(&i.network).map(|n| n.role) == Some(role))
    }
    /// The management address (where SSH listens and labforge connects).
    pub fn management_address(&self) -> Option<IpAddr> {
        self.facts.management_address
    }
    /// The interfaces sshd listens on (`facts.ssh_listen`), in that order.
    pub fn ssh_interfaces(&self) -> Vec<&Interface> {
        self.facts
            .ssh_listen
            .iter()
            .filter_map(|(n, _)| self.interfaces.iter().find(|i| &i.name == n))
            .collect()
    }
    /// Who labforge logs in as unless the operator says otherwise (`--user`).
    pub fn login_user(&self) -> Option<&str> {
        self.facts.login_user.as_deref()
    }
    /// This host's address on a named spec network.
    pub fn address_on(&self, network: &str) -> Option<IpAddr> {
        self.interfaces
            .iter()
            .find(|i| i.network == network)
            .and_then(|i| i.address)
    }
}

/// What every consumer (render, plan, deploy, verify, rebuild, known_hosts) needs to know about reaching a
/// host, derived once from the validated spec instead of recomputed in each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// The interface on the management network with a static address, and that address: where labforge
    /// connects (and, without `hardening.ssh_networks`, the only place sshd listens).
    pub management_interface: Option<String>,
    pub management_address: Option<IpAddr>,
    /// sshd's port (`hardening.ssh_port`).
    pub ssh_port: u16,
    /// Where sshd listens, as (interface, address): the management interface, or the first interface with a
    /// static address on each of `hardening.ssh_networks`, in that order. Empty for a host without SSH.
    pub ssh_listen: Vec<(String, IpAddr)>,
    /// The accounts that may log in over SSH: the host's `admins`, else every site admin, in spec order.
    pub admins: Vec<String>,
    /// Who labforge logs in as: the first of `admins`.
    pub login_user: Option<String>,
}

impl HostFacts {
    fn derive(spec: &Spec, h: &Host) -> HostFacts {
        let mgmt = h.interfaces.iter().find(|i| {
            i.address.is_some()
                && spec.networks.get(&i.network).map(|n| n.role) == Some(NetRole::Management)
        });
        let ssh_listen: Vec<(String, IpAddr)> = if !h.os.has_ssh() {
            Vec::new()
        } else if h.hardening.ssh_networks.is_empty() {
            mgmt.into_iter()
                .filter_map(|i| Some((i.name.clone(), i.address?)))
                .collect()
        } else {
            h.hardening
                .ssh_networks
                .iter()
                .filter_map(|n| {
                    h.interfaces
                        .iter()
                        .find(|i| &i.network == n && i.address.is_some())
                        .and_then(|i| Some((i.name.clone(), i.address?)))
                })
                .collect()
        };
        let admins: Vec<String> = if h.admins.is_empty() {
            spec.site.admins.iter().map(|a| a.name.clone()).collect()
        } else {
            h.admins.clone()
        };
        HostFacts {
            management_interface: mgmt.map(|i| i.name.clone()),
            management_address: mgmt.and_then(|i| i.address),
            ssh_port: h.hardening.ssh_port,
            ssh_listen,
            login_user: admins.first().cloned(),
            admins,
        }
    }
}

impl Spec {
    /// Derive every host's `facts` (done once, when the spec is validated).
    pub fn derive_facts(&mut self) {
        let facts: Vec<(String, HostFacts)> = self
            .hosts
            .values()
            .map(|h| (h.name.clone(), HostFacts::derive(self, h)))
            .collect();
        for (n, f) in facts {
            if let Some(h) = self.hosts.get_mut(&n) {
                h.facts = f;
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Interface {
    pub name: String,
    pub network: String,
    pub mac: Option<String>,
    /// Static address; `None` means DHCP.
    pub address: Option<IpAddr>,
    pub prefix_len: u8,
    pub vlan: u16,
    /// Parent interface when this network is carried as a tagged VLAN.
    pub link: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskPurpose {
    Os,
    Data,
    Scratch,
}

#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    pub name: String,
    pub device: String,
    pub purpose: DiskPurpose,
    pub disposable: bool,
    pub mountpoint: Option<String>,
    pub fs: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    Nfs,
    Smb,
}

#[derive(Debug, Clone, Serialize)]
pub struct Mount {
    pub kind: MountKind,
    pub from: String,
    /// The storage host's address the mount uses (on a network both hosts share).
    pub server: IpAddr,
    pub export: String,
    pub at: String,
    pub options: Vec<String>,
    /// Where `from` and `export` are written (for messages).
    #[serde(skip)]
    pub locs: (Option<Loc>, Option<Loc>),
}

#[derive(Debug, Clone, Serialize)]
pub struct Export {
    pub path: String,
    pub networks: Vec<String>,
    pub read_only: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Virtualisation {
    pub hypervisor: String,
    pub cpu_mode: String,
    pub cpu_overcommit: bool,
    pub memory_overcommit: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Exception {
    pub rule: String,
    pub subject: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TalosNode {
    pub install_disk: String,
    pub extensions: Vec<String>,
    /// Strategic-merge patches onto the `v1alpha1` document (maps merge, everything else replaces).
    pub patches: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stack {
    pub name: String,
    pub description: Option<String>,
    /// Docker networks of the stack.
    pub networks: BTreeMap<String, DockerNetwork>,
    pub volumes: Vec<String>,
    pub services: BTreeMap<String, Service>,
    /// Hosts that run this stack.
    pub hosts: Vec<String>,
    #[serde(skip)]
    pub loc: Option<Loc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DockerNetwork {
    pub internal: bool,
    /// `(stack, network)` when this is another stack's network joined from here.
    pub external: Option<(String, String)>,
}

impl DockerNetwork {
    /// The Docker-level network name (`<project>_<network>` as Compose names it).
    pub fn docker_name(&self, stack: &str, name: &str) -> String {
        match &self.external {
            Some((s, n)) => format!("{s}_{n}"),
            None => format!("{stack}_{name}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRef {
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Service {
    pub name: String,
    pub image: ImageRef,
    pub platforms: Vec<String>,
    pub ports: Vec<Port>,
    pub expose: Vec<u16>,
    pub metrics: Option<Metrics>,
    pub networks: Vec<String>,
    pub volumes: Vec<VolumeMount>,
    pub environment: BTreeMap<String, EnvValue>,
    pub command: Vec<String>,
    pub depends_on: Vec<String>,
    pub docker_socket: bool,
    pub gpu: bool,
    pub restart: String,
    pub user: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Port {
    pub host: u16,
    pub container: u16,
    pub protocol: Proto,
    pub network: String,
    pub allow_from: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    pub port: u16,
    pub path: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum VolumeMount {
    /// A named volume of the stack.
    Named {
        name: String,
        target: String,
        read_only: bool,
    },
    /// A host path bind mount.
    Bind {
        source: String,
        target: String,
        read_only: bool,
    },
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum EnvValue {
    Literal(String),
    /// `secret:NAME` — resolved from the secrets store at deploy time, never rendered.
    Secret(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    pub name: String,
    pub talos_version: String,
    pub kubernetes_version: String,
    pub endpoint_vip: IpAddr,
    pub network: String,
    pub control_planes: Vec<String>,
    pub workers: Vec<String>,
    pub extensions: Vec<String>,
    pub allow_scheduling_on_control_planes: bool,
    pub patches: Vec<serde_json::Value>,
    #[serde(skip)]
    pub loc: Option<Loc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum SecretSource {
    Store,
    Env(String),
    File(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct SecretRef {
    pub name: String,
    pub source: SecretSource,
    pub description: Option<String>,
    pub generate: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GateWhen {
    Before,
    After,
}

#[derive(Debug, Clone, Serialize)]
pub struct Gate {
    pub id: String,
    pub seed: String,
    pub title: String,
    pub when: GateWhen,
    pub stack: String,
    pub checklist: Vec<String>,
    pub evidence: Vec<String>,
}
