//! Benchmark P3 (run by benches/p3_verify.sh; ignored in the normal test run): `labforge verify` of 50
//! real sshd hosts (one network namespace each, tests/netns_lab/mod.rs) against Ansible (`-f 50`, `raw`
//! module) running the very same remote probe script on the same hosts, in one run.

mod netns_lab;
use netns_lab::*;
use std::time::Instant;

#[test]
#[ignore = "benchmark P3: bash benches/p3_verify.sh"]
fn p3_verify_50_hosts_vs_ansible() {
    let n: usize = std::env::var("P3_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let ansible = std::env::var("P3_ANSIBLE").expect("P3_ANSIBLE=path to ansible-playbook");
    let names: Vec<String> = (0..n).map(|i| format!("b{i:02}")).collect();
    let specs: Vec<HostSpec> = names
        .iter()
        .map(|h| HostSpec {
            name: h.clone(),
            os: "ubuntu",
            stacks: vec![],
        })
        .collect();
    let t = Instant::now();
    let mut lab = Lab::new(&specs, "");
    for h in &names {
        let d = lab.rendered_dropin(h);
        lab.start(h, &d);
        lab.load_firewall(h);
    }
    eprintln!(
        "lab of {n} hosts ready in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let key = lab.op_key.display().to_string();
    // warm-up (writes known_hosts) — not timed
    let o = lab.labforge(&[
        "verify",
        "--all",
        "--identity",
        &key,
        "--json",
        "--probe-timeout-ms",
        "1000",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    let t = Instant::now();
    let o = lab.labforge(&[
        "verify",
        "--all",
        "--identity",
        &key,
        "--json",
        "--probe-timeout-ms",
        "1000",
    ]);
    let labforge_s = t.elapsed().as_secs_f64();
    assert_eq!(o.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let checks: usize = report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["results"].as_array().unwrap().len())
        .sum();

    // The same remote probe script per host, via Ansible's raw module (no Python needed on the hosts).
    let spec = lab.spec();
    let mut inv = String::from("all:\n  hosts:\n");
    for h in &names {
        let host = &spec.hosts[h];
        let checks = labforge::verify::checks::for_host(&spec, host);
        let mut probes: Vec<(String, String, String)> = Vec::new();
        for c in checks.iter().filter(|c| c.not_applicable.is_none()) {
            if let labforge::verify::checks::Probe::Remote { key, tool, command } = &c.probe {
                if !probes.iter().any(|p| &p.0 == key) {
                    probes.push((key.clone(), tool.clone(), command.clone()));
                }
            }
        }
        let script = labforge::verify::batch_script(&probes);
        let cmd = format!("sudo -n sh -c {}", labforge::transport::sq(&script));
        inv.push_str(&format!(
            "    {h}:\n      ansible_host: {}\n      probe: {}\n",
            lab.host(h).mgmt,
            serde_json::to_string(&cmd).unwrap()
        ));
    }
    let d = lab.dir.path();
    std::fs::write(d.join("inventory.yml"), inv).unwrap();
    std::fs::write(
        d.join("probe.yml"),
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - raw: \"{{ probe }}\"\n      changed_when: false\n",
    )
    .unwrap();
    let kh = d.join(".labforge/known_hosts");
    let run_ansible = || {
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ctl,
                &ansible,
                "-i",
                "inventory.yml",
                "-f",
                "50",
                "probe.yml",
            ])
            .current_dir(d)
            .env("LC_ALL", "C.UTF-8")
            .env("ANSIBLE_HOST_KEY_CHECKING", "True")
            .env("ANSIBLE_REMOTE_USER", "ops")
            .env("ANSIBLE_PRIVATE_KEY_FILE", &key)
            .env(
                "ANSIBLE_SSH_ARGS",
                format!(
                    "-o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o ControlMaster=no",
                    kh.display()
                ),
            )
            .env("ANSIBLE_NOCOLOR", "1")
            .output()
            .unwrap()
    };
    let t = Instant::now();
    let o = run_ansible();
    let ansible_s = t.elapsed().as_secs_f64();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "ansible failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains(&format!("ok={}", 1))
            && !out.contains("unreachable=1")
            && !out.contains("failed=1"),
        "{out}"
    );
    // For the record: Ansible's own cost with a no-op remote command (what the probes add on top).
    std::fs::write(
        d.join("probe.yml"),
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - raw: \"true\"\n      changed_when: false\n",
    )
    .unwrap();
    let t = Instant::now();
    let o = run_ansible();
    let ansible_noop_s = t.elapsed().as_secs_f64();
    assert!(o.status.success());
    let ratio = ansible_s / labforge_s;
    println!("P3 hosts={n} checks={checks} labforge_verify_wall_s={labforge_s:.3} ansible_same_probes_wall_s={ansible_s:.3} ratio={ratio:.1}x ansible_noop_wall_s={ansible_noop_s:.3}");
    assert!(
        labforge_s <= 3.0,
        "goal: verify {n} hosts in ≤ 3 s, took {labforge_s:.2}s"
    );
    assert!(
        ratio >= 20.0,
        "goal: ≥ 20× faster than Ansible, got {ratio:.1}×"
    );
}
