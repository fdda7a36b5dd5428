//! `labforge verify` against real OpenSSH servers in network namespaces (see tests/netns_lab/mod.rs):
//! one sshd with the drop-in labforge rendered, several with one planted weakness each. The exact failing
//! check ids are asserted, and all-pass for the hardened one. Oracle: Debian's sshd, sudo, ss, nft.

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
