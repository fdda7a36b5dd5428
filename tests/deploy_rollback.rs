//! Confirm-or-rollback on Ubuntu/Debian, against real OpenSSH servers and real nft in network namespaces
//! (tests/netns_lab/mod.rs). The host arms its own rollback before labforge changes the ruleset or the sshd
//! drop-in; these tests kill the controller's deploy process right after the change and show the HOST
//! putting the previous files back when its timer fires (the lab models `systemd-run --on-active` with a
//! stand-in, `FAKE_SYSTEMD_RUN`: a detached `sleep N; restore` that `systemctl stop` cancels). A second
//! deploy of a good change then converges.

mod netns_lab;
use netns_lab::*;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const CONFIRM: &str = "6";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn edit_spec(lab: &Lab, f: impl Fn(String) -> String) {
    let p = lab.spec_dir().join("site.toml");
    let s = std::fs::read_to_string(&p).unwrap();
    let n = f(s.clone());
    assert_ne!(s, n, "the spec edit changed nothing");
    std::fs::write(&p, n).unwrap();
    let o = lab.labforge(&["render"]);
    assert!(o.status.success(), "render: {}", text(&o));
}

fn deploy(lab: &Lab, host: &str, extra: &[&str]) -> Output {
    let key = lab.op_key.display().to_string();
    let mut a = vec![
        "deploy",
        host,
        "--identity",
        &key,
        "--confirm-timeout",
        CONFIRM,
    ];
    a.extend_from_slice(extra);
    lab.labforge(&a)
}

