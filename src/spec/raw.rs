//! Raw spec types: exactly what the TOML says, strict (unknown keys are errors), with spans.
//!
//! [`spec_table!`] gives each struct a field-by-field reader (see [`super::convert`]): `Option`, `Vec` and map
//! fields may be left out, every other field is required.
//!
//! Nothing here is trusted; [`super::validate`] turns these into the checked model.

use super::convert::spec_table;
use std::collections::BTreeMap;
use toml::Spanned;

pub type S<T> = Spanned<T>;
pub type Map<T> = BTreeMap<S<String>, S<T>>;

spec_table! {
/// One file of the spec. Every file in `hosts/` has this shape; their tables are merged.
#[derive(Debug, Default)]
pub struct RawFile {
    pub site: Option<S<RawSite>>,
    pub networks: Map<RawNetwork>,
    pub roles: Map<RawLayer>,
    pub tags: Map<RawLayer>,
    pub hosts: Map<RawHost>,
    pub stacks: Map<RawStack>,
    pub clusters: Map<RawCluster>,
    pub secrets: Map<RawSecret>,
    pub gates: Map<RawGate>,
}
}

spec_table! {
#[derive(Debug)]
pub struct RawSite {
    pub name: S<String>,
    pub domain: S<String>,
    pub timezone: S<String>,
    pub locale: Option<S<String>>,
    pub nameservers: Vec<S<String>>,
    /// Resolvers a host's first boot falls back to while the lab's own resolver (a stack) is not up yet.
    pub bootstrap_nameservers: Vec<S<String>>,
    pub admins: Vec<S<RawAdmin>>,
    /// Default hardening policy for every host.
    pub hardening: Option<S<RawHardening>>,
    /// Defaults for every host (lowest layer: site → role → tags → host).
    pub defaults: Option<S<RawLayer>>,
    /// age recipients (public keys) the secrets store encrypts to.
    pub age_recipients: Vec<S<String>>,
}
}

spec_table! {
#[derive(Debug)]
pub struct RawAdmin {
    pub name: S<String>,
    pub ssh_keys: Vec<S<String>>,
}
}

spec_table! {
#[derive(Debug, Default, Clone)]
pub struct RawHardening {
    pub ssh_port: Option<S<i64>>,
    /// Network names SSH may listen on.
    pub ssh_networks: Option<Vec<S<String>>>,
    pub permit_root_login: Option<S<String>>,
    pub password_authentication: Option<S<bool>>,
    pub kbd_interactive_authentication: Option<S<bool>>,
    pub pubkey_authentication: Option<S<bool>>,
    pub x11_forwarding: Option<S<bool>>,
    pub allow_agent_forwarding: Option<S<bool>>,
    pub allow_tcp_forwarding: Option<S<bool>>,
    pub max_auth_tries: Option<S<i64>>,
    pub login_grace_time: Option<S<i64>>,
    pub kex_algorithms: Option<Vec<S<String>>>,
    pub ciphers: Option<Vec<S<String>>>,
    pub macs: Option<Vec<S<String>>>,
    pub host_key_algorithms: Option<Vec<S<String>>>,
    /// Firewall default policy for input: must be "drop".
    pub firewall_default: Option<S<String>>,
}
}

spec_table! {
#[derive(Debug)]
pub struct RawNetwork {
    pub vlan: S<i64>,
    pub cidr: S<String>,
    pub gateway: Option<S<String>>,
    pub role: S<String>,
    pub description: Option<S<String>>,
    pub nameservers: Vec<S<String>>,
}
}

spec_table! {
/// Layered defaults: `site.defaults`, `roles.<role>`, `tags.<tag>`. Scalars override, lists add up.
#[derive(Debug, Default, Clone)]
pub struct RawLayer {
    pub os: Option<S<String>>,
    pub arch: Option<S<String>>,
    pub board: Option<S<String>>,
    pub disposable: Option<S<bool>>,
    pub packages: Vec<S<String>>,
    pub stacks: Vec<S<String>>,
    pub mounts: Vec<S<RawMount>>,
    pub admins: Option<Vec<S<String>>>,
    pub hardening: Option<S<RawHardening>>,
    pub virtualisation: Option<S<RawVirt>>,
    pub state_version: Option<S<String>>,
    pub image: Option<S<String>>,
}
}

spec_table! {
#[derive(Debug, Default)]
pub struct RawHost {
    pub os: Option<S<String>>,
    pub arch: Option<S<String>>,
    pub board: Option<S<String>>,
    pub role: Option<S<String>>,
    pub tags: Vec<S<String>>,
    pub description: Option<S<String>>,
    pub disposable: Option<S<bool>>,
    pub interfaces: Map<RawInterface>,
    pub disks: Map<RawDisk>,
    pub mounts: Vec<S<RawMount>>,
    /// Paths on this host that hold data that must survive a rebuild.
    pub persistent_paths: Vec<S<String>>,
    pub stacks: Vec<S<String>>,
    pub packages: Vec<S<String>>,
    pub virtualisation: Option<S<RawVirt>>,
    pub exceptions: Vec<S<RawException>>,
    pub hardening: Option<S<RawHardening>>,
    pub admins: Option<Vec<S<String>>>,
    /// Base image name (a file in `images/`) for hosts built from a vendor image.
    pub image: Option<S<String>>,
    /// NixOS `system.stateVersion`.
    pub state_version: Option<S<String>>,
    pub talos: Option<S<RawTalosNode>>,
    /// NFS exports this host serves (storage hosts).
    pub exports: Vec<S<RawExport>>,
}
}

