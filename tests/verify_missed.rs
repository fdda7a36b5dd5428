//! What verify once missed (no check failed), each planted in a real sshd in a network namespace
//! (tests/netns_lab/mod.rs) and asserted by the exact failing check ids; the hardened host passes.
//! Oracle: Debian's sshd (`sshd -T -C` per account and address), sudo and the kernel.

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

fn results<'a>(report: &'a Value, host: &str) -> &'a Vec<Value> {
    report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == host)
        .unwrap_or_else(|| panic!("no report for {host}"))["results"]
        .as_array()
        .unwrap()
}

fn by_status(report: &Value, host: &str, status: &str) -> BTreeSet<String> {
    results(report, host)
        .iter()
        .filter(|r| r["status"] == status)
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

fn detail(report: &Value, host: &str, id: &str) -> String {
    results(report, host)
        .iter()
        .find(|r| r["id"] == id)
        .map(|r| r["detail"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn edit(d: &str, from: &str, to: &str) -> String {
    assert!(d.contains(from), "rendered drop-in lacks `{from}`:\n{d}");
    d.replacen(from, to, 1)
}

fn svc(keys: Option<String>) -> ExtraUser {
    ExtraUser {
        name: "svc".into(),
        uid: 4300,
        shell: "/bin/sh".into(),
        authorized_keys: keys,
        groups: vec![],
    }
}

#[test]
fn verify_catches_what_it_missed_accounts_match_addresses_key_sources_forwarding() {
    let names = [
        "good",
        "second-account-match-user-password",
        "match-address-not-the-gateway",
        "extra-authorized-keys-file",
        "key-sources",
        "forwarding-defaults",
        "user-environment",
        "gateway-ports-tunnel",
        "hostkeyalgorithms-unset",
    ];
    let specs: Vec<HostSpec> = names.iter().map(|n| hs(n)).collect();
    let mut lab = Lab::new(&specs, "");
    // A key that is not in the spec (someone else's).
    let stranger = {
        let k = lab.dir.path().join("stranger");
        must(&format!(
            "ssh-keygen -q -t ed25519 -N '' -C stranger -f {}",
            k.display()
        ));
        std::fs::read_to_string(k.with_extension("pub")).unwrap()
    };
    for n in names {
        let d = lab.rendered_dropin(n);
        let mut o = StartOpts::default();
        let d = match n {
            "good" => d,
            // A second account in AllowUsers whose Match User block gives it password login.
            "second-account-match-user-password" => {
                o.extra_users.push(svc(None));
                format!(
                    "{}\nMatch User svc\n    PasswordAuthentication yes\n    AuthenticationMethods password\n",
                    edit(&d, "AllowUsers ops\n", "AllowUsers ops svc\n")
                )
            }
            // Loosens only the upper half of the user VLAN: the gateway (.1) is not in it.
            "match-address-not-the-gateway" => format!(
                "{d}\nMatch Address 10.20.0.128/25\n    PasswordAuthentication yes\n    AuthenticationMethods password\n"
            ),
            // A second key file holding a key that is not in the spec.
            "extra-authorized-keys-file" => {
                let home = lab.host(n).root.join("home/ops/.ssh/extra_keys");
                o.files.push((
                    home.strip_prefix(&lab.host(n).root)
                        .unwrap()
                        .display()
                        .to_string(),
                    stranger.clone(),
                ));
                format!("AuthorizedKeysFile .ssh/authorized_keys .ssh/extra_keys\n{d}")
            }
            "key-sources" => format!(
                "TrustedUserCAKeys /etc/ssh/user_ca.pub\nAuthorizedPrincipalsFile /etc/ssh/principals/%u\n{d}"
            ),
            // OpenSSH's defaults for the settings the drop-in now renders.
            "forwarding-defaults" => {
                let d = edit(&d, "AllowStreamLocalForwarding no\n", "");
                let d = edit(&d, "PermitListen none\n", "");
                let d = edit(&d, "PermitOpen none\n", "");
                edit(&d, "DisableForwarding yes\n", "")
            }
            "user-environment" => edit(&d, "PermitUserEnvironment no", "PermitUserEnvironment yes"),
            "gateway-ports-tunnel" => edit(
                &edit(&d, "GatewayPorts no", "GatewayPorts yes"),
                "PermitTunnel no",
                "PermitTunnel yes",
            ),
            // No list at all: sshd's default list is wide, but with only an ed25519 key the wire offers
            // only ssh-ed25519.
            "hostkeyalgorithms-unset" => {
                let l = d
                    .lines()
                    .find(|l| l.starts_with("HostKeyAlgorithms "))
                    .unwrap()
                    .to_string();
                edit(&d, &format!("{l}\n"), "")
            }
            _ => unreachable!(),
        };
        // The extra key file must be the admin's own (sshd reads it as the user).
        let fix_owner = n == "extra-authorized-keys-file";
        lab.start_with(n, &d, &o);
        if fix_owner {
            must(&format!(
                "chown {ADMIN_UID}:{ADMIN_UID} {}/home/ops/.ssh/extra_keys",
                lab.host(n).root.display()
            ));
        }
        lab.load_firewall(n);
    }
    let key = lab.op_key.display().to_string();
    let o = lab.labforge(&["verify", "--all", "--identity", &key, "--json"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!(
            "verify --json: {e}\nstdout:\n{out}\nstderr:\n{}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    for n in names {
        assert!(
            by_status(&report, n, "error").is_empty(),
            "{n}: checks in error {:?}\n{out}",
            by_status(&report, n, "error")
        );
    }
    let expect: &[(&str, &[&str])] = &[
        ("good", &[]),
        (
            "second-account-match-user-password",
            &["sshd.allowusers", "sshd.accounts.auth"],
        ),
        ("match-address-not-the-gateway", &["sshd.addresses.auth"]),
        ("extra-authorized-keys-file", &["accounts.authorized-keys"]),
        ("key-sources", &["sshd.mgmt.key-sources"]),
        (
            "forwarding-defaults",
            &[
                "sshd.mgmt.allowstreamlocalforwarding",
                "sshd.mgmt.permitlisten",
                "sshd.mgmt.permitopen",
                "sshd.mgmt.disableforwarding",
            ],
        ),
        ("user-environment", &["sshd.mgmt.permituserenvironment"]),
        (
            "gateway-ports-tunnel",
            &[
                "sshd.mgmt.gatewayports",
                "sshd.mgmt.permittunnel",
                "sshd.user.permittunnel",
            ],
        ),
        ("hostkeyalgorithms-unset", &[]),
    ];
    for (n, want) in expect {
        assert_eq!(
            by_status(&report, n, "fail"),
            set(want),
            "failing checks of {n}\n{out}"
        );
    }
    // What the findings say.
    let d = detail(
        &report,
        "second-account-match-user-password",
        "sshd.accounts.auth",
    );
    assert!(
        d.contains("svc from 10.99.0.1: passwordauthentication yes"),
        "{d}"
    );
    let d = detail(
        &report,
        "second-account-match-user-password",
        "sshd.allowusers",
    );
    assert!(d.contains("admits `svc`"), "{d}");
    let d = detail(
        &report,
        "match-address-not-the-gateway",
        "sshd.addresses.auth",
    );
    assert!(
        d.contains("ops from 10.20.0.254: passwordauthentication yes"),
        "{d}"
    );
    assert!(
        !d.contains("10.20.0.1:"),
        "the gateway is outside the block: {d}"
    );
    assert!(by_status(&report, "match-address-not-the-gateway", "pass")
        .contains("sshd.user.passwordauthentication"));
    let d = detail(
        &report,
        "extra-authorized-keys-file",
        "accounts.authorized-keys",
    );
    assert!(
        d.contains("ops: 1 key(s) not in the spec in") && d.contains("extra_keys"),
        "{d}"
    );
    let d = detail(&report, "key-sources", "sshd.mgmt.key-sources");
    assert!(
        d.contains("trustedusercakeys /etc/ssh/user_ca.pub")
            && d.contains("authorizedprincipalsfile"),
        "{d}"
    );
    // The false positive is gone: a warning with the fix, not a failure.
    let n = "hostkeyalgorithms-unset";
    assert!(
        by_status(&report, n, "warn").contains("sshd.mgmt.hostkeyalgorithms"),
        "{out}"
    );
    let d = detail(&report, n, "sshd.mgmt.hostkeyalgorithms");
    assert!(
        d.contains("the wire offers only ssh-ed25519")
            && d.contains("fix: HostKeyAlgorithms ssh-ed25519"),
        "{d}"
    );
    assert!(by_status(&report, n, "pass").contains("wire.hostkey-algorithms"));
    // The hardened host passes every account check; alone, and the warning-only host too, exit 0.
    let good = by_status(&report, "good", "pass");
    for id in [
        "sshd.allowusers",
        "sshd.accounts.auth",
        "sshd.addresses.auth",
        "sshd.addresses.forwarding",
        "sshd.mgmt.key-sources",
        "accounts.authorized-keys",
        "sshd.mgmt.disableforwarding",
    ] {
        assert!(good.contains(id), "good: {id} does not pass\n{out}");
    }
    assert_eq!(o.status.code(), Some(1));
    let o = lab.labforge(&[
        "verify",
        "good",
        "hostkeyalgorithms-unset",
        "--identity",
        &key,
    ]);
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(0), "{table}");
    assert!(table.contains("warn"), "{table}");
}
