//! Raw spec types: exactly what the TOML says, strict (unknown keys are errors), with spans.
//!
//! Nothing here is trusted; [`super::validate`] turns these into the checked model.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

pub type S<T> = Spanned<T>;
pub type Map<T> = BTreeMap<S<String>, S<T>>;

/// One file of the spec. Every file in `hosts/` has this shape; their tables are merged.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    pub site: Option<S<RawSite>>,
    #[serde(default)]
    pub networks: Map<RawNetwork>,
    #[serde(default)]
    pub roles: Map<RawLayer>,
    #[serde(default)]
    pub tags: Map<RawLayer>,
    #[serde(default)]
    pub hosts: Map<RawHost>,
    #[serde(default)]
    pub stacks: Map<RawStack>,
    #[serde(default)]
    pub clusters: Map<RawCluster>,
    #[serde(default)]
    pub secrets: Map<RawSecret>,
    #[serde(default)]
    pub gates: Map<RawGate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    pub name: S<String>,
    pub domain: S<String>,
    pub timezone: S<String>,
    #[serde(default)]
    pub locale: Option<S<String>>,
    #[serde(default)]
    pub nameservers: Vec<S<String>>,
    /// Resolvers a host's first boot falls back to while the lab's own resolver (a stack) is not up yet.
    #[serde(default)]
    pub bootstrap_nameservers: Vec<S<String>>,
    #[serde(default)]
    pub admins: Vec<S<RawAdmin>>,
    /// Default hardening policy for every host.
    #[serde(default)]
    pub hardening: Option<S<RawHardening>>,
    /// Defaults for every host (lowest layer: site → role → tags → host).
    #[serde(default)]
    pub defaults: Option<S<RawLayer>>,
    /// age recipients (public keys) the secrets store encrypts to.
    #[serde(default)]
    pub age_recipients: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub name: S<String>,
    pub ssh_keys: Vec<S<String>>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub vlan: S<i64>,
    pub cidr: S<String>,
    #[serde(default)]
    pub gateway: Option<S<String>>,
    pub role: S<String>,
    #[serde(default)]
    pub description: Option<S<String>>,
    #[serde(default)]
    pub nameservers: Vec<S<String>>,
}