/// Start a deploy in the controller namespace and return the running process (killed by the test).
fn spawn_deploy(lab: &Lab, host: &str, extra: &[&str]) -> std::process::Child {
    let key = lab.op_key.display().to_string();
    Command::new("ip")
        .args(["netns", "exec", &lab.ctl, env!("CARGO_BIN_EXE_labforge")])
        .args([
            "deploy",
            host,
            "--identity",
            &key,
            "--confirm-timeout",
            CONFIRM,
        ])
        .args(extra)
        .current_dir(lab.dir.path())
        .env_remove("LABFORGE_SPEC")
        .env_remove("SSH_AUTH_SOCK")
        .env("LABFORGE_AGE_IDENTITY", &lab.identity)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ruleset(lab: &Lab, host: &str) -> String {
    let o = sh(&format!(
        "ip netns exec {} nft list table inet labforge",
        lab.host(host).ns
    ));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn read(p: &std::path::Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// The host's own record that its timer restored (`/var/lib/labforge/rollback/<token>/restored`).
fn restored_records(root: &std::path::Path) -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(root.join("var/lib/labforge/rollback")) {
        for e in rd.flatten() {
            let r = read(&e.path().join("restored"));
            if !r.is_empty() {
                v.push(r);
            }
        }
    }
    v
}

fn kill_controller(mut c: std::process::Child) {
    kill_tree(c.id());
    let _ = c.wait();
}

#[test]
fn a_ruleset_that_drops_management_ssh_is_rolled_back_by_the_host_after_the_controller_is_killed() {
    let mut lab = Lab::new(
        &[HostSpec {
            name: "r1".into(),
            os: "debian",
            stacks: vec![],
        }],
        "",
    );
    let d = lab.rendered_dropin("r1");
    lab.start("r1", &d);
    let root = lab.host("r1").root.clone();

    // 1. a good deploy: the ruleset is installed and loaded, confirmed, the timer disarmed
    let o = deploy(&lab, "r1", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("rollback disarmed"),
        "the firewall change was confirmed on a fresh connection: {}",
        text(&o)
    );
    let good_file = read(&root.join("etc/nftables.conf"));
    let good_rules = ruleset(&lab, "r1");
    assert!(good_rules.contains("iifname \"ens19\""), "{good_rules}");
    assert!(read(&root.join("run/fake-systemd/armed.log")).contains("stopped"));

    // 2. the operator names the management interface wrongly: SSH is allowed only on `ens20`
    edit_spec(&lab, |s| {
        s.replace("[hosts.r1.interfaces.ens19]", "[hosts.r1.interfaces.ens20]")
    });
    let c = spawn_deploy(&lab, "r1", &[]);
    wait_for("the bad ruleset to be loaded", 60, || {
        ruleset(&lab, "r1").contains("ens20")
    });
    // the controller dies right after the change (before it can confirm or restore anything)
    kill_controller(c);
    assert!(
        read(&root.join("etc/nftables.conf")).contains("ens20"),
        "the bad ruleset is in place when the controller dies"
    );
    // new connections to the management SSH are dropped now
    let o = sh(&format!(
        "ip netns exec {} timeout 3 sh -c 'exec 3<>/dev/tcp/{}/22' 2>&1; echo rc=$?",
        lab.ctl,
        lab.host("r1").mgmt
    ));
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("rc=0"),
        "the bad ruleset lets SSH in"
    );

    // 3. the host's timer restores the previous ruleset file and loads it
    wait_for("the host's rollback timer", 30, || {
        !restored_records(&root).is_empty()
    });
    let rec = restored_records(&root).join("\n");
    assert!(rec.contains("nftables ruleset"), "{rec}");
    assert_eq!(read(&root.join("etc/nftables.conf")), good_file);
    let now = ruleset(&lab, "r1");
    assert!(
        now.contains("iifname \"ens19\"") && !now.contains("ens20"),
        "the old ruleset is loaded again:\n{now}"
    );
    assert_eq!(
        read(&root.join("etc/ssh/sshd_config.d/10-labforge.conf")),
        d
    );

    // 4. a good change (the interface named right again, MaxAuthTries 4) deploys and is confirmed
    edit_spec(&lab, |s| {
        format!(
            "{}\n[site.hardening]\nmax_auth_tries = 4\n",
            s.replace("[hosts.r1.interfaces.ens20]", "[hosts.r1.interfaces.ens19]")
        )
    });
    let o = deploy(&lab, "r1", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(ruleset(&lab, "r1"), good_rules);
    assert!(read(&root.join("etc/ssh/sshd_config.d/10-labforge.conf")).contains("MaxAuthTries 4"));
    let o = deploy(&lab, "r1", &["--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("\"status\":\"unchanged\",\"changed\":0"),
        "a second deploy changes nothing: {}",
        text(&o)
    );
}

#[test]
fn an_sshd_dropin_that_cannot_be_logged_into_is_rolled_back_by_the_host_after_the_controller_is_killed(
) {
    let mut lab = Lab::new(
        &[HostSpec {
            name: "r2".into(),
            os: "ubuntu",
            stacks: vec![],
        }],
        "",
    );
    let d = lab.rendered_dropin("r2");
    lab.start("r2", &d);
    let root = lab.host("r2").root.clone();
    let dropin = root.join("etc/ssh/sshd_config.d/10-labforge.conf");
    let o = deploy(&lab, "r2", &["--user", "ops"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let good_rules = ruleset(&lab, "r2");

    // the spec renames the admin before that account exists: `AllowUsers deploy` shuts `ops` out (sshd -t
    // and the algorithm guard accept it)
    edit_spec(&lab, |s| {
        s.replacen("name = \"ops\"", "name = \"deploy\"", 1)
    });
    assert!(lab.rendered_dropin("r2").contains("AllowUsers deploy"));
    let hups = |lab: &Lab| {
        read(&lab.host("r2").root.join("sshd.log"))
            .matches("SIGHUP")
            .count()
    };
    let before = hups(&lab);
    let c = spawn_deploy(&lab, "r2", &["--user", "ops"]);
    wait_for("sshd to reload the bad drop-in", 60, || {
        read(&dropin).contains("AllowUsers deploy") && hups(&lab) > before
    });
    kill_controller(c);

    wait_for("the host's rollback timer", 30, || {
        !restored_records(&root).is_empty()
    });
    let rec = restored_records(&root).join("\n");
    assert!(rec.contains("sshd drop-in"), "{rec}");
    assert_eq!(read(&dropin), d, "the previous drop-in is back");
    assert!(
        hups(&lab) > before + 1,
        "sshd was reloaded with the old drop-in"
    );
    assert_eq!(ruleset(&lab, "r2"), good_rules);

    // `ops` gets in again, and a good change converges
    edit_spec(&lab, |s| {
        format!(
            "{}\n[site.hardening]\nmax_auth_tries = 4\n",
            s.replacen("name = \"deploy\"", "name = \"ops\"", 1)
        )
    });
    let o = deploy(&lab, "r2", &["--user", "ops"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(read(&dropin).contains("MaxAuthTries 4"));
    assert!(text(&o).contains("rollback disarmed"), "{}", text(&o));
}

/// With the controller alive, a lock-out is undone at once over the deploying connection; the deploy exits
/// non-zero and names what was rolled back.
#[test]
fn a_live_controller_restores_a_lockout_at_once_and_says_what_was_rolled_back() {
    let mut lab = Lab::new(
        &[HostSpec {
            name: "r3".into(),
            os: "debian",
            stacks: vec![],
        }],
        "",
    );
    let d = lab.rendered_dropin("r3");
    lab.start("r3", &d);
    let root = lab.host("r3").root.clone();
    let o = deploy(&lab, "r3", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let good_file = read(&root.join("etc/nftables.conf"));
    edit_spec(&lab, |s| {
        s.replace("[hosts.r3.interfaces.ens19]", "[hosts.r3.interfaces.ens20]")
    });
    let key = lab.op_key.display().to_string();
    let o = lab.labforge(&[
        "deploy",
        "r3",
        "--identity",
        &key,
        "--confirm-timeout",
        "30",
        "--connect-timeout",
        "2",
    ]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("rolled back nftables ruleset (/etc/nftables.conf)")
            && t.contains("restored over the deploying connection"),
        "{t}"
    );
    assert_eq!(read(&root.join("etc/nftables.conf")), good_file);
    assert!(!ruleset(&lab, "r3").contains("ens20"));
    // the host's timer was cancelled (both windows' timers stopped) and never fired
    let armed = read(&root.join("run/fake-systemd/armed.log"));
    assert_eq!(armed.matches("stopped").count(), 2, "{armed}");
    assert_eq!(read(&root.join("run/fake-systemd/fired.log")), "");
}
