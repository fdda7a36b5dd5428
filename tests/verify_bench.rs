//! Benchmark P3 (run by benches/p3_verify.sh; ignored in the normal test run): `labforge verify` of 50
//! real sshd hosts (one network namespace each, tests/netns_lab/mod.rs) against Ansible (`-f 50`) running
//! the very same remote probe commands on the same hosts, in one run (see the shapes below).

mod netns_lab;
use netns_lab::*;
use std::time::Instant;

/// CPU seconds the whole machine spent (all cores, /proc/stat user+nice+system+irq+softirq), to show where a
/// run's wall time went: the 50 "hosts" share the controller's cores.
fn machine_cpu_s() -> f64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap();
    let l = s.lines().next().unwrap();
    let v: Vec<f64> = l
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    let hz = 100.0; // USER_HZ
    (v[0] + v[1] + v[2] + v[5] + v[6]) / hz
}

/// CPU seconds spent by every host's sshd daemon and everything it forked and reaped (connection handlers,
/// sessions, the probe commands): `cutime + cstime` of each daemon from /proc.
fn hosts_cpu_s(lab: &Lab, names: &[String]) -> f64 {
    names
        .iter()
        .map(|h| {
            let pid = std::fs::read_to_string(lab.host(h).root.join("run/sshd.pid")).unwrap();
            let st = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap();
            let rest = &st[st.rfind(')').unwrap() + 2..];
            let f: Vec<f64> = rest
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0.0))
                .collect();
            // fields after the comm: state=0 … utime=11 stime=12 cutime=13 cstime=14
            (f[11] + f[12] + f[13] + f[14]) / 100.0
        })
        .sum()
}

