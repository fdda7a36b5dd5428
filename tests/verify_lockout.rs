//! The lock-out guard is what labforge's SSH client really does: its lists come from the linked russh
//! client config (labforge::spec::ssh_algos), each algorithm is proven against a real sshd that accepts
//! only it, and lists outside it really lock labforge out. `check` refuses such a spec (SPEC030), deploy
//! refuses such an effective sshd config before reloading, and the fresh login after a reload retries.

mod common;
mod netns_lab;
use labforge::spec::ssh_algos as algos;
use netns_lab::*;
use serde_json::Value;

fn supported(q: &str) -> Vec<String> {
    let o = sh(&format!("ssh -Q {q}"));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|s| s.trim().to_string())
        .collect()
}

fn status(report: &Value, host: &str, id: &str) -> (String, String) {
    let r = report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == host)
        .unwrap_or_else(|| panic!("no report for {host}"))["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap()
        .clone();
    (
        r["status"].as_str().unwrap().to_string(),
        r["detail"].as_str().unwrap().to_string(),
    )
}

fn replace_line(d: &str, keyword: &str, line: &str) -> String {
    let old = d
        .lines()
        .find(|l| l.starts_with(&format!("{keyword} ")))
        .unwrap_or_else(|| panic!("no {keyword} line"));
    d.replacen(&format!("{old}\n"), &format!("{line}\n"), 1)
}

