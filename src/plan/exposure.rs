//! The exposure policy: for every address and port a host opens, which sources may connect. Everything
//! else is denied. Computed once from the validated spec (`exposure`), carried by `plan --json` per host, and
//! compiled into every firewall labforge emits (`render::firewall`): the Ubuntu/Debian `nftables.conf` and the
//! NixOS hosts' `networking.nftables.tables.labforge` load the same compiled table.
//!
//! Semantics (docs/ARCHITECTURE.md "Exposure policy"), enforced by each host alone — the router between the
//! VLANs may forward anything:
//! * SSH only at the SSH listen addresses (the management address unless `hardening.ssh_networks` says
//!   otherwise), and only from sources inside the spec's management networks;
//! * a published service port only at the host's address on the port's network, from any source the router
//!   delivers on that interface (and the host's own containers) unless `allow_from` narrows it to networks or
//!   hosts;
//! * NFS (2049/tcp) only at the storage host's addresses on the export networks, from those networks;
//! * DHCP and DNS for local libvirt guests on `virbr*` (hosts with virtualisation);
//! * replies of allowed flows always pass; everything else is dropped (or rejected, `firewall_default`).
//!
//! Validation guarantees the addresses and references a row needs; a row that cannot be placed (no static
//! address) is left out here and refused by `check`.

use crate::spec::model::*;
use serde::Serialize;
use std::net::IpAddr;

/// NFSv4: the only port an NFSv4-only server needs (no portmapper, no mountd).
pub const NFS_PORT: u16 = 2049;