/// CPU seconds of reaped children so far (labforge's own cost: `ip netns exec` execs it in place).
fn children_cpu_s() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

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

    let (cpu0, own0, h0) = (machine_cpu_s(), children_cpu_s(), hosts_cpu_s(&lab, &names));
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
    let (labforge_cpu, labforge_own) = (machine_cpu_s() - cpu0, children_cpu_s() - own0);
    std::thread::sleep(std::time::Duration::from_millis(300)); // let the daemons reap their children
    let labforge_hosts = hosts_cpu_s(&lab, &names) - h0;
    assert_eq!(o.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let checks: usize = report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["results"].as_array().unwrap().len())
        .sum();

    // Ansible gets the very same remote probe commands per host (labforge::verify::checks, deduplicated as
    // labforge runs them), in two shapes:
    //  * `tasks`: the playbook an operator writes — one `shell` task per probe command (a loop over the
    //    host's probes), `become: true`, gather_facts off, output registered. Ansible at its fastest settings
    //    for this: SSH ControlPersist (its default) and pipelining on (one SSH exec per task, no temp files).
    //  * `raw-batch`: labforge's own batched probe script (`labforge::verify::batch_script`) handed to the
    //    `raw` module — one SSH exec per host, no Python on the host: Ansible reduced to parallel SSH.
    // Plus `raw: true`, Ansible's own cost with no probe work at all.
    let spec = lab.spec();
    let mut inv = String::from("all:\n  hosts:\n");
    let mut probe_count = 0;
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
        probe_count += probes.len();
        let script = labforge::verify::batch_script(&probes);
        let batch = format!("sudo -n sh -c {}", labforge::transport::sq(&script));
        inv.push_str(&format!(
            "    {h}:\n      ansible_host: {}\n      batch: !unsafe {}\n      probes:\n",
            lab.host(h).mgmt,
            serde_json::to_string(&batch).unwrap()
        ));
        for (k, _, cmd) in &probes {
            // `!unsafe`: the commands are data, not Jinja templates (awk's `{…}`, `${…}`).
            inv.push_str(&format!(
                "        - key: {k}\n          cmd: !unsafe {}\n",
                serde_json::to_string(cmd).unwrap()
            ));
        }
    }
    let d = lab.dir.path();
    std::fs::write(d.join("inventory.yml"), inv).unwrap();
    let playbooks = [
        (
            "tasks",
            "- hosts: all\n  gather_facts: false\n  become: true\n  tasks:\n    - name: probe\n      ansible.builtin.shell: \"{{ item.cmd }}\"\n      loop: \"{{ probes }}\"\n      loop_control:\n        label: \"{{ item.key }}\"\n      register: probe_out\n      changed_when: false\n      failed_when: false\n",
        ),
        (
            "raw-batch",
            "- hosts: all\n  gather_facts: false\n  tasks:\n    - ansible.builtin.raw: \"{{ batch }}\"\n      changed_when: false\n",
        ),
        (
            "noop",
            "- hosts: all\n  gather_facts: false\n  tasks:\n    - ansible.builtin.raw: \"true\"\n      changed_when: false\n",
        ),
    ];
    let kh = d.join(".labforge/known_hosts");
    let cp = d.join("cp");
    std::fs::create_dir_all(&cp).unwrap();
    let run_ansible = |book: &str| {
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
                book,
            ])
            .current_dir(d)
            .env("LC_ALL", "C.UTF-8")
            .env("ANSIBLE_HOST_KEY_CHECKING", "True")
            .env("ANSIBLE_REMOTE_USER", "ops")
            .env("ANSIBLE_PRIVATE_KEY_FILE", &key)
            .env("ANSIBLE_PIPELINING", "True")
            .env("ANSIBLE_PYTHON_INTERPRETER", "/usr/bin/python3")
            .env(
                "ANSIBLE_SSH_ARGS",
                format!(
                    "-o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o ControlMaster=auto -o ControlPersist=60s",
                    kh.display()
                ),
            )
            .env("ANSIBLE_SSH_CONTROL_PATH_DIR", &cp)
            .env("ANSIBLE_NOCOLOR", "1")
            .output()
            .unwrap()
    };
    let close_masters = || {
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "for s in {}/*; do [ -S \"$s\" ] && ip netns exec {} ssh -o ControlPath=\"$s\" -O exit x 2>/dev/null; done; true",
                cp.display(),
                lab.ctl
            ))
            .status();
    };
    let mut ansible = std::collections::BTreeMap::new();
    for (name, book) in playbooks {
        let f = format!("{name}.yml");
        std::fs::write(d.join(&f), book).unwrap();
        // Each shape starts without a warm control master (none of them may reuse another's connections).
        close_masters();
        let (cpu0, h0) = (machine_cpu_s(), hosts_cpu_s(&lab, &names));
        let t = Instant::now();
        let o = run_ansible(&f);
        let wall = t.elapsed().as_secs_f64();
        let cpu = machine_cpu_s() - cpu0;
        // Close the persisted connections so the hosts' sshd reap them and their CPU is counted.
        close_masters();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let hosts = hosts_cpu_s(&lab, &names) - h0;
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "ansible {name} failed:\n{out}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            out.matches("ok=1 ").count(),
            n,
            "ansible {name}: every host must be ok once:\n{out}"
        );
        ansible.insert(name, (wall, cpu, hosts));
    }
    println!(
        "P3 hosts={n} checks={checks} remote_probe_commands={probe_count} labforge_verify_wall_s={labforge_s:.3}"
    );
    println!("P3 cpu: labforge run: machine {labforge_cpu:.2} cpu-s (labforge itself {labforge_own:.2}, the {n} hosts {labforge_hosts:.2})");
    for (name, (wall, cpu, hosts)) in &ansible {
        println!(
            "P3 ansible {name}: wall_s={wall:.3} ratio={:.1}x machine_cpu_s={cpu:.2} hosts_cpu_s={hosts:.2}",
            wall / labforge_s
        );
    }
    let ratio = ansible["tasks"].0 / labforge_s;
    assert!(
        labforge_s <= 3.0,
        "goal: verify {n} hosts in ≤ 3 s, took {labforge_s:.2}s"
    );
    assert!(
        ratio >= 20.0,
        "goal: ≥ 20× faster than Ansible running the same probe commands, got {ratio:.1}×"
    );
}
