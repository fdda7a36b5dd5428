//! The check catalog and the lock-out guard, on the example lab (library level, no hosts).

#[test]
fn example_lab_catalog_has_at_least_45_distinct_checks_with_rule_and_fix() {
    let spec = labforge::spec::load_dir(
        &std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("hosts"),
    )
    .unwrap()
    .spec
    .expect("example lab is valid");
    let ids = labforge::verify::checks::catalog_ids(&spec);
    assert!(ids.len() >= 45, "{} ids: {ids:?}", ids.len());
    for h in spec.hosts.values().filter(|h| h.os.has_ssh()) {
        for c in labforge::verify::checks::for_host(&spec, h) {
            assert!(c.rule.starts_with("seed "), "{}: {}", c.id, c.rule);
            assert!(!c.remediation.is_empty(), "{}", c.id);
        }
    }
}

#[test]
fn lockout_guard_accepts_the_hardened_dropin_and_refuses_lists_russh_cannot_speak() {
    let good = std::fs::read_to_string(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("rendered/platform/sshd_config.d/10-labforge.conf"),
    )
    .unwrap();
    labforge::transport::check_lockout(&good).unwrap();
    // Debian 12 has sntrup761 but russh does not: a list with only it locks labforge out.
    let bad = good.replace(
        "KexAlgorithms sntrup761x25519-sha512@openssh.com,curve25519-sha256,curve25519-sha256@libssh.org",
        "KexAlgorithms sntrup761x25519-sha512@openssh.com",
    );
    assert_ne!(bad, good);
    let e = labforge::transport::check_lockout(&bad)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("KexAlgorithms") && e.contains("lock itself out"),
        "{e}"
    );
    let bad = good.replace(
        "HostKeyAlgorithms ssh-ed25519",
        "HostKeyAlgorithms x509v3-sign-rsa",
    );
    assert!(labforge::transport::check_lockout(&bad).is_err());
}
