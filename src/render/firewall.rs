//! The one nftables compiler: a host's exposure policy (`plan::exposure`) → the body of `table inet labforge`.
//!
//! Ubuntu/Debian load it as `/etc/nftables.conf` (`nftables_conf`); NixOS carries the same body, byte for
//! byte, in `networking.nftables.tables.labforge.content` (NixOS's own `networking.firewall` is off, so the
//! compiled table is the whole host firewall on every OS).
//!
//! Packet paths the table covers (docs/ARCHITECTURE.md "Exposure policy"):
//! * delivered to the host (sshd, nfsd, libvirt's dnsmasq, docker-proxy for a container talking to its own
//!   host's published address): the `input` chain, policy drop; allowed flows accept, replies pass by conntrack;
//! * Docker-published ports: Docker DNATs them in prerouting and they take the **forward** path to the
//!   container, never `input`. The `forward` chain sends only *new* connections that were DNATed from one of
//!   this host's addresses to `published`, which accepts the policy's flows by their original destination and
//!   drops the rest. Replies (conntrack established) and everything else forwarded — containers' own traffic,
//!   libvirt guests — are left to Docker's and libvirt's chains. A drop here is final; an accept only ends this
//!   table's say.

use crate::plan::exposure::{Delivery, Exposure, Flow, Sources};
use std::fmt::Write;
use std::net::IpAddr;

/// The interfaces a host's own containers use: Docker's default bridge and the bridges of Compose networks.
pub const DOCKER_BRIDGES: [&str; 2] = ["docker0", "br-*"];

/// Host plumbing that is not a policy flow: whether to accept DHCP replies (some interface uses DHCP).
#[derive(Debug, Clone, Copy, Default)]
pub struct Plumbing {
    pub dhcp_client: bool,
}

fn fam(a: &IpAddr) -> &'static str {
    if a.is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

/// An nftables double-quoted string (interface names, comments): no quote, backslash or control character
/// survives (the spec's names are validated; this is the last line of defence).
fn q(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    format!("\"{clean}\"")
}

fn set(items: &[String]) -> String {
    if items.len() == 1 {
        items[0].clone()
    } else {
        format!("{{ {} }}", items.join(", "))
    }
}

/// `ip saddr …` for restricted flows, empty for `any`.
fn saddr(f: &Flow, family: &str) -> String {
    match &f.from {
        Sources::Any => String::new(),
        Sources::Only(v) => {
            let c: Vec<String> = v
                .iter()
                .filter(|s| (family == "ip6") == s.cidr.contains(':'))
                .map(|s| s.cidr.clone())
                .collect();
            format!(" {family} saddr {}", set(&c))
        }
    }
}

/// The interfaces a flow may arrive on: its own, plus the Docker bridges when local containers may connect.
fn ifaces(f: &Flow) -> Vec<String> {
    let mut v = vec![f.interface.clone()];
    if f.local_containers {
        v.extend(DOCKER_BRIDGES.iter().map(|s| s.to_string()));
    }
    v
}

fn describe(f: &Flow) -> String {
    format!(
        "{} from {}{}",
        f.id,
        f.from.describe(),
        if f.local_containers {
            " and this host's containers"
        } else {
            ""
        }
    )
}

/// Flows whose traffic can fail to be accepted because of a source restriction: a `Only([])` flow accepts
/// nothing (a host named in allow_from without a usable address; `check` refuses it).
fn has_sources(f: &Flow) -> bool {
    !matches!(&f.from, Sources::Only(v) if v.is_empty())
}

