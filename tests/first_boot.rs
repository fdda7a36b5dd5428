//! First boot depends only on what exists before it: no rendered seed starts a stack behind an unconfirmed
//! `before` operator gate (seed 001: "MUST NOT proceed until validation passes"), and a stack starts only after
//! the stacks it needs, in dependency order; deploy's plan gates the stack and starts it after sign-off.

mod common;
use common::*;
use std::path::Path;

/// The stacks a host's user-data starts at first boot, in order (`docker compose --project-directory
/// /opt/labforge/stacks/<stack> … up`).
fn first_boot_stacks(root: &Path, host: &str) -> Vec<String> {
    let text =
        std::fs::read_to_string(root.join(format!("out/cloud-init/{host}/user-data"))).unwrap();
    let ud: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
    ud["runcmd"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| {
            let c: Vec<&str> = c.as_array()?.iter().filter_map(|x| x.as_str()).collect();
            if c.first() == Some(&"docker") && c.contains(&"up") {
                let i = c.iter().position(|x| *x == "--project-directory")?;
                Some(c[i + 1].rsplit('/').next()?.to_string())
            } else {
                None
            }
        })
        .collect()
}

fn render(root: &Path) {
    for args in [&["secrets", "init"][..], &["render"][..]] {
        let o = labforge(root, args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn no_seed_of_the_example_lab_starts_a_stack_behind_an_unconfirmed_gate() {
    let t = example_lab();
    render(t.path());
    let plan: serde_json::Value =
        serde_json::from_slice(&labforge(t.path(), &["plan", "--json"]).stdout).unwrap();
    let gated: Vec<String> = plan["dependencies"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "gate")
        .map(|e| e["from"].as_str().unwrap().to_string())
        .collect();
    assert!(!gated.is_empty());
    for h in plan["hosts"].as_array().unwrap() {
        let name = h["name"].as_str().unwrap();
        if !t
            .path()
            .join(format!("out/cloud-init/{name}/user-data"))
            .exists()
        {
            continue;
        }
        for s in first_boot_stacks(t.path(), name) {
            assert!(
                !gated.contains(&format!("{name}/{s}")),
                "{name}'s first boot starts {s}, which waits behind a gate"
            );
        }
    }
    // NixOS: the gated stack's unit waits for the gate's host marker (written by deploy after sign-off).
    let unit = std::fs::read_to_string(repo().join("services/metrics/service.nix")).unwrap();
    assert!(
        unit.contains("ConditionPathExists = [ \"/var/lib/labforge/gates/s001-preconditions\" ];"),
        "{unit}"
    );
}

#[test]
fn a_gated_stack_and_the_stacks_that_need_it_wait_for_deploy() {
    // iris runs dns (reads a secret: deploy starts it) and portainer-agent (no secret: first boot starts it).
    let t = example_lab();
    render(t.path());
    assert_eq!(first_boot_stacks(t.path(), "iris"), ["portainer-agent"]);
    // A `before` gate on portainer-agent: the seed no longer starts it.
    let site = t.path().join("hosts/site.toml");
    let mut text = std::fs::read_to_string(&site).unwrap();
    text.push_str(
        "\n[gates.agent-review]\nseed = \"002\"\ntitle = \"Agent exposure reviewed\"\nwhen = \"before:stack:portainer-agent\"\nchecklist = [\"9001 reachable only from the Platform VM\"]\n",
    );
    std::fs::write(&site, &text).unwrap();
    render(t.path());
    assert!(first_boot_stacks(t.path(), "iris").is_empty());
    // deploy's plan: the gate step, then the stack (its compose-up requires the sign-off).
    let plan: serde_json::Value =
        serde_json::from_slice(&labforge(t.path(), &["plan", "--json", "iris"]).stdout).unwrap();
    let ids: Vec<&str> = plan["hosts"][0]["deploy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    let gate = ids
        .iter()
        .position(|i| *i == "iris:gate:agent-review")
        .unwrap();
    let up = ids
        .iter()
        .position(|i| *i == "iris:compose-up:portainer-agent")
        .unwrap();
    assert!(gate < up, "{ids:?}");
}

#[test]
fn a_stack_starts_at_first_boot_only_after_the_stacks_it_joins() {
    // A stack on iris that joins dns's network: dns reads a secret and starts only at deploy, so the joiner
    // must not start at first boot either (its external network would not exist).
    let t = example_lab();
    let p = t.path().join("hosts/stacks/joiner.toml");
    std::fs::write(
        &p,
        "[stacks.joiner]\ndescription = \"joins dns\"\n\n[stacks.joiner.networks.dnsnet]\nexternal = \"dns/dns\"\n\n[stacks.joiner.services.probe]\nimage = \"nginx:1.27.3@sha256:0a399eb16751829e1af26fea27b20c3ec28d7ab1fb72182879dcae1cca21206a\"\nplatforms = [\"linux/amd64\", \"linux/arm64\"]\nnetworks = [\"dnsnet\"]\n",
    )
    .unwrap();
    let iris = t.path().join("hosts/pis.toml");
    let text = std::fs::read_to_string(&iris).unwrap().replacen(
        "stacks = [\"dns\", \"portainer-agent\"]",
        "stacks = [\"joiner\", \"dns\", \"portainer-agent\"]",
        1,
    );
    std::fs::write(&iris, text).unwrap();
    render(t.path());
    assert_eq!(first_boot_stacks(t.path(), "iris"), ["portainer-agent"]);
    // deploy brings dns up before joiner, although the spec lists joiner first.
    let plan: serde_json::Value =
        serde_json::from_slice(&labforge(t.path(), &["plan", "--json", "iris"]).stdout).unwrap();
    let ups: Vec<&str> = plan["hosts"][0]["deploy"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["action"]["type"] == "compose-up")
        .map(|s| s["action"]["stack"].as_str().unwrap())
        .collect();
    let pos = |s: &str| ups.iter().position(|x| *x == s).unwrap();
    assert!(pos("dns") < pos("joiner"), "{ups:?}");
}

/// iris serves the lab's resolver from a stack that starts only with deploy: every cloud-init host's first
/// boot lists the site's bootstrap resolver after it (cloud-init's network-config, read back as YAML).
#[test]
fn first_boot_falls_back_to_the_bootstrap_resolver_while_the_lab_resolver_is_a_stack() {
    let t = example_lab();
    render(t.path());
    for host in ["iris", "platform", "prometheus", "forge", "vulcan", "ceres"] {
        let text = std::fs::read_to_string(
            t.path()
                .join(format!("out/cloud-init/{host}/network-config")),
        )
        .unwrap();
        let nc: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
        let mut found = Vec::new();
        for kind in ["ethernets", "vlans"] {
            for (_, i) in nc["network"][kind].as_object().into_iter().flatten() {
                if let Some(a) = i["nameservers"]["addresses"].as_array() {
                    found.push(
                        a.iter()
                            .map(|x| x.as_str().unwrap().to_string())
                            .collect::<Vec<_>>(),
                    );
                }
            }
        }
        assert!(
            found.iter().any(|a| a == &["10.60.0.53", "10.60.0.1"]),
            "{host}: {found:?}"
        );
    }
    // Without bootstrap resolvers check refuses the spec, naming the stack that serves DNS.
    let p = t.path().join("hosts/site.toml");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("bootstrap_nameservers = [\"10.60.0.1\"]\n", "");
    std::fs::write(&p, text).unwrap();
    let o = labforge(t.path(), &["check", "--json"]);
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let errs = v["errors"].as_array().unwrap();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0]["rule"], "SPEC033");
    assert!(errs[0]["message"]
        .as_str()
        .unwrap()
        .contains("stack `dns` on iris"));
}
