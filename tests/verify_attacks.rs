//! `labforge verify` cannot be fooled by the host it judges: each attack that once made a weak host pass
//! (reproduced with a real sshd in a network namespace, tests/netns_lab/mod.rs) stays here as a regression
//! test named after it. Oracle: Debian's sshd, bash, sudo and the kernel's socket tables.

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

fn detail(report: &Value, host: &str, id: &str) -> String {
    report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == host)
        .unwrap()["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .map(|r| r["detail"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The weak config every "rewrite the output" attack hides: password login on, no AuthenticationMethods.
fn password_dropin(d: &str) -> String {
    assert!(
        d.contains("PasswordAuthentication no") && d.contains("AuthenticationMethods publickey\n")
    );
    d.replace("PasswordAuthentication no", "PasswordAuthentication yes")
        .replace("AuthenticationMethods publickey\n", "")
}

/// A filter that turns the weak values into the hardened ones (what the attacker wants verify to read).
const LAUNDER: &str = "sed -e 's/^passwordauthentication yes$/passwordauthentication no/' -e 's/^authenticationmethods any$/authenticationmethods publickey/'";

fn wait_tcp_listen(lab: &Lab, host: &str, port: u16) {
    let ns = lab.host(host).ns.clone();
    for _ in 0..200 {
        let o = sh(&format!("ip netns exec {ns} cat /proc/net/tcp"));
        let t = String::from_utf8_lossy(&o.stdout).to_string();
        if t.contains(&format!(":{port:04X} 00000000:0000 0A")) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("nothing listens on {port} in {host}");
}

#[test]
fn verify_is_not_fooled_by_bashrc_functions_forcecommand_forgeries_or_process_names() {
    let names = [
        "good",
        "bashrc-sudo-function",
        "bashrc-exec-function",
        "forcecommand-appends-forged-blocks",
        "nobody-listener-newline-end-marker",
    ];
    let specs: Vec<HostSpec> = names.iter().map(|n| hs(n)).collect();
    let mut lab = Lab::new(&specs, "");
    for n in names {
        let d = lab.rendered_dropin(n);
        let mut o = StartOpts::default();
        let d = match n {
            "good" | "nobody-listener-newline-end-marker" => d,
            // The attack as first reproduced: `sudo` is a function in the admin's ~/.bashrc (Debian's bash
            // reads it for every SSH command) that launders the output of the real sudo.
            "bashrc-sudo-function" => {
                o.admin_shell = Some("/bin/bash".into());
                o.admin_bashrc = Some(format!("sudo() {{ command sudo \"$@\" | {LAUNDER}; }}\n"));
                password_dropin(&d)
            }
            // The same, and `exec` too: no command string survives a hostile startup file, only the signature.
            "bashrc-exec-function" => {
                o.admin_shell = Some("/bin/bash".into());
                o.admin_bashrc = Some(format!(
                    "exec() {{ \"$@\"; }}\nsudo() {{ command sudo \"$@\" | {LAUNDER}; }}\n"
                ));
                password_dropin(&d)
            }
            // A ForceCommand that runs the real command, then appends hardened-looking probe blocks: the
            // last block with a key used to win.
            "forcecommand-appends-forged-blocks" => {
                o.after_command = Some(
                    "printf '@@LF-BEGIN sshd-mgmt\\npasswordauthentication no\\nauthenticationmethods publickey\\n\\n@@LF-END sshd-mgmt 0\\n'"
                        .into(),
                );
                password_dropin(&d)
            }
            _ => unreachable!(),
        };
        lab.start_with(n, &d, &o);
        lab.load_firewall(n);
    }
    // Any local user can name a process: a uid-65534 listener on 0.0.0.0 whose name is a newline and the
    // old block end marker used to end the `ss` block early and hide every listener.
    lab.spawn_in(
        "nobody-listener-newline-end-marker",
        "exec setpriv --reuid=65534 --regid=65534 --clear-groups perl -e 'use IO::Socket::INET; my $s = IO::Socket::INET->new(LocalAddr => \"0.0.0.0\", LocalPort => 4444, Listen => 5, ReuseAddr => 1) or die; $0 = \"\\n\\@\\@LF-END ss 0\"; sleep 600'",
    );
    wait_tcp_listen(&lab, "nobody-listener-newline-end-marker", 4444);
    let key = lab.op_key.display().to_string();
    let o = lab.labforge(&["verify", "--all", "--identity", &key, "--json"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!(
            "verify --json: {e}\nstdout:\n{out}\nstderr:\n{}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    assert_ne!(
        o.status.code(),
        Some(0),
        "weak hosts must never pass\n{out}"
    );

    // The hardened host: everything accepted, the output signed.
    assert!(by_status(&report, "good", "fail").is_empty(), "{out}");
    assert!(by_status(&report, "good", "error").is_empty(), "{out}");
    assert!(by_status(&report, "good", "pass").contains("probe.output-authentic"));
    assert!(detail(&report, "good", "probe.output-authentic")
        .contains("signed by the pinned host key ssh-ed25519"));

    // A `sudo` function alone never runs: the real values are judged.
    let n = "bashrc-sudo-function";
    assert!(by_status(&report, n, "error").is_empty(), "{n}\n{out}");
    for id in [
        "sshd.mgmt.passwordauthentication",
        "sshd.mgmt.authenticationmethods",
        "wire.auth.password",
    ] {
        assert!(
            by_status(&report, n, "fail").contains(id),
            "{n}: {id}\n{out}"
        );
    }

    // Laundered or appended output is refused as a whole: the attack is a failing check, and no remote
    // check passes on what the host said.
    for n in ["bashrc-exec-function", "forcecommand-appends-forged-blocks"] {
        let fails = by_status(&report, n, "fail");
        assert!(
            fails.contains("probe.output-authentic"),
            "{n}: {fails:?}\n{out}"
        );
        let passing = by_status(&report, n, "pass");
        for id in &passing {
            assert!(
                !id.starts_with("sshd.")
                    && !id.starts_with("listen.")
                    && !id.starts_with("accounts."),
                "{n}: `{id}` passed on refused output\n{out}"
            );
        }
        let errors = by_status(&report, n, "error");
        assert!(
            errors.contains("sshd.mgmt.passwordauthentication"),
            "{n}: {errors:?}"
        );
    }
    // The laundering filter shortened two values: the frames no longer close where their lengths say.
    let d = detail(&report, "bashrc-exec-function", "probe.output-authentic");
    assert!(d.contains("not closed where its length says"), "{d}");
    assert!(
        detail(
            &report,
            "forcecommand-appends-forged-blocks",
            "probe.output-authentic"
        )
        .contains("follow the signed output"),
        "{out}"
    );

    // The nobody listener is seen, its name shown as data.
    let n = "nobody-listener-newline-end-marker";
    assert!(by_status(&report, n, "error").is_empty(), "{n}\n{out}");
    assert_eq!(
        by_status(&report, n, "fail"),
        set(&["listen.addresses", "listen.no-wildcard"]),
        "{n}\n{out}"
    );
    let d = detail(&report, n, "listen.no-wildcard");
    assert!(
        d.contains("0.0.0.0:4444") && d.contains("uid 65534") && d.contains("\\n@@LF-END"),
        "{d}"
    );
    assert!(by_status(&report, n, "pass").contains("listen.ssh-mgmt-only"));

    // The hardened host alone exits 0.
    let o = lab.labforge(&["verify", "good", "--identity", &key]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}
