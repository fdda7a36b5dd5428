//! The lab's dependency graph, derived once from the validated spec: who resolves through whom (DNS), NFS
//! clients → their server, stacks → the stacks whose networks they join, Prometheus → the Traefik it scrapes,
//! Talos nodes → their cluster's bootstrap node, and operator gates before stacks. Hosts fall into **waves**
//! (a host's providers are all in earlier waves); `plan` prints them, `deploy` follows them, and a cycle is a
//! `check` error (SPEC031) that names it.

use super::model::{GateWhen, Host, Os, Spec};
use crate::diag::Diagnostic;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EdgeKind {
    /// The host resolves names through a resolver another host serves.
    Dns,
    /// The host mounts an export of a storage host.
    Nfs,
    /// A stack joins a network another stack creates (same host: start order).
    Network,
    /// A Prometheus scrapes a service of another stack (same host: start order).
    Scrape,
    /// A Talos node joins the cluster its bootstrap node creates.
    Talos,
    /// A stack waits for an operator gate (seed 001: "MUST NOT proceed until validation passes").
    Gate,
}

/// `from` needs `to` first. Endpoints: `host`, `host/stack` or `gate:<id>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub kind: EdgeKind,
    pub why: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Graph {
    pub edges: Vec<Edge>,
    /// Hosts in deploy order: every host's providers are in earlier waves.
    pub waves: Vec<Vec<String>>,
}

fn host_of(endpoint: &str) -> Option<&str> {
    if endpoint.starts_with("gate:") {
        return None;
    }
    Some(endpoint.split('/').next().unwrap_or(endpoint))
}

/// The resolvers a host is configured with (as the renderers write them): its networks' own, else the site's.
pub fn resolvers(spec: &Spec, h: &Host) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = Vec::new();
    if h.os == Os::Talos {
        let net = h
            .cluster
            .as_ref()
            .and_then(|c| spec.clusters.get(c))
            .and_then(|c| spec.networks.get(&c.network));
        return match net {
            Some(n) if !n.nameservers.is_empty() => n.nameservers.clone(),
            _ => spec.site.nameservers.clone(),
        };
    }
    v.extend(spec.site.nameservers.iter().copied());
    for i in &h.interfaces {
        if let Some(n) = spec.networks.get(&i.network) {
            for a in &n.nameservers {
                if !v.contains(a) {
                    v.push(*a);
                }
            }
        }
    }
    v
}

/// The host and stack that serve DNS (port 53) at `addr`, if a lab host owns that address.
pub fn dns_provider(spec: &Spec, addr: IpAddr) -> Option<(&Host, Option<&str>)> {
    let h = spec
        .hosts
        .values()
        .find(|h| h.interfaces.iter().any(|i| i.address == Some(addr)))?;
    let stack = h.stacks.iter().find(|s| {
        spec.stacks.get(*s).is_some_and(|st| {
            st.services
                .values()
                .any(|svc| svc.ports.iter().any(|p| p.host == 53))
        })
    });
    Some((h, stack.map(|s| s.as_str())))
}

/// A resolver address, the host serving it and the stack that does.
pub type Served = (IpAddr, String, String);

/// The resolvers of `h` that a lab stack serves (host, stack): down until that stack is deployed.
pub fn stack_served_resolvers(spec: &Spec, h: &Host) -> Vec<Served> {
    resolvers(spec, h)
        .into_iter()
        .filter_map(|r| match dns_provider(spec, r) {
            Some((p, Some(s))) => Some((r, p.name.clone(), s.to_string())),
            _ => None,
        })
        .collect()
}

/// What a host is configured with: its resolvers, then — when a lab stack serves one of them — the site's
/// bootstrap resolvers, which answer the first boot (and whenever the lab resolver is down) because the lab
/// resolver's stack starts only at `labforge deploy`.
pub fn configured_resolvers(spec: &Spec, h: &Host) -> Vec<IpAddr> {
    let mut v = resolvers(spec, h);
    if !stack_served_resolvers(spec, h).is_empty() {
        for b in &spec.site.bootstrap_nameservers {
            if !v.contains(b) {
                v.push(*b);
            }
        }
    }
    v
}

