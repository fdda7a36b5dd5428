//! The lock-out guard: which sshd algorithm lists labforge's own SSH client can still connect to.
//!
//! The lists are not a table someone keeps: they are what the linked russh client offers
//! (`crate::transport::ssh::client_preferred()`, the very config every labforge connection uses), and the
//! negotiation is modelled the way russh does it (RFC 4253 §7.1: the client's first algorithm the server
//! also lists; a MAC only when the chosen cipher is not an AEAD one). `tests/verify_lockout.rs` proves each
//! list against a real sshd that accepts only it.

/// The type of every host key labforge provisions (the secrets store's `ssh-host-keys/<host>`).
pub const HOST_KEY_TYPE: &str = "ssh-ed25519";

fn pseudo(a: &str) -> bool {
    a.starts_with("ext-info-") || a.starts_with("kex-strict-")
}

/// Key exchange algorithms the client offers (without the ext-info/strict-kex markers), in its order.
pub fn client_kex() -> Vec<String> {
    crate::transport::ssh::client_preferred()
        .kex
        .iter()
        .map(|n| AsRef::<str>::as_ref(n).to_string())
        .filter(|a| !pseudo(a) && a != "none")
        .collect()
}

/// Ciphers the client offers, in its order.
pub fn client_ciphers() -> Vec<String> {
    crate::transport::ssh::client_preferred()
        .cipher
        .iter()
        .map(|n| AsRef::<str>::as_ref(n).to_string())
        .filter(|a| a != "none" && a != "clear")
        .collect()
}

/// MACs the client offers, in its order.
pub fn client_macs() -> Vec<String> {
    crate::transport::ssh::client_preferred()
        .mac
        .iter()
        .map(|n| AsRef::<str>::as_ref(n).to_string())
        .filter(|a| a != "none")
        .collect()
}

/// Host key algorithms the client accepts, in its order.
pub fn client_host_keys() -> Vec<String> {
    crate::transport::ssh::client_preferred()
        .key
        .iter()
        .map(|a| a.as_str().to_string())
        .collect()
}

/// Ciphers that carry their own integrity (no MAC is negotiated with them).
pub fn is_aead(cipher: &str) -> bool {
    cipher.contains("-gcm@") || cipher.starts_with("chacha20-poly1305")
}

/// Host key algorithms a key of `key_type` can sign with.
fn algorithms_for_key(key_type: &str) -> Vec<&'static str> {
    match key_type {
        "ssh-ed25519" => vec!["ssh-ed25519"],
        "ssh-rsa" => vec!["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"],
        "ecdsa-sha2-nistp256" => vec!["ecdsa-sha2-nistp256"],
        "ecdsa-sha2-nistp384" => vec!["ecdsa-sha2-nistp384"],
        "ecdsa-sha2-nistp521" => vec!["ecdsa-sha2-nistp521"],
        _ => vec![],
    }
}

/// One way a set of lists locks labforge out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockout {
    /// The spec field to blame (`kex_algorithms`, `ciphers`, `macs`, `host_key_algorithms`).
    pub field: &'static str,
    /// The sshd keyword.
    pub keyword: &'static str,
    pub message: String,
    pub fix: String,
}

/// The lists a server would use: `None` = not set (OpenSSH's default, which always includes
/// curve25519-sha256, chacha20-poly1305, the etm SHA-2 MACs and ssh-ed25519: nothing to check).
#[derive(Debug, Clone, Default)]
pub struct Lists<'a> {
    pub kex: Option<&'a [String]>,
    pub ciphers: Option<&'a [String]>,
    pub macs: Option<&'a [String]>,
    pub host_keys: Option<&'a [String]>,
}

