//! `labforge verify` against real OpenSSH servers in network namespaces (see tests/netns_lab/mod.rs):
//! one sshd with the drop-in labforge rendered, several with one planted weakness each. The exact failing
//! check ids are asserted, and all-pass for the hardened one. Oracle: Debian's sshd, sudo, ss, nft.

mod common;
mod netns_lab;
use netns_lab::*;
use serde_json::Value;
use std::collections::BTreeSet;

fn hs(name: &str) -> HostSpec {
    HostSpec {
        name: name.into(),
        os: "ubuntu",
        stacks: vec![],
    }
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn by_status(report: &Value, host: &str, status: &str) -> BTreeSet<String> {
    report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == host)
        .unwrap_or_else(|| panic!("no report for {host}"))["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == status)
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

fn weaken(dropin: &str, from: &str, to: &str) -> String {
    assert!(dropin.contains(from), "rendered drop-in lacks `{from}`");
    dropin.replace(from, to)
}

#[test]
fn verify_hardened_passes_and_each_planted_weakness_fails_exactly() {
    let names = ["good", "pw", "rootlogin", "wildcard", "matchpw", "weakmac"];
    let specs: Vec<HostSpec> = names.iter().map(|n| hs(n)).collect();
    let mut lab = Lab::new(&specs, "");
    for n in names {
        let d = lab.rendered_dropin(n);
        let d = match n {
            "good" => d,
            "pw" => weaken(
                &weaken(&d, "PasswordAuthentication no", "PasswordAuthentication yes"),
                "AuthenticationMethods publickey\n",
                "",
            ),
            "rootlogin" => weaken(&d, "PermitRootLogin no", "PermitRootLogin yes"),
            "wildcard" => {
                let mgmt = lab.host(n).mgmt.clone();
                weaken(&d, &format!("ListenAddress {mgmt}"), "ListenAddress 0.0.0.0")
            }
            "matchpw" => format!(
                "{d}\nMatch Address 10.20.0.0/24\n    PasswordAuthentication yes\n    AuthenticationMethods password\n"
            ),
            "weakmac" => weaken(
                &d,
                "MACs hmac-sha2-512-etm@openssh.com,hmac-sha2-256-etm@openssh.com",
                "MACs hmac-sha1,hmac-sha2-256-etm@openssh.com",
            ),
            _ => unreachable!(),
        };
        lab.start(n, &d);
        lab.load_firewall(n);
    }
    let junit = lab.dir.path().join("verify.xml");
    let key = lab.op_key.display().to_string();
    let o = lab.labforge(&[
        "verify",
        "--all",
        "--identity",
        &key,
        "--json",
        "--junit",
        junit.to_str().unwrap(),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!(
            "verify --json: {e}\nstdout:\n{out}\nstderr:\n{}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    for n in names {
        let errors = by_status(&report, n, "error");
        assert!(errors.is_empty(), "{n}: checks in error {errors:?}\n{out}");
    }
    let expect: &[(&str, &[&str])] = &[
        ("good", &[]),
        (
            "pw",
            &[
                "sshd.mgmt.passwordauthentication",
                "sshd.mgmt.authenticationmethods",
                "sshd.user.passwordauthentication",
                "sshd.user.authenticationmethods",
                "wire.auth.methods",
                "wire.auth.password",
            ],
        ),
        (
            "rootlogin",
            &["sshd.mgmt.permitrootlogin", "sshd.root.permitrootlogin"],
        ),
        (
            "wildcard",
            &[
                "sshd.mgmt.listenaddress",
                "listen.ssh-mgmt-only",
                "listen.addresses",
                "listen.no-wildcard",
            ],
        ),
        (
            "matchpw",
            &[
                "sshd.user.passwordauthentication",
                "sshd.user.authenticationmethods",
                // The same block seen from every user-network address and its own CIDR.
                "sshd.addresses.auth",
            ],
        ),
        ("weakmac", &["sshd.mgmt.macs", "wire.macs"]),
    ];
    for (n, want) in expect {
        assert_eq!(
            by_status(&report, n, "fail"),
            set(want),
            "failing checks of {n}\n{out}"
        );
    }
    let passing = by_status(&report, "good", "pass");
    assert!(
        passing.len() >= 45,
        "only {} checks pass on the hardened host: {passing:?}",
        passing.len()
    );
    assert_eq!(o.status.code(), Some(1), "findings → exit 1");
    // JUnit: one testcase per check, failures as <failure>.
    let x = std::fs::read_to_string(&junit).unwrap();
    assert!(x.starts_with("<?xml"));
    assert_eq!(x.matches("<testsuite ").count(), names.len());
    assert!(x.contains("name=\"wire.macs\"><failure"));
    // The hardened host alone: exit 0, human table.
    let o = lab.labforge(&["verify", "good", "--identity", &key]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    eprintln!("{table}");
    assert!(table.contains("sshd.user.passwordauthentication"));
}

const WEB_STACK: &str = r#"
[stacks.web]
description = "test stack"
volumes = ["web-data"]

[stacks.web.networks.web]

[stacks.web.services.app]
image = "nginx:1.27.0@sha256:2a2ef3e2fe7ac2a7ba7e7b0a2e1b0a2e1b0a2e1b0a2e1b0a2e1b0a2e1b0a2e1b"
platforms = ["linux/amd64"]
networks = ["web"]
volumes = ["web-data:/usr/share/nginx/html"]
ports = [{ host = 8080, container = 80, network = "servers" }]
expose = [9113]
metrics = { port = 9113 }
"#;

/// What `docker inspect` prints for the containers `docker compose up` makes from this host's rendered
/// stack: the model comes from the real Compose binary (`config --format json` with the host's env file),
/// shaped as the Engine's inspect output (Name, Config.Image/Labels, Mounts, NetworkSettings.Ports with
/// exposed-but-unpublished ports as null). No Docker engine runs here, so this is what stands in for it.
fn inspect_from_compose(lab: &Lab, stack: &str, host: &str) -> Value {
    let d = lab.dir.path().join("stacks").join(stack);
    let o = std::process::Command::new(common::compose_bin())
        .current_dir(&d)
        .args(["--env-file", &format!("hosts/{host}.env")])
        .args(["-f", "docker-compose.yml", "config", "--format", "json"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "compose config: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let model: Value = serde_json::from_slice(&o.stdout).unwrap();
    let project = model["name"].as_str().unwrap().to_string();
    let mut out = Vec::new();
    for (i, (svc, s)) in model["services"].as_object().unwrap().iter().enumerate() {
        let mut ports = serde_json::Map::new();
        for e in s["expose"].as_array().into_iter().flatten() {
            ports.insert(format!("{}/tcp", e.as_str().unwrap()), Value::Null);
        }
        for p in s["ports"].as_array().into_iter().flatten() {
            let key = format!(
                "{}/{}",
                p["target"],
                p["protocol"].as_str().unwrap_or("tcp")
            );
            let b = serde_json::json!({"HostIp": p["host_ip"], "HostPort": p["published"]});
            match ports.get_mut(&key) {
                Some(Value::Array(v)) => v.push(b),
                _ => {
                    ports.insert(key, Value::Array(vec![b]));
                }
            }
        }
        let mounts: Vec<Value> = s["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                let named = v["type"] == "volume";
                serde_json::json!({
                    "Type": v["type"],
                    "Name": if named { format!("{project}_{}", v["source"].as_str().unwrap()) } else { String::new() },
                    "Source": if named {
                        format!("/var/lib/docker/volumes/{project}_{}/_data", v["source"].as_str().unwrap())
                    } else {
                        v["source"].as_str().unwrap().to_string()
                    },
                    "Destination": v["target"],
                    "RW": !v["read_only"].as_bool().unwrap_or(false),
                })
            })
            .collect();
        out.push(serde_json::json!({
            "Id": format!("{:064x}", 0xc0ffee + i),
            "Name": format!("/{project}-{svc}-1"),
            "Image": format!("sha256:{:064x}", 0xbeef + i),
            "Config": {
                "Image": s["image"],
                "Labels": {
                    "com.docker.compose.project": project,
                    "com.docker.compose.service": svc,
                    "com.docker.compose.container-number": "1",
                },
            },
            "Mounts": mounts,
            "NetworkSettings": { "Ports": ports },
        }));
    }
    Value::Array(out)
}

#[test]
fn verify_docker_host_flags_each_planted_docker_weakness() {
    // One host per weakness, each running the rendered `web` stack; the failing ids are asserted exactly.
    let names = [
        "dgood", "dwild", "dmetrics", "dmount", "dtag", "dsock", "dtcp",
    ];
    let specs: Vec<HostSpec> = names
        .iter()
        .map(|n| HostSpec {
            name: n.to_string(),
            os: "ubuntu",
            stacks: vec!["web".into()],
        })
        .collect();
    let mut lab = Lab::new(&specs, WEB_STACK);
    for n in names {
        let d = lab.rendered_dropin(n);
        lab.start(n, &d);
        lab.load_firewall(n);
        let mut inspect = inspect_from_compose(&lab, "web", n);
        let servers = lab.host(n).servers.clone();
        let app = &mut inspect[0];
        assert_eq!(app["Name"], "/web-app-1");
        assert_eq!(
            app["NetworkSettings"]["Ports"]["80/tcp"][0]["HostIp"], servers,
            "the rendered stack publishes on this host's servers address"
        );
        assert_eq!(app["NetworkSettings"]["Ports"]["9113/tcp"], Value::Null);
        let root = lab.host(n).root.clone();
        match n {
            "dgood" => {}
            "dwild" => {
                app["NetworkSettings"]["Ports"]["80/tcp"][0]["HostIp"] = "0.0.0.0".into();
            }
            "dmetrics" => {
                app["NetworkSettings"]["Ports"]["9113/tcp"] =
                    serde_json::json!([{"HostIp": servers, "HostPort": "9113"}]);
            }
            "dmount" => app["Mounts"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({
                    "Type": "bind", "Source": "/var/run/docker.sock",
                    "Destination": "/var/run/docker.sock", "RW": true
                })),
            "dtag" => app["Config"]["Image"] = "nginx:1.27.0".into(),
            "dsock" => must(&format!("chmod 666 {}/var/run/docker.sock", root.display())),
            "dtcp" => {
                std::fs::create_dir_all(root.join("etc/docker")).unwrap();
                std::fs::write(
                    root.join("etc/docker/daemon.json"),
                    "{\"hosts\": [\"unix:///var/run/docker.sock\", \"tcp://0.0.0.0:2375\"]}\n",
                )
                .unwrap();
            }
            _ => unreachable!(),
        }
        let ids: Vec<String> = inspect
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["Id"].as_str().unwrap()[..12].to_string())
            .collect();
        std::fs::write(root.join("fake-docker/ps"), ids.join("\n") + "\n").unwrap();
        std::fs::write(
            root.join("fake-docker/inspect.json"),
            serde_json::to_string_pretty(&inspect).unwrap(),
        )
        .unwrap();
    }
    let key = lab.op_key.display().to_string();
    let o = lab.labforge(&["verify", "--all", "--identity", &key, "--json"]);
    let out = String::from_utf8_lossy(&o.stdout);
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!(
            "verify --json: {e}\nstdout:\n{out}\nstderr:\n{}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    let docker_ids = [
        "docker.no-tcp-socket",
        "docker.socket-mode",
        "docker.no-socket-mounts",
        "docker.published-on-servers",
        "docker.metrics-unpublished",
        "docker.images-by-digest",
    ];
    let passing = by_status(&report, "dgood", "pass");
    for id in docker_ids {
        assert!(passing.contains(id), "dgood: {id} does not pass\n{out}");
    }
    let expect: &[(&str, &[&str])] = &[
        ("dgood", &[]),
        ("dwild", &["docker.published-on-servers"]),
        ("dmetrics", &["docker.metrics-unpublished"]),
        ("dmount", &["docker.no-socket-mounts"]),
        ("dtag", &["docker.images-by-digest"]),
        ("dsock", &["docker.socket-mode"]),
        ("dtcp", &["docker.no-tcp-socket"]),
    ];
    for (n, want) in expect {
        assert!(
            by_status(&report, n, "error").is_empty(),
            "{n}: checks in error\n{out}"
        );
        assert_eq!(
            by_status(&report, n, "fail"),
            set(want),
            "failing checks of {n}\n{out}"
        );
    }
    assert_eq!(o.status.code(), Some(1), "findings → exit 1");
}

/// The exposure policy from the controller's vantage point: a port the policy denies that answers the
/// controller fails `exposure.<network>.<port>` (host without its ruleset), and passes where the rendered
/// ruleset drops it; SSH at the management address, allowed from the controller's network, must answer.
#[test]
fn verify_fails_a_port_that_answers_the_controller_but_the_policy_denies() {
    let names = ["fwopen", "fwclosed"];
    let specs: Vec<HostSpec> = names.iter().map(|n| hs(n)).collect();
    let mut lab = Lab::new(&specs, "");
    let mut listeners = Vec::new();
    for n in names {
        let d = lab.rendered_dropin(n);
        lab.start(n, &d);
        if n == "fwclosed" {
            lab.load_firewall(n);
        }
        // Something listening on a never-allowed port of the servers address.
        let h = lab.host(n);
        let py = format!(
            "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('{}',9100));s.listen(8)\nprint('ready',flush=True)\nwhile True:\n c,_=s.accept();c.close()\n",
            h.servers
        );
        let mut c = std::process::Command::new("ip")
            .args(["netns", "exec", &h.ns, "python3", "-c", &py])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(c.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        listeners.push(c);
    }
    let key = lab.op_key.display().to_string();
    let o = lab.labforge(&["verify", "--all", "--identity", &key, "--json"]);
    for mut c in listeners {
        kill_tree(c.id());
        let _ = c.wait();
    }
    let out = String::from_utf8_lossy(&o.stdout);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        by_status(&report, "fwopen", "fail").contains("exposure.servers.9100"),
        "{out}"
    );
    let closed_fail = by_status(&report, "fwclosed", "fail");
    assert!(closed_fail.is_empty(), "fwclosed: {closed_fail:?}\n{out}");
    let passed = by_status(&report, "fwclosed", "pass");
    for id in ["exposure.servers.9100", "exposure.mgmt.22"] {
        assert!(passed.contains(id), "fwclosed: {id} did not pass\n{out}");
    }
}