/// Every edge of the lab.
pub fn edges(spec: &Spec) -> Vec<Edge> {
    let mut v = Vec::new();
    for h in spec.hosts.values() {
        for r in resolvers(spec, h) {
            if let Some((p, stack)) = dns_provider(spec, r) {
                if p.name != h.name {
                    v.push(Edge {
                        from: h.name.clone(),
                        to: match stack {
                            Some(s) => format!("{}/{s}", p.name),
                            None => p.name.clone(),
                        },
                        kind: EdgeKind::Dns,
                        why: format!("{} resolves through {r}", h.name),
                    });
                }
            }
        }
        for m in &h.mounts {
            if m.from != h.name {
                v.push(Edge {
                    from: h.name.clone(),
                    to: m.from.clone(),
                    kind: EdgeKind::Nfs,
                    why: format!("{} mounts {}:{} at {}", h.name, m.from, m.export, m.at),
                });
            }
        }
        if let (Os::Talos, Some(c)) = (h.os, h.cluster.as_ref().and_then(|c| spec.clusters.get(c)))
        {
            if let Some(first) = c.control_planes.first() {
                if first != &h.name {
                    v.push(Edge {
                        from: h.name.clone(),
                        to: first.clone(),
                        kind: EdgeKind::Talos,
                        why: format!(
                            "{} joins cluster {} bootstrapped on {first}",
                            h.name, c.name
                        ),
                    });
                }
            }
        }
        for sname in &h.stacks {
            let Some(st) = spec.stacks.get(sname) else {
                continue;
            };
            for (net, dn) in &st.networks {
                if let Some((other, onet)) = &dn.external {
                    if other != sname && h.stacks.contains(other) {
                        v.push(Edge {
                            from: format!("{}/{sname}", h.name),
                            to: format!("{}/{other}", h.name),
                            kind: EdgeKind::Network,
                            why: format!("{sname}'s network {net} is {other}'s {onet}"),
                        });
                    }
                }
            }
            for svc in st.services.values() {
                if !svc.image.repository.ends_with("prometheus") {
                    continue;
                }
                for (job, target, _) in crate::render::compose::scrape_targets(spec, st, svc) {
                    let svc_name = target.split(':').next().unwrap_or("");
                    let other = h.stacks.iter().find(|o| {
                        *o != sname
                            && spec
                                .stacks
                                .get(*o)
                                .is_some_and(|os| os.services.contains_key(svc_name))
                    });
                    if let Some(o) = other {
                        v.push(Edge {
                            from: format!("{}/{sname}", h.name),
                            to: format!("{}/{o}", h.name),
                            kind: EdgeKind::Scrape,
                            why: format!("{} scrapes {target} (job {job})", svc.name),
                        });
                    }
                }
            }
            for g in spec
                .gates
                .values()
                .filter(|g| g.stack == *sname && g.when == GateWhen::Before)
            {
                v.push(Edge {
                    from: format!("{}/{sname}", h.name),
                    to: format!("gate:{}", g.id),
                    kind: EdgeKind::Gate,
                    why: format!(
                        "operator gate `{}` ({}) before stack {sname}",
                        g.id, g.title
                    ),
                });
            }
        }
    }
    v.sort();
    v.dedup();
    v
}

/// The waves of `hosts` under `edges` (edges to hosts outside `hosts` are taken as met), or a cycle.
pub fn waves(hosts: &[String], edges: &[Edge]) -> Result<Vec<Vec<String>>, Vec<String>> {
    let set: BTreeSet<&str> = hosts.iter().map(|s| s.as_str()).collect();
    let mut needs: BTreeMap<&str, BTreeSet<&str>> =
        set.iter().map(|h| (*h, BTreeSet::new())).collect();
    for e in edges {
        if let (Some(a), Some(b)) = (host_of(&e.from), host_of(&e.to)) {
            if a != b && set.contains(a) && set.contains(b) {
                needs.get_mut(a).map(|s| s.insert(b));
            }
        }
    }
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    while done.len() < set.len() {
        let wave: Vec<&str> = needs
            .iter()
            .filter(|(h, n)| !done.contains(*h) && n.iter().all(|x| done.contains(x)))
            .map(|(h, _)| *h)
            .collect();
        if wave.is_empty() {
            let left: BTreeMap<&str, BTreeSet<&str>> = needs
                .iter()
                .filter(|(h, _)| !done.contains(*h))
                .map(|(h, n)| {
                    (
                        *h,
                        n.iter().filter(|x| !done.contains(*x)).copied().collect(),
                    )
                })
                .collect();
            return Err(find_cycle(&left));
        }
        done.extend(wave.iter().copied());
        out.push(wave.into_iter().map(|s| s.to_string()).collect());
    }
    Ok(out)
}

/// One cycle among `left` (every node has an unmet dependency among `left`), as `a → b → … → a`.
fn find_cycle(left: &BTreeMap<&str, BTreeSet<&str>>) -> Vec<String> {
    let Some(start) = left.keys().next() else {
        return vec![];
    };
    let mut path: Vec<&str> = vec![start];
    loop {
        let cur = path[path.len() - 1];
        let next = left
            .get(cur)
            .and_then(|n| n.iter().next().copied())
            .unwrap_or(start);
        if let Some(i) = path.iter().position(|p| *p == next) {
            let mut c: Vec<String> = path[i..].iter().map(|s| s.to_string()).collect();
            c.push(next.to_string());
            return c;
        }
        path.push(next);
    }
}

