//! Judging the sshd checks that need more than one probe's text: the account rows (every admitted
//! account from every address) and the host key algorithms (configured list against what the wire offers).

use super::checks::Pass;
use super::eval::{err, fail, ok, sshd_map, R};
use super::{Facts, Status};

fn warn(d: impl Into<String>) -> R {
    (Status::Warn, d.into())
}

/// The configured HostKeyAlgorithms against what the wire offers: sshd offers only algorithms it holds a
/// key for, so a wider configured list with no key behind the extra entries is a warning, not a finding.
pub(super) fn hostkey_algorithms(out: &str, allowed: &[String], f: &Facts) -> R {
    let m = sshd_map(out);
    let Some(v) = m.get("hostkeyalgorithms").and_then(|v| v.first()) else {
        return err("sshd -T printed no `hostkeyalgorithms`");
    };
    let got: Vec<String> = v.split(',').map(|s| s.to_string()).collect();
    let extra: Vec<&String> = got.iter().filter(|a| !allowed.contains(a)).collect();
    if extra.is_empty() {
        return ok(format!("hostkeyalgorithms {v}"));
    }
    let shown = extra
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",");
    match &f.kexinit {
        Some(Ok(k)) => {
            let offered_extra: Vec<&String> = k
                .host_key
                .iter()
                .filter(|a| !allowed.contains(a))
                .collect();
            if offered_extra.is_empty() && !k.host_key.is_empty() {
                warn(format!(
                    "the configured list also names {shown}, but no host key backs them: the wire offers only {} (fix: HostKeyAlgorithms {} in the sshd drop-in)",
                    k.host_key.join(","),
                    allowed.join(",")
                ))
            } else {
                fail(format!(
                    "hostkeyalgorithms names {shown} outside the spec and the server offers {}",
                    k.host_key.join(",")
                ))
            }
        }
        _ => fail(format!(
            "hostkeyalgorithms names {shown} outside the spec (what the wire offers is unknown: the KEXINIT probe did not answer)"
        )),
    }
}

/// Judge the account checks from the analysis.
pub(super) fn accounts(ctx: &super::accounts::Ctx, p: &Pass, a: &super::accounts::Analysis) -> R {
    use super::accounts::{expected, key_set, mismatches, Scope};
    let admitted: Vec<&super::accounts::Row> =
        a.rows.iter().filter(|r| r.refused.is_none()).collect();
    let spec_names: Vec<&str> = ctx.admins.iter().map(|x| x.0.as_str()).collect();
    let cap = |mut v: Vec<String>| {
        let n = v.len();
        v.truncate(8);
        let mut s = v.join("; ");
        if n > 8 {
            s.push_str(&format!("; … ({} more)", n - 8));
        }
        s
    };
    match p {
        Pass::AdmitsExactly => {
            let mut extra: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
            for r in &admitted {
                if !spec_names.contains(&r.user.as_str()) {
                    extra.entry(&r.user).or_default().push(&r.addr);
                }
            }
            let missing: Vec<&str> = spec_names
                .iter()
                .filter(|n| {
                    !admitted
                        .iter()
                        .any(|r| r.user == **n && r.addr == ctx.mgmt_client)
                })
                .copied()
                .collect();
            let unset = a.rows.first().is_some_and(|r| {
                !r.map.contains_key("allowusers") && !r.map.contains_key("allowgroups")
            });
            if extra.is_empty() && missing.is_empty() {
                ok(format!(
                    "admits exactly {} ({} account(s) considered{})",
                    spec_names.join(","),
                    a.rows
                        .iter()
                        .map(|r| &r.user)
                        .collect::<std::collections::BTreeSet<_>>()
                        .len(),
                    if a.has_match {
                        ", Match blocks evaluated per address"
                    } else {
                        ""
                    }
                ))
            } else {
                let mut d = Vec::new();
                if unset {
                    d.push(
                        "AllowUsers and AllowGroups are not set: sshd admits every account"
                            .to_string(),
                    );
                }
                for (u, addrs) in &extra {
                    d.push(format!(
                        "admits `{u}` (not a spec admin) from {}",
                        if addrs.len() > 3 {
                            format!("{} and {} more", addrs[..3].join(", "), addrs.len() - 3)
                        } else {
                            addrs.join(", ")
                        }
                    ));
                }
                for m in &missing {
                    d.push(format!(
                        "refuses the spec admin `{m}` from the management network"
                    ));
                }
                fail(d.join("; "))
            }
        }
        Pass::AccountRows { scope, group } => {
            if !a.has_match && *scope == Scope::Addresses {
                return ok("no Match block in the files sshd reads: every address gets the configuration sshd.mgmt.* judges");
            }
            let rows: Vec<&&super::accounts::Row> = admitted
                .iter()
                .filter(|r| match scope {
                    Scope::Accounts => r.user != ctx.admin,
                    Scope::Addresses => r.user == ctx.admin && r.addr != ctx.mgmt_client,
                })
                .collect();
            if rows.is_empty() {
                return ok(match scope {
                    Scope::Accounts => "sshd admits no account but the admin".to_string(),
                    Scope::Addresses => {
                        "no address but the management client's to judge".to_string()
                    }
                });
            }
            let mut bad = Vec::new();
            for r in &rows {
                let m = mismatches(&r.map, &expected(ctx, *group, &r.user));
                if !m.is_empty() {
                    bad.push(format!("{} from {}: {}", r.user, r.addr, m.join(", ")));
                }
            }
            if bad.is_empty() {
                let users: std::collections::BTreeSet<&str> =
                    rows.iter().map(|r| r.user.as_str()).collect();
                ok(format!(
                    "{} evaluation(s) of {} account(s), all hardened",
                    rows.len(),
                    users.len()
                ))
            } else {
                fail(cap(bad))
            }
        }
        Pass::KeyFiles => {
            let mut per_user: std::collections::BTreeMap<
                &str,
                std::collections::BTreeMap<&str, &str>,
            > = Default::default();
            for r in &admitted {
                let e = per_user.entry(&r.user).or_default();
                for (path, content) in &r.files {
                    e.insert(path, content);
                }
            }
            let mut bad = Vec::new();
            let mut good = Vec::new();
            for (user, files) in &per_user {
                let want: std::collections::BTreeSet<String> = ctx
                    .admins
                    .iter()
                    .filter(|x| x.0 == *user)
                    .flat_map(|x| key_set(x.1.iter().map(|s| s.as_str())))
                    .collect();
                let mut got = std::collections::BTreeSet::new();
                for (path, content) in files {
                    let ks = key_set(content.lines());
                    let foreign = ks.difference(&want).count();
                    if foreign > 0 {
                        bad.push(format!(
                            "{user}: {foreign} key(s) not in the spec in {path}"
                        ));
                    }
                    got.extend(ks);
                }
                let missing = want.difference(&got).count();
                if missing > 0 {
                    bad.push(format!(
                        "{user}: {missing} spec key(s) in none of {} key file(s)",
                        files.len()
                    ));
                }
                good.push(format!(
                    "{user}: {} key(s) in {} file(s)",
                    got.len(),
                    files.len()
                ));
            }
            if bad.is_empty() {
                ok(if good.is_empty() {
                    "no admitted account".to_string()
                } else {
                    good.join("; ")
                })
            } else {
                fail(cap(bad))
            }
        }
        p => err(format!("internal: {p:?} on the account probe")),
    }
}