/// Layered defaults: `site.defaults`, `roles.<role>`, `tags.<tag>`. Scalars override, lists add up.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawLayer {
    pub os: Option<S<String>>,
    pub arch: Option<S<String>>,
    pub board: Option<S<String>>,
    pub disposable: Option<S<bool>>,
    #[serde(default)]
    pub packages: Vec<S<String>>,
    #[serde(default)]
    pub stacks: Vec<S<String>>,
    #[serde(default)]
    pub mounts: Vec<S<RawMount>>,
    #[serde(default)]
    pub admins: Option<Vec<S<String>>>,
    pub hardening: Option<S<RawHardening>>,
    pub virtualisation: Option<S<RawVirt>>,
    pub state_version: Option<S<String>>,
    pub image: Option<S<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHost {
    pub os: Option<S<String>>,
    pub arch: Option<S<String>>,
    pub board: Option<S<String>>,
    pub role: Option<S<String>>,
    #[serde(default)]
    pub tags: Vec<S<String>>,
    #[serde(default)]
    pub description: Option<S<String>>,
    pub disposable: Option<S<bool>>,
    #[serde(default)]
    pub interfaces: Map<RawInterface>,
    #[serde(default)]
    pub disks: Map<RawDisk>,
    #[serde(default)]
    pub mounts: Vec<S<RawMount>>,
    /// Paths on this host that hold data that must survive a rebuild.
    #[serde(default)]
    pub persistent_paths: Vec<S<String>>,
    #[serde(default)]
    pub stacks: Vec<S<String>>,
    #[serde(default)]
    pub packages: Vec<S<String>>,
    pub virtualisation: Option<S<RawVirt>>,
    #[serde(default)]
    pub exceptions: Vec<S<RawException>>,
    pub hardening: Option<S<RawHardening>>,
    pub admins: Option<Vec<S<String>>>,
    /// Base image name (a file in `images/`) for hosts built from a vendor image.
    pub image: Option<S<String>>,
    /// NixOS `system.stateVersion`.
    pub state_version: Option<S<String>>,
    pub talos: Option<S<RawTalosNode>>,
    /// NFS exports this host serves (storage hosts).
    #[serde(default)]
    pub exports: Vec<S<RawExport>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInterface {
    pub network: S<String>,
    #[serde(default)]
    pub mac: Option<S<String>>,
    #[serde(default)]
    pub address: Option<S<String>>,
    #[serde(default)]
    pub dhcp: Option<S<bool>>,
    /// Carry this network as an 802.1Q VLAN on another interface of this host (a trunk port).
    #[serde(default)]
    pub link: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDisk {
    pub device: S<String>,
    pub purpose: S<String>,
    #[serde(default)]
    pub disposable: Option<S<bool>>,
    #[serde(default)]
    pub mountpoint: Option<S<String>>,
    #[serde(default)]
    pub fs: Option<S<String>>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawMount {
    pub kind: S<String>,
    /// The storage host serving it.
    pub from: S<String>,
    pub export: S<String>,
    pub at: S<String>,
    #[serde(default)]
    pub options: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExport {
    pub path: S<String>,
    /// Network names allowed to mount it.
    pub networks: Vec<S<String>>,
    #[serde(default)]
    pub read_only: Option<S<bool>>,
}

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct RawVirt {
    pub hypervisor: Option<S<String>>,
    pub cpu_mode: Option<S<String>>,
    pub cpu_overcommit: Option<S<bool>>,
    pub memory_overcommit: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawException {
    pub rule: S<String>,
    /// The field path the finding names, e.g. `stacks.platform.services.npm.ports[0]`.
    pub subject: S<String>,
    pub reason: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTalosNode {
    pub install_disk: S<String>,
    #[serde(default)]
    pub extensions: Vec<S<String>>,
    /// Strategic-merge patches onto the node's `v1alpha1` document, applied last (after the cluster's).
    #[serde(default)]
    pub patches: Vec<S<toml::Table>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStack {
    #[serde(default)]
    pub description: Option<S<String>>,
    #[serde(default)]
    pub networks: Map<RawDockerNetwork>,
    #[serde(default)]
    pub volumes: Vec<S<String>>,
    #[serde(default)]
    pub services: Map<RawService>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawDockerNetwork {
    /// No route outside the Docker network (metrics, databases).
    #[serde(default)]
    pub internal: Option<S<bool>>,
    /// Join another stack's network on the same host: `STACK/NETWORK`.
    #[serde(default)]
    pub external: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub image: S<String>,
    #[serde(default)]
    pub platforms: Vec<S<String>>,
    #[serde(default)]
    pub ports: Vec<S<RawPort>>,
    /// Container ports reachable only on the stack's Docker networks.
    #[serde(default)]
    pub expose: Vec<S<i64>>,
    #[serde(default)]
    pub metrics: Option<S<RawMetrics>>,
    #[serde(default)]
    pub networks: Vec<S<String>>,
    #[serde(default)]
    pub volumes: Vec<S<String>>,
    #[serde(default)]
    pub environment: BTreeMap<S<String>, S<String>>,
    #[serde(default)]
    pub command: Vec<S<String>>,
    #[serde(default)]
    pub depends_on: Vec<S<String>>,
    #[serde(default)]
    pub docker_socket: Option<S<bool>>,
    #[serde(default)]
    pub gpu: Option<S<bool>>,
    #[serde(default)]
    pub restart: Option<S<String>>,
    #[serde(default)]
    pub user: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPort {
    /// Host port.
    pub host: S<i64>,
    /// Container port (defaults to the host port).
    #[serde(default)]
    pub container: Option<S<i64>>,
    #[serde(default)]
    pub protocol: Option<S<String>>,
    /// The spec network whose address on the host this port binds to.
    pub network: S<String>,
    /// Hosts or networks allowed to reach it (firewall); empty = the whole network.
    #[serde(default)]
    pub allow_from: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub port: S<i64>,
    #[serde(default)]
    pub path: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub talos_version: S<String>,
    pub kubernetes_version: S<String>,
    pub endpoint_vip: Option<S<String>>,
    pub network: S<String>,
    pub control_planes: Vec<S<String>>,
    #[serde(default)]
    pub workers: Vec<S<String>>,
    #[serde(default)]
    pub extensions: Vec<S<String>>,
    #[serde(default)]
    pub allow_scheduling_on_control_planes: Option<S<bool>>,
    /// Strategic-merge patches onto every node's `v1alpha1` document (before node patches).
    #[serde(default)]
    pub patches: Vec<S<toml::Table>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecret {
    /// Where the value lives: `store` (the age store in `secrets/`), `env:VAR`, or `file:/path`.
    pub source: S<String>,
    #[serde(default)]
    pub description: Option<S<String>>,
    /// For `store` secrets: how labforge generates the value (`password`, `token`, `base64-32`).
    #[serde(default)]
    pub generate: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGate {
    /// The operator document this gate comes from, e.g. `001`.
    pub seed: S<String>,
    pub title: S<String>,
    /// `before:stack:NAME` or `after:stack:NAME`.
    pub when: S<String>,
    pub checklist: Vec<S<String>>,
    /// Read-only commands whose output labforge shows the operator as evidence (never as a verdict).
    #[serde(default)]
    pub evidence: Vec<S<String>>,
}