/// Every way `l` locks labforge's client out of a server whose host key is of `key_type`.
pub fn lockouts(l: &Lists, key_type: &str) -> Vec<Lockout> {
    let mut v = Vec::new();
    let common = |theirs: &[String], ours: &[String]| -> Vec<String> {
        ours.iter()
            .filter(|a| theirs.contains(a))
            .cloned()
            .collect()
    };
    if let Some(k) = l.kex {
        let ours = client_kex();
        if common(k, &ours).is_empty() {
            v.push(Lockout {
                field: "kex_algorithms",
                keyword: "KexAlgorithms",
                message: format!(
                    "no key exchange in [{}] is one labforge's SSH client offers: sshd would refuse every labforge connection",
                    k.join(", ")
                ),
                fix: format!("keep at least one of: {}", ours.join(", ")),
            });
        }
    }
    let chosen_cipher = match l.ciphers {
        Some(c) => {
            let ours = client_ciphers();
            let both = common(c, &ours);
            if both.is_empty() {
                v.push(Lockout {
                    field: "ciphers",
                    keyword: "Ciphers",
                    message: format!(
                        "no cipher in [{}] is one labforge's SSH client offers: sshd would refuse every labforge connection",
                        c.join(", ")
                    ),
                    fix: format!("keep at least one of: {}", ours.join(", ")),
                });
            }
            both.first().cloned()
        }
        None => Some("chacha20-poly1305@openssh.com".to_string()),
    };
    if let (Some(m), Some(cipher)) = (l.macs, &chosen_cipher) {
        let ours = client_macs();
        if !is_aead(cipher) && common(m, &ours).is_empty() {
            v.push(Lockout {
                field: "macs",
                keyword: "MACs",
                message: format!(
                    "labforge's client would negotiate {cipher}, which needs a MAC, but no MAC in [{}] is one it offers",
                    m.join(", ")
                ),
                fix: format!(
                    "keep at least one of: {} (or put chacha20-poly1305@openssh.com first among the ciphers)",
                    ours.join(", ")
                ),
            });
        }
    }
    if let Some(h) = l.host_keys {
        let ours = client_host_keys();
        let usable: Vec<&str> = algorithms_for_key(key_type)
            .into_iter()
            .filter(|a| h.iter().any(|x| x == a) && ours.iter().any(|x| x == a))
            .collect();
        if usable.is_empty() {
            v.push(Lockout {
                field: "host_key_algorithms",
                keyword: "HostKeyAlgorithms",
                message: format!(
                    "the host key is {key_type}, but [{}] offers no algorithm for it that labforge's client accepts: sshd would present no host key labforge can check",
                    h.join(", ")
                ),
                fix: format!(
                    "keep {}",
                    algorithms_for_key(key_type)
                        .first()
                        .copied()
                        .unwrap_or(HOST_KEY_TYPE)
                ),
            });
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn the_lists_are_what_the_client_offers_not_all_russh_implements() {
        let kex = client_kex();
        assert!(kex.contains(&"curve25519-sha256".to_string()), "{kex:?}");
        // russh implements ECDH-NIST but does not offer it: a server with only it locks labforge out.
        assert!(!kex.iter().any(|k| k.starts_with("ecdh-sha2-")), "{kex:?}");
        assert!(!kex.iter().any(|k| pseudo(k)));
        let c = client_ciphers();
        assert!(c.contains(&"chacha20-poly1305@openssh.com".to_string()));
        assert!(!c.contains(&"aes128-gcm@openssh.com".to_string()), "{c:?}");
        assert!(client_host_keys().contains(&"ssh-ed25519".to_string()));
    }

    #[test]
    fn each_list_that_shares_nothing_is_one_lockout() {
        let k = s(&["sntrup761x25519-sha512@openssh.com", "ecdh-sha2-nistp256"]);
        let l = Lists {
            kex: Some(&k),
            ..Default::default()
        };
        let v = lockouts(&l, HOST_KEY_TYPE);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].field, "kex_algorithms");
        let c = s(&["aes128-gcm@openssh.com"]);
        let l = Lists {
            ciphers: Some(&c),
            ..Default::default()
        };
        assert_eq!(lockouts(&l, HOST_KEY_TYPE)[0].field, "ciphers");
        // An AEAD cipher needs no MAC; a CTR one does.
        let m = s(&["umac-128-etm@openssh.com"]);
        let aead = s(&["chacha20-poly1305@openssh.com", "aes256-ctr"]);
        let ctr = s(&["aes256-ctr"]);
        let l = Lists {
            ciphers: Some(&aead),
            macs: Some(&m),
            ..Default::default()
        };
        assert!(lockouts(&l, HOST_KEY_TYPE).is_empty());
        let l = Lists {
            ciphers: Some(&ctr),
            macs: Some(&m),
            ..Default::default()
        };
        assert_eq!(lockouts(&l, HOST_KEY_TYPE)[0].field, "macs");
        // The host key is ed25519: a list without ssh-ed25519 presents nothing labforge can check.
        let h = s(&["rsa-sha2-512", "ecdsa-sha2-nistp256"]);
        let l = Lists {
            host_keys: Some(&h),
            ..Default::default()
        };
        assert_eq!(lockouts(&l, HOST_KEY_TYPE)[0].field, "host_key_algorithms");
        assert!(lockouts(&l, "ssh-rsa").is_empty());
    }
}