/// Stack start order on one host (a stack after the stacks it joins or scrapes), or a cycle.
pub fn stack_order(h: &Host, edges: &[Edge]) -> Result<Vec<String>, Vec<String>> {
    let prefix = format!("{}/", h.name);
    let local: Vec<Edge> = edges
        .iter()
        .filter(|e| e.from.starts_with(&prefix) && e.to.starts_with(&prefix))
        .map(|e| Edge {
            from: e.from[prefix.len()..].to_string(),
            to: e.to[prefix.len()..].to_string(),
            ..e.clone()
        })
        .collect();
    // Keep the host's own order within a wave.
    let w = waves(&h.stacks, &local)?;
    let mut acc = Vec::new();
    for wave in &w {
        for s in &h.stacks {
            if wave.contains(s) {
                acc.push(s.clone());
            }
        }
    }
    Ok(acc)
}

/// The graph of the whole lab, with waves over every host.
pub fn graph(spec: &Spec) -> Result<Graph, Vec<String>> {
    let edges = edges(spec);
    let hosts: Vec<String> = spec.hosts.keys().cloned().collect();
    let waves = waves(&hosts, &edges)?;
    Ok(Graph { edges, waves })
}

/// `check`'s view: a dependency cycle between hosts or between the stacks of one host is an error.
pub fn diagnostics(spec: &Spec) -> Vec<Diagnostic> {
    let mut d = Vec::new();
    let edges = edges(spec);
    let hosts: Vec<String> = spec.hosts.keys().cloned().collect();
    if let Err(c) = waves(&hosts, &edges) {
        let why: Vec<String> = c
            .windows(2)
            .filter_map(|w| {
                edges
                    .iter()
                    .find(|e| host_of(&e.from) == Some(&w[0]) && host_of(&e.to) == Some(&w[1]))
                    .map(|e| e.why.clone())
            })
            .collect();
        let loc = spec.hosts.get(&c[0]).and_then(|h| h.loc);
        d.push(
            Diagnostic::error(
                "SPEC031",
                format!("hosts.{}", c[0]),
                format!(
                    "dependency cycle between hosts: {} ({})",
                    c.join(" → "),
                    why.join("; ")
                ),
            )
            .at(loc)
            .help("break the cycle: serve the resolver, export or network from a host that does not need the other (e.g. an external resolver in site.nameservers)"),
        );
    }
    // A first boot must resolve before any stack is deployed.
    let needing: Vec<(&Host, Vec<Served>)> = spec
        .hosts
        .values()
        .map(|h| (h, stack_served_resolvers(spec, h)))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    if !needing.is_empty() {
        let (ip, host, stack) = needing[0].1[0].clone();
        let names: Vec<&str> = needing.iter().map(|(h, _)| h.name.as_str()).collect();
        let served: Vec<IpAddr> = spec
            .site
            .bootstrap_nameservers
            .iter()
            .copied()
            .filter(|b| matches!(dns_provider(spec, *b), Some((_, Some(_)))))
            .collect();
        if spec.site.bootstrap_nameservers.is_empty() {
            d.push(
                Diagnostic::error(
                    "SPEC033",
                    "site.bootstrap_nameservers",
                    format!(
                        "the first boot of {} cannot resolve names: their resolver {ip} is stack `{stack}` on {host}, which starts only with `labforge deploy` (packages and images are fetched before that)",
                        names.join(", ")
                    ),
                )
                .at(spec.site.loc)
                .help("add site.bootstrap_nameservers = [\"<a resolver that answers before the lab does, e.g. the router>\"]: hosts list it after the lab resolver and fall back to it until that answers"),
            );
        } else if !served.is_empty() {
            d.push(
                Diagnostic::error(
                    "SPEC033",
                    "site.bootstrap_nameservers",
                    format!(
                        "bootstrap resolver {} is itself served by a lab stack: it is down at first boot too",
                        served[0]
                    ),
                )
                .at(spec.site.loc)
                .help("use a resolver outside the lab's stacks (e.g. the router)"),
            );
        }
    }
    for h in spec.hosts.values() {
        if let Err(c) = stack_order(h, &edges) {
            let loc = spec.stacks.get(&c[0]).and_then(|s| s.loc);
            d.push(
                Diagnostic::error(
                    "SPEC031",
                    format!("stacks.{}", c[0]),
                    format!(
                        "dependency cycle between stacks on {}: {}",
                        h.name,
                        c.join(" → ")
                    ),
                )
                .at(loc)
                .help("a stack can join another stack's network only if that stack does not join its own"),
            );
        }
    }
    d
}
