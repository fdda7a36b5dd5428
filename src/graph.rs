//! `labforge graph`: the lab as Graphviz DOT (networks, hosts, stacks, clusters, mounts).

use crate::spec::model::Spec;
use std::fmt::Write;

pub fn dot(spec: &Spec) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\\\""));
    let mut o = String::new();
    let _ = writeln!(o, "graph {} {{", q(&spec.site.name));
    let _ = writeln!(
        o,
        "  graph [rankdir=LR, fontname=\"sans-serif\"];\n  node [fontname=\"sans-serif\"];"
    );
    for n in spec.networks.values() {
        let _ = writeln!(
            o,
            "  {} [shape=box, style=rounded, label={}];",
            q(&format!("net:{}", n.name)),
            q(&format!(
                "{} (VLAN {}, {})\\n{}",
                n.name,
                n.vlan,
                n.role.as_str(),
                n.cidr
            ))
        );
    }
    for h in spec.hosts.values() {
        let _ = writeln!(
            o,
            "  {} [shape=component, label={}];",
            q(&format!("host:{}", h.name)),
            q(&format!(
                "{}\\n{} {} {}{}",
                h.name,
                h.os.as_str(),
                h.arch.as_str(),
                h.board.as_str(),
                if h.disposable { "\\ndisposable" } else { "" }
            ))
        );
        for i in &h.interfaces {
            let label = i
                .address
                .map(|a| a.to_string())
                .unwrap_or_else(|| "dhcp".into());
            let _ = writeln!(
                o,
                "  {} -- {} [label={}];",
                q(&format!("host:{}", h.name)),
                q(&format!("net:{}", i.network)),
                q(&format!("{} {label}", i.name))
            );
        }
        for s in &h.stacks {
            let _ = writeln!(
                o,
                "  {} -- {} [style=dashed];",
                q(&format!("host:{}", h.name)),
                q(&format!("stack:{s}"))
            );
        }
        for m in &h.mounts {
            let _ = writeln!(
                o,
                "  {} -- {} [style=dotted, label={}];",
                q(&format!("host:{}", h.name)),
                q(&format!("host:{}", m.from)),
                q(&format!("{:?} {}", m.kind, m.export).to_lowercase())
            );
        }
    }
    for s in spec.stacks.values() {
        let svcs: Vec<&str> = s.services.keys().map(|k| k.as_str()).collect();
        let _ = writeln!(
            o,
            "  {} [shape=folder, label={}];",
            q(&format!("stack:{}", s.name)),
            q(&format!("{}\\n{}", s.name, svcs.join(", ")))
        );
    }
    for c in spec.clusters.values() {
        let _ = writeln!(
            o,
            "  {} [shape=doubleoctagon, label={}];",
            q(&format!("cluster:{}", c.name)),
            q(&format!(
                "{} (Talos {})\\nVIP {}",
                c.name, c.talos_version, c.endpoint_vip
            ))
        );
        for n in c.control_planes.iter().chain(&c.workers) {
            let _ = writeln!(
                o,
                "  {} -- {};",
                q(&format!("cluster:{}", c.name)),
                q(&format!("host:{n}"))
            );
        }
    }
    o.push_str("}\n");
    o
}