#[test]
fn each_algorithm_the_guard_allows_logs_in_and_lists_outside_it_lock_labforge_out() {
    // (host, keyword, value, extra line) for every algorithm the client offers that this sshd knows…
    let mut cases: Vec<(String, &str, String, Option<String>, bool)> = Vec::new();
    let kex = supported("kex");
    let ciphers = supported("cipher");
    let macs = supported("mac");
    for (i, a) in algos::client_kex()
        .iter()
        .filter(|a| kex.contains(a))
        .enumerate()
    {
        cases.push((format!("kex{i}"), "KexAlgorithms", a.clone(), None, true));
    }
    for (i, a) in algos::client_ciphers()
        .iter()
        .filter(|a| ciphers.contains(a))
        .enumerate()
    {
        cases.push((format!("cipher{i}"), "Ciphers", a.clone(), None, true));
    }
    // A MAC is only negotiated with a non-AEAD cipher.
    for (i, a) in algos::client_macs()
        .iter()
        .filter(|a| macs.contains(a))
        .enumerate()
    {
        cases.push((
            format!("mac{i}"),
            "MACs",
            a.clone(),
            Some("Ciphers aes256-ctr".into()),
            true,
        ));
    }
    cases.push((
        "hostkey0".into(),
        "HostKeyAlgorithms",
        "ssh-ed25519".into(),
        None,
        true,
    ));
    let n_ok = cases.len();
    assert!(n_ok >= 15, "{cases:?}");
    // … and lists the client does not offer (the examples among them).
    for (name, kw, v, extra) in [
        ("nokex0", "KexAlgorithms", "ecdh-sha2-nistp256", None),
        (
            "nokex1",
            "KexAlgorithms",
            "sntrup761x25519-sha512@openssh.com",
            None,
        ),
        ("nocipher0", "Ciphers", "aes128-gcm@openssh.com", None),
        (
            "nomac0",
            "MACs",
            "umac-128-etm@openssh.com",
            Some("Ciphers aes256-ctr"),
        ),
        ("nohostkey0", "HostKeyAlgorithms", "rsa-sha2-512", None),
    ] {
        cases.push((
            name.into(),
            kw,
            v.into(),
            extra.map(|s| s.to_string()),
            false,
        ));
    }
    // The guard agrees with each case before any sshd is asked.
    for (name, kw, v, extra, ok) in &cases {
        let text = format!("{kw} {v}\n{}\n", extra.clone().unwrap_or_default());
        assert_eq!(
            labforge::transport::check_lockout(&text).is_ok(),
            *ok,
            "{name}: guard on {text:?}"
        );
    }
    let specs: Vec<HostSpec> = cases
        .iter()
        .map(|c| HostSpec {
            name: c.0.clone(),
            os: "ubuntu",
            stacks: vec![],
        })
        .collect();
    let mut lab = Lab::new(&specs, "");
    for (name, kw, v, extra, _) in &cases {
        let d = lab.rendered_dropin(name);
        let mut d = replace_line(&d, kw, &format!("{kw} {v}"));
        if let Some(e) = extra {
            let (k, _) = e.split_once(' ').unwrap();
            d = replace_line(&d, k, e);
        }
        lab.start(name, &d);
    }
    let key = lab.op_key.display().to_string();
    // Finite-field DH in russh is slow (pure-Rust modpow; the 8192-bit group-exchange takes seconds, far
    // more in a debug build): a generous connect timeout, so "cannot log in" means refused, not slow.
    let o = lab.labforge(&[
        "verify",
        "--all",
        "--identity",
        &key,
        "--json",
        "--parallel",
        "8",
        "--connect-timeout",
        "90",
    ]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!(
            "verify --json: {e}\n{out}\n{}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    let mut wrong = Vec::new();
    for (name, kw, v, _, ok) in &cases {
        let (st, detail) = status(&report, name, "probe.output-authentic");
        if *ok && st != "pass" {
            wrong.push(format!(
                "{name} ({kw} {v}): labforge could not log in: {detail}"
            ));
        }
        if !(*ok || st == "error" && detail.contains("cannot log in")) {
            wrong.push(format!("{name} ({kw} {v}) let labforge in: {st} {detail}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(n_ok < cases.len());
}

#[test]
fn check_refuses_lists_the_client_cannot_speak_with_spec030() {
    for (from_key, to) in [
        (
            "kex_algorithms",
            "kex_algorithms = [\"sntrup761x25519-sha512@openssh.com\", \"ecdh-sha2-nistp256\"]",
        ),
        ("ciphers", "ciphers = [\"aes128-gcm@openssh.com\"]"),
    ] {
        let t = common::example_lab();
        let p = t.path().join("hosts/site.toml");
        let text = std::fs::read_to_string(&p).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{from_key} = ")))
            .unwrap()
            .to_string();
        std::fs::write(&p, text.replacen(&line, to, 1)).unwrap();
        let o = common::labforge(t.path(), &["check", "--json"]);
        assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let errs = v["errors"].as_array().unwrap();
        assert_eq!(errs.len(), 1, "exactly one error per mistake: {errs:?}");
        assert_eq!(errs[0]["rule"], "SPEC030");
        assert_eq!(errs[0]["path"], format!("site.hardening.{from_key}"));
        assert!(errs[0]["line"].as_u64().is_some());
        assert!(
            errs[0]["help"]
                .as_str()
                .unwrap()
                .contains("curve25519-sha256")
                || errs[0]["help"]
                    .as_str()
                    .unwrap()
                    .contains("chacha20-poly1305@openssh.com")
        );
    }
}

fn events(o: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn step(ev: &[Value], id: &str) -> (String, String) {
    let e = ev
        .iter()
        .find(|e| e["event"] == "step" && e["step"] == id)
        .unwrap_or_else(|| panic!("no step {id}: {ev:?}"));
    (
        e["status"].as_str().unwrap().to_string(),
        e["detail"].as_str().unwrap().to_string(),
    )
}

#[test]
fn deploy_guards_the_effective_config_before_reload_and_retries_the_fresh_login() {
    let mut lab = Lab::new(
        &[
            HostSpec {
                name: "slow".into(),
                os: "ubuntu",
                stacks: vec![],
            },
            HostSpec {
                name: "mainconf".into(),
                os: "ubuntu",
                stacks: vec![],
            },
        ],
        "",
    );
    // `slow`: right after `systemctl reload ssh` new sessions are refused for ~2 s (sshd re-executing).
    let slow = StartOpts {
        systemctl: Some("case \"$1 $2\" in 'reload ssh'|'reload sshd') kill -HUP \"$(cat {rs}/run/sshd.pid)\"; touch {rs}/run/broken; ( sleep 2; rm -f {rs}/run/broken ) >/dev/null 2>&1 </dev/null & ;; *) echo \"fake systemctl: $*\" >&2; exit 1;; esac\n".into()),
        ..Default::default()
    };
    // Both start from an older drop-in, so deploy uploads, validates and reloads.
    for (n, o) in [("slow", slow), ("mainconf", StartOpts::default())] {
        let d = format!("# an older drop-in\n{}", lab.rendered_dropin(n));
        lab.start_with(n, &d, &o);
    }
    // `mainconf`: the main sshd_config (read before the drop-in) now sets a cipher list labforge's client
    // does not offer; the running sshd still has the old config.
    let main = lab.host("mainconf").root.join("etc/ssh/sshd_config");
    let text = std::fs::read_to_string(&main).unwrap();
    std::fs::write(&main, format!("Ciphers aes128-gcm@openssh.com\n{text}")).unwrap();
    let pid_before = lab.sshd_pid("mainconf");
    let key = lab.op_key.display().to_string();
    let o = lab.labforge(&["deploy", "--all", "--identity", &key, "--json"]);
    let ev = events(&o);
    let text_out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(1), "mainconf must fail\n{text_out}");
    // slow: the reload succeeded after retrying the fresh login.
    let (st, d) = step(&ev, "slow:sshd-reload");
    assert_eq!(st, "changed", "{d}\n{text_out}");
    assert!(
        d.contains("confirmed on a fresh connection (attempt "),
        "{d}"
    );
    assert_eq!(
        lab.rendered_dropin("slow"),
        std::fs::read_to_string(
            lab.host("slow")
                .root
                .join("etc/ssh/sshd_config.d/10-labforge.conf")
        )
        .unwrap()
    );
    // mainconf: refused before the reload, old drop-in restored, sshd never reloaded.
    let (st, d) = step(&ev, "mainconf:sshd-validate");
    assert_eq!(st, "failed", "{d}");
    assert!(
        d.contains("effective sshd configuration") && d.contains("aes128-gcm@openssh.com"),
        "{d}"
    );
    assert!(d.contains("not reloaded"), "{d}");
    assert!(
        !ev.iter().any(|e| e["step"] == "mainconf:sshd-reload"),
        "no reload step ran after the refusal"
    );
    let now = std::fs::read_to_string(
        lab.host("mainconf")
            .root
            .join("etc/ssh/sshd_config.d/10-labforge.conf"),
    )
    .unwrap();
    assert!(
        now.starts_with("# an older drop-in\n"),
        "the previous drop-in is back"
    );
    assert_eq!(lab.sshd_pid("mainconf"), pid_before);
    assert!(
        !lab.session_log("mainconf").contains("systemctl reload"),
        "no reload ran"
    );
}