spec_table! {
#[derive(Debug)]
pub struct RawInterface {
    pub network: S<String>,
    pub mac: Option<S<String>>,
    pub address: Option<S<String>>,
    pub dhcp: Option<S<bool>>,
    /// Carry this network as an 802.1Q VLAN on another interface of this host (a trunk port).
    pub link: Option<S<String>>,
}
}

spec_table! {
#[derive(Debug)]
pub struct RawDisk {
    pub device: S<String>,
    pub purpose: S<String>,
    pub disposable: Option<S<bool>>,
    pub mountpoint: Option<S<String>>,
    pub fs: Option<S<String>>,
}
}

spec_table! {
#[derive(Debug, Clone)]
pub struct RawMount {
    pub kind: S<String>,
    /// The storage host serving it.
    pub from: S<String>,
    pub export: S<String>,
    pub at: S<String>,
    pub options: Vec<S<String>>,
}
}

spec_table! {
#[derive(Debug)]
pub struct RawExport {
    pub path: S<String>,
    /// Network names allowed to mount it.
    pub networks: Vec<S<String>>,
    pub read_only: Option<S<bool>>,
}
}

spec_table! {
#[derive(Debug, Clone, Default)]
pub struct RawVirt {
    pub hypervisor: Option<S<String>>,
    pub cpu_mode: Option<S<String>>,
    pub cpu_overcommit: Option<S<bool>>,
    pub memory_overcommit: Option<S<bool>>,
}
}

spec_table! {
#[derive(Debug)]
pub struct RawException {
    pub rule: S<String>,
    /// The field path the finding names, e.g. `stacks.platform.services.npm.ports[0]`.
    pub subject: S<String>,
    pub reason: S<String>,
}
}

spec_table! {
#[derive(Debug)]
pub struct RawTalosNode {
    pub install_disk: S<String>,
    pub extensions: Vec<S<String>>,
    /// Strategic-merge patches onto the node's `v1alpha1` document, applied last (after the cluster's).
    pub patches: Vec<S<toml::Table>>,
}
}

spec_table! {
#[derive(Debug)]
pub struct RawStack {
    pub description: Option<S<String>>,
    pub networks: Map<RawDockerNetwork>,
    pub volumes: Vec<S<String>>,
    pub services: Map<RawService>,
}
}

spec_table! {
#[derive(Debug, Default)]
pub struct RawDockerNetwork {
    /// No route outside the Docker network (metrics, databases).
    pub internal: Option<S<bool>>,
    /// Join another stack's network on the same host: `STACK/NETWORK`.
    pub external: Option<S<String>>,
}
}

spec_table! {
#[derive(Debug)]
pub struct RawService {
    pub image: S<String>,
    pub platforms: Vec<S<String>>,
    pub ports: Vec<S<RawPort>>,
    /// Container ports reachable only on the stack's Docker networks.
    pub expose: Vec<S<i64>>,
    pub metrics: Option<S<RawMetrics>>,
    pub networks: Vec<S<String>>,
    pub volumes: Vec<S<String>>,
    pub environment: BTreeMap<S<String>, S<String>>,
    pub command: Vec<S<String>>,
    pub depends_on: Vec<S<String>>,
    pub docker_socket: Option<S<bool>>,
    pub gpu: Option<S<bool>>,
    pub restart: Option<S<String>>,
    pub user: Option<S<String>>,
}
}

spec_table! {
#[derive(Debug)]
pub struct RawPort {
    /// Host port.
    pub host: S<i64>,
    /// Container port (defaults to the host port).
    pub container: Option<S<i64>>,
    pub protocol: Option<S<String>>,
    /// The spec network whose address on the host this port binds to.
    pub network: S<String>,
    /// Hosts or networks allowed to reach it (firewall); empty = the whole network.
    pub allow_from: Vec<S<String>>,
}
}

spec_table! {
#[derive(Debug)]
pub struct RawMetrics {
    pub port: S<i64>,
    pub path: Option<S<String>>,
}
}

spec_table! {
#[derive(Debug)]
pub struct RawCluster {
    pub talos_version: S<String>,
    pub kubernetes_version: S<String>,
    pub endpoint_vip: Option<S<String>>,
    pub network: S<String>,
    pub control_planes: Vec<S<String>>,
    pub workers: Vec<S<String>>,
    pub extensions: Vec<S<String>>,
    pub allow_scheduling_on_control_planes: Option<S<bool>>,
    /// Strategic-merge patches onto every node's `v1alpha1` document (before node patches).
    pub patches: Vec<S<toml::Table>>,
}
}

spec_table! {
#[derive(Debug)]
pub struct RawSecret {
    /// Where the value lives: `store` (the age store in `secrets/`), `env:VAR`, or `file:/path`.
    pub source: S<String>,
    pub description: Option<S<String>>,
    /// For `store` secrets: how labforge generates the value (`password`, `token`, `base64-32`).
    pub generate: Option<S<String>>,
}
}

spec_table! {
#[derive(Debug)]
pub struct RawGate {
    /// The operator document this gate comes from, e.g. `001`.
    pub seed: S<String>,
    pub title: S<String>,
    /// `before:stack:NAME` or `after:stack:NAME`.
    pub when: S<String>,
    pub checklist: Vec<S<String>>,
    /// Read-only commands whose output labforge shows the operator as evidence (never as a verdict).
    pub evidence: Vec<S<String>>,
}
}