/// The body of `table inet labforge` (without the `table … {` line and its closing brace), 4-space indented.
pub fn table_body(x: &Exposure, plumbing: Plumbing) -> String {
    let reject = x.default == "reject";
    let mut b = String::new();
    let w = &mut b;
    let _ = writeln!(
        w,
        "    # Compiled by labforge from this host's exposure policy (`labforge plan`): every allowed flow,"
    );
    let _ = writeln!(
        w,
        "    # everything else {}. Replies of allowed flows pass by conntrack.",
        if reject { "rejected" } else { "dropped" }
    );
    let _ = writeln!(w, "    chain input {{");
    let _ = writeln!(
        w,
        "        type filter hook input priority filter; policy drop;"
    );
    for l in [
        "ct state established,related accept",
        "ct state invalid drop",
        "iifname \"lo\" accept",
        "meta l4proto icmp accept",
        "meta l4proto ipv6-icmp accept",
    ] {
        let _ = writeln!(w, "        {l}");
    }
    if plumbing.dhcp_client {
        let _ = writeln!(
            w,
            "        # DHCP replies on interfaces the spec leaves to DHCP"
        );
        let _ = writeln!(w, "        udp sport 67 udp dport 68 accept");
    }
    for f in x.flows.iter().filter(|f| has_sources(f)) {
        let _ = writeln!(w, "        # {}", describe(f));
        let proto = f.protocol.as_str();
        for i in ifaces(f) {
            match f.address {
                Some(a) => {
                    let family = fam(&a);
                    let _ = writeln!(
                        w,
                        "        iifname {} {family} daddr {a}{} {proto} dport {} accept",
                        q(&i),
                        saddr(f, family),
                        f.port
                    );
                }
                None => {
                    let _ = writeln!(
                        w,
                        "        iifname {} {proto} dport {} accept",
                        q(&i),
                        f.port
                    );
                }
            }
        }
    }
    if reject {
        let _ = writeln!(w, "        reject with icmpx type admin-prohibited");
    }
    let _ = writeln!(w, "    }}");

    // Published ports: judged on the forward path by their original destination.
    let mut addrs: Vec<IpAddr> = x.addresses.iter().map(|a| a.address).collect();
    addrs.sort();
    addrs.dedup();
    if !addrs.is_empty() {
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "    # Docker DNATs published ports before routing; their packets take the forward path. New"
        );
        let _ = writeln!(
            w,
            "    # connections DNATed from one of this host's addresses pass only as the policy says."
        );
        let _ = writeln!(w, "    chain forward {{");
        let _ = writeln!(
            w,
            "        type filter hook forward priority filter - 10; policy accept;"
        );
        for family in ["ip", "ip6"] {
            let these: Vec<String> = addrs
                .iter()
                .filter(|a| fam(a) == family)
                .map(|a| a.to_string())
                .collect();
            if !these.is_empty() {
                let _ = writeln!(
                    w,
                    "        ct state new ct status dnat ct original {family} daddr {} jump published",
                    set(&these)
                );
            }
        }
        let _ = writeln!(w, "    }}");
        let _ = writeln!(w);
        let _ = writeln!(w, "    chain published {{");
        for f in x
            .flows
            .iter()
            .filter(|f| f.delivery == Delivery::Docker && has_sources(f))
        {
            let Some(a) = f.address else { continue };
            let family = fam(&a);
            let proto = f.protocol.as_str();
            let _ = writeln!(w, "        # {}", describe(f));
            for i in ifaces(f) {
                let _ = writeln!(
                    w,
                    "        iifname {} meta l4proto {proto} ct original {family} daddr {a} ct original proto-dst {}{} accept",
                    q(&i),
                    f.port,
                    saddr(f, family)
                );
            }
        }
        let _ = writeln!(
            w,
            "        {}",
            if reject {
                "reject with icmpx type admin-prohibited"
            } else {
                "drop"
            }
        );
        let _ = writeln!(w, "    }}");
    }
    b
}

/// The whole `/etc/nftables.conf` of a Ubuntu/Debian host: only labforge's table is replaced (Docker's and
/// libvirt's tables are left alone, so it never starts with `flush ruleset`).
pub fn nftables_conf(header: &str, body: &str) -> String {
    format!(
        "#!/usr/sbin/nft -f\n{header}\n# Loaded atomically (`nft -f`). Only labforge's own table is replaced: the tables Docker manages are left alone,\n# so this file never starts with `flush ruleset`.\ntable inet labforge\ndelete table inet labforge\n\ntable inet labforge {{\n{body}}}\n"
    )
}

/// How NixOS's nftables module loads a table (`networking.nftables.tables.<name>`): the test suite loads
/// exactly this for NixOS hosts.
pub fn nixos_table(body: &str) -> String {
    format!("table inet labforge {{\n{body}\n}}\n")
}