/// The policy of one host.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Exposure {
    /// What happens to everything not allowed: `drop` or `reject` (`hardening.firewall_default`).
    pub default: String,
    /// Every allowed flow, sorted by (address, protocol, port).
    pub flows: Vec<Flow>,
    /// Addresses this host holds on spec networks (published ports may only be reached at theirs).
    pub addresses: Vec<HostAddress>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostAddress {
    pub interface: String,
    pub network: String,
    pub role: NetRole,
    pub address: IpAddr,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Flow {
    /// Stable id: `ssh`, `nfs@<network>`, `<stack>/<service>:<port>/<proto>`, `libvirt:<port>/<proto>`.
    pub id: String,
    pub what: FlowKind,
    /// The interface the flow must arrive on (`virbr*` for libvirt guests).
    pub interface: String,
    /// The spec network of that interface (none for libvirt's own bridge).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The destination address (none: libvirt's bridge address, whatever it is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    pub port: u16,
    pub protocol: Proto,
    /// Who delivers the packet: the host's own stack (`host`) or Docker's DNAT to a container (`docker`).
    pub delivery: Delivery,
    pub from: Sources,
    /// Whether the host's own containers (Docker bridges) may connect too (published ports open to any source).
    pub local_containers: bool,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FlowKind {
    Ssh,
    Published,
    Nfs,
    LibvirtGuests,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    Host,
    Docker,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", content = "sources", rename_all = "kebab-case")]
pub enum Sources {
    /// Any source the router delivers on the flow's interface.
    Any,
    /// Only these.
    Only(Vec<Source>),
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Source {
    /// `network:<name>` or `host:<name>` — what the spec said.
    pub name: String,
    /// The address or CIDR it stands for.
    pub cidr: String,
}

impl Sources {
    /// Whether `addr` is one of the allowed sources (Any: always).
    pub fn admits(&self, addr: IpAddr) -> bool {
        match self {
            Sources::Any => true,
            Sources::Only(v) => v.iter().any(|s| {
                s.cidr
                    .parse::<ipnet::IpNet>()
                    .map(|n| n.contains(&addr))
                    .or_else(|_| s.cidr.parse::<IpAddr>().map(|a| a == addr))
                    .unwrap_or(false)
            }),
        }
    }
    pub fn describe(&self) -> String {
        match self {
            Sources::Any => "any".into(),
            Sources::Only(v) => v
                .iter()
                .map(|s| format!("{} ({})", s.name, s.cidr))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

impl Flow {
    /// Whether a client at `src` connecting to `dst:port/proto` is allowed (arriving on the right interface
    /// is the caller's part: it knows where the packet comes in).
    pub fn admits(&self, src: IpAddr, dst: IpAddr, port: u16, proto: Proto) -> bool {
        self.address == Some(dst)
            && self.port == port
            && self.protocol == proto
            && self.from.admits(src)
    }
}

/// The exposure policy of a host, or `None` for hosts whose firewall labforge does not manage (Talos).
pub fn exposure(spec: &Spec, h: &Host) -> Option<Exposure> {
    if !h.os.has_ssh() {
        return None;
    }
    let mut flows = Vec::new();
    let role_of = |net: &str| spec.networks.get(net).map(|n| n.role);
    let net_source = |name: &str| -> Option<Source> {
        spec.networks.get(name).map(|n| Source {
            name: format!("network:{name}"),
            cidr: n.cidr.trunc().to_string(),
        })
    };

    // SSH: at the listen addresses, from the management networks only.
    let mgmt_sources: Vec<Source> = spec
        .networks
        .values()
        .filter(|n| n.role == NetRole::Management)
        .filter_map(|n| net_source(&n.name))
        .collect();
    for i in h.ssh_interfaces() {
        flows.push(Flow {
            id: "ssh".into(),
            what: FlowKind::Ssh,
            interface: i.name.clone(),
            network: Some(i.network.clone()),
            address: i.address,
            port: h.facts.ssh_port,
            protocol: Proto::Tcp,
            delivery: Delivery::Host,
            from: Sources::Only(mgmt_sources.clone()),
            local_containers: false,
        });
    }

    // NFSv4 on each export network.
    let mut export_nets: Vec<&str> = h
        .exports
        .iter()
        .flat_map(|e| e.networks.iter().map(|s| s.as_str()))
        .collect();
    export_nets.sort();
    export_nets.dedup();
    for net in export_nets {
        let Some(i) = h
            .interfaces
            .iter()
            .find(|i| i.network == net && i.address.is_some())
        else {
            continue;
        };
        flows.push(Flow {
            id: format!("nfs@{net}"),
            what: FlowKind::Nfs,
            interface: i.name.clone(),
            network: Some(net.to_string()),
            address: i.address,
            port: NFS_PORT,
            protocol: Proto::Tcp,
            delivery: Delivery::Host,
            from: Sources::Only(net_source(net).into_iter().collect()),
            local_containers: false,
        });
    }

    // Published ports of the host's stacks.
    for sname in &h.stacks {
        let Some(st) = spec.stacks.get(sname) else {
            continue;
        };
        for (svc_name, svc) in &st.services {
            for p in &svc.ports {
                // No host address on USER or GUEST networks (seed 000): such a port is never opened.
                if matches!(role_of(&p.network), Some(NetRole::User | NetRole::Guest)) {
                    continue;
                }
                let Some(i) = h
                    .interfaces
                    .iter()
                    .find(|i| i.network == p.network && i.address.is_some())
                else {
                    continue;
                };
                let from = if p.allow_from.is_empty() {
                    Sources::Any
                } else {
                    let mut v: Vec<Source> = p
                        .allow_from
                        .iter()
                        .flat_map(|a| allow_source(spec, a, &p.network))
                        .collect();
                    v.sort();
                    v.dedup();
                    Sources::Only(v)
                };
                let local = from == Sources::Any;
                flows.push(Flow {
                    id: format!("{sname}/{svc_name}:{}/{}", p.host, p.protocol.as_str()),
                    what: FlowKind::Published,
                    interface: i.name.clone(),
                    network: Some(p.network.clone()),
                    address: i.address,
                    port: p.host,
                    protocol: p.protocol,
                    delivery: Delivery::Docker,
                    from,
                    local_containers: local,
                });
            }
        }
    }

    // libvirt's DHCP and DNS for local guests (on libvirt's own bridges, not on a spec network).
    if h.virtualisation.is_some() {
        for (port, proto) in [(53, Proto::Udp), (53, Proto::Tcp), (67, Proto::Udp)] {
            flows.push(Flow {
                id: format!("libvirt:{port}/{}", proto.as_str()),
                what: FlowKind::LibvirtGuests,
                interface: "virbr*".into(),
                network: None,
                address: None,
                port,
                protocol: proto,
                delivery: Delivery::Host,
                from: Sources::Any,
                local_containers: false,
            });
        }
    }
    flows.sort_by(|a, b| {
        (a.address, a.protocol, a.port, &a.interface, &a.id).cmp(&(
            b.address,
            b.protocol,
            b.port,
            &b.interface,
            &b.id,
        ))
    });
    let mut addresses: Vec<HostAddress> = h
        .interfaces
        .iter()
        .filter_map(|i| {
            Some(HostAddress {
                interface: i.name.clone(),
                network: i.network.clone(),
                role: role_of(&i.network)?,
                address: i.address?,
            })
        })
        .collect();
    addresses.sort();
    Some(Exposure {
        default: h.hardening.firewall_default.clone(),
        flows,
        addresses,
    })
}

/// What an `allow_from` entry stands for: a network's CIDR, or a host's address on the port's network (else
/// every static address it has).
fn allow_source(spec: &Spec, entry: &str, port_network: &str) -> Vec<Source> {
    if let Some(n) = spec.networks.get(entry) {
        return vec![Source {
            name: format!("network:{entry}"),
            cidr: n.cidr.trunc().to_string(),
        }];
    }
    let Some(h) = spec.hosts.get(entry) else {
        return Vec::new();
    };
    let addrs: Vec<IpAddr> = match h.address_on(port_network) {
        Some(a) => vec![a],
        None => h.interfaces.iter().filter_map(|i| i.address).collect(),
    };
    addrs
        .into_iter()
        .map(|a| Source {
            name: format!("host:{entry}"),
            cidr: a.to_string(),
        })
        .collect()
}
