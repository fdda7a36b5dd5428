//! Every account that can log in, from every address that matters: the effective sshd config is judged not
//! only for the first admin from the management network, but for each account sshd would admit (an account
//! with a login shell or a key file, every name in AllowUsers, every member of AllowGroups, every user a
//! `Match User/Group` names) from representative client addresses of each network and from every address or
//! CIDR in a `Match` line of the files sshd reads. Every key source sshd would consult is read and compared
//! with the spec.
//!
//! Phase 1 (in the main batch) lists the accounts, groups, `Match` lines and the key files the global
//! `AuthorizedKeysFile` names. Only when the config has `Match` blocks does phase 2 evaluate
//! `sshd -T -C user=U,addr=A,…` for every (account, address) pair, with the key files each row names. A
//! config without `Match` blocks gives every account and address the same answer as `sshd.mgmt.*`.

use super::RemoteOut;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// What the account checks expect, derived from the spec (carried by the checks, so eval needs no spec).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Ctx {
    /// The account labforge logs in as (judged per address by `sshd.addresses.*`).
    pub admin: String,
    /// The spec's admins of this host and their keys.
    pub admins: Vec<(String, Vec<String>)>,
    pub mgmt_client: String,
    pub laddr: String,
    pub lport: u16,
    /// Representative client addresses of the spec's networks (address + 1, a middle one, the last host
    /// address, the gateway).
    pub reps: Vec<String>,
    /// Accepted `permitrootlogin` values.
    pub root_values: Vec<String>,
    pub x11: bool,
    pub agent: bool,
    pub tcp: bool,
}

pub const PASSWD: (&str, &str, &str) = (
    "passwd",
    "getent",
    // Without the GECOS field: a user may change their own full name (chfn), so it is never parsed.
    "getent passwd | cut -d: -f1,2,3,4,6,7",
);
pub const GROUP: (&str, &str, &str) = ("group", "getent", "getent group | cut -d: -f1,3,4");

/// The `Match` lines of sshd_config and every file it includes (recursively, globs expanded).
pub const MATCHES: (&str, &str, &str) = (
    "sshd-matches",
    "awk",
    r#"q=/etc/ssh/sshd_config; seen=" "
while [ -n "$q" ]; do
  set -- $q; x=$1; shift; q="$*"
  case "$seen" in *" $x "*) continue;; esac; seen="$seen$x "
  [ -f "$x" ] || continue
  awk '{l=$0; sub(/^[ \t]+/,"",l); if (tolower(l) ~ /^match[ \t=]/) print "match " substr(l,7)}' "$x"
  for y in $(awk '{l=$0; sub(/^[ \t]+/,"",l); if (tolower(l) ~ /^include[ \t=]/) {sub(/^[^ \t=]+[ \t=]+/,"",l); print l}}' "$x"); do
    case "$y" in /*) ;; *) y="/etc/ssh/$y";; esac
    for z in $y; do q="$q $z"; done
  done
done"#,
);

/// The awk program expanding `authorizedkeysfile` tokens for one account (H home, U user, I uid).
const EXPAND: &str = r#"{for(i=2;i<=NF;i++){p=$i; if (p=="none") continue; gsub(/%%/,"\001",p); gsub(/%h/,H,p); gsub(/%u/,U,p); gsub(/%U/,I,p); gsub(/\001/,"%",p); if (substr(p,1,1)!="/") p=H "/" p; print p}}"#;

/// Key files the global `AuthorizedKeysFile` names, for every account: `file USER PATH HEX(content)`.
pub fn keyfiles_probe() -> (String, String, String) {
    (
        "keyfiles".into(),
        "od".into(),
        format!(
            r#"a=$(sshd -T 2>/dev/null | awk '$1=="authorizedkeysfile"')
getent passwd | cut -d: -f1,3,6 | while IFS=: read -r u i h; do
  printf '%s\n' "$a" | awk -v H="$h" -v U="$u" -v I="$i" '{EXPAND}' | while read -r p; do
    if [ -f "$p" ]; then printf 'file %s %s ' "$u" "$p"; od -An -v -tx1 "$p" | tr -d ' \n'; echo; fi
  done
done"#,
            EXPAND = EXPAND
        ),
    )
}

/// The phase-1 probes the account checks need.
pub fn phase1_probes() -> Vec<(String, String, String)> {
    let t = |p: (&str, &str, &str)| (p.0.to_string(), p.1.to_string(), p.2.to_string());
    vec![t(PASSWD), t(GROUP), t(MATCHES), keyfiles_probe()]
}

/// The sshd keywords the rows are judged on (the rest of `sshd -T` is dropped on the host).
pub const ROW_KEYWORDS: &[&str] = &[
    "permitrootlogin",
    "passwordauthentication",
    "kbdinteractiveauthentication",
    "permitemptypasswords",
    "authenticationmethods",
    "pubkeyauthentication",
    "x11forwarding",
    "allowagentforwarding",
    "allowtcpforwarding",
    "permittunnel",
    "permituserenvironment",
    "allowstreamlocalforwarding",
    "gatewayports",
    "permitlisten",
    "permitopen",
    "disableforwarding",
    "authorizedkeysfile",
    "authorizedkeyscommand",
    "authorizedprincipalsfile",
    "authorizedprincipalscommand",
    "trustedusercakeys",
    "allowusers",
    "denyusers",
    "allowgroups",
    "denygroups",
];

/// How many (account, address) rows phase 2 may evaluate at most.
pub const MAX_ROWS: usize = 400;

#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub uid: String,
    pub gid: String,
    pub home: String,
    pub shell: String,
}

fn ok_out<'a>(remote: &'a BTreeMap<String, RemoteOut>, key: &str) -> Result<&'a str, String> {
    match remote.get(key) {
        Some(RemoteOut::Ok(s)) => Ok(s),
        Some(RemoteOut::Missing(_)) => Err(format!("probe `{key}`: its tool is not installed")),
        Some(RemoteOut::Failed { status, output }) => Err(format!(
            "probe `{key}` failed with status {status}: {}",
            output.trim()
        )),
        None => Err(format!("probe `{key}` produced no result")),
    }
}

pub fn parse_passwd(out: &str) -> Vec<Account> {
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() == 6).then(|| Account {
                name: f[0].into(),
                uid: f[2].into(),
                gid: f[3].into(),
                home: f[4].into(),
                shell: f[5].into(),
            })
        })
        .collect()
}

/// group name → (gid, members).
fn parse_group(out: &str) -> BTreeMap<String, (String, Vec<String>)> {
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() == 3).then(|| {
                (
                    f[0].to_string(),
                    (
                        f[1].to_string(),
                        f[2].split(',')
                            .filter(|s| !s.is_empty())
                            .map(|s| s.to_string())
                            .collect(),
                    ),
                )
            })
        })
        .collect()
}

fn groups_of(a: &Account, groups: &BTreeMap<String, (String, Vec<String>)>) -> Vec<String> {
    groups
        .iter()
        .filter(|(_, (gid, m))| *gid == a.gid || m.contains(&a.name))
        .map(|(n, _)| n.clone())
        .collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// `file [USER] PATH HEX` lines → (user, path, content). `with_user` = the phase-1 form.
fn parse_files(out: &str, with_user: bool) -> Result<Vec<(String, String, String)>, String> {
    let mut v = Vec::new();
    for l in out.lines().filter(|l| l.starts_with("file ")) {
        let rest = &l[5..];
        let (user, rest) = if with_user {
            rest.split_once(' ')
                .ok_or_else(|| format!("bad key file row {l:?}"))?
        } else {
            ("", rest)
        };
        // The path may contain spaces; the content is one hex word at the end (empty file: none).
        let (path, hex) = match rest.rsplit_once(' ') {
            Some((p, h)) => (p, h),
            None => return Err(format!("bad key file row {l:?}")),
        };
        let bytes = unhex(hex).ok_or_else(|| format!("bad key file content in {l:?}"))?;
        v.push((
            user.to_string(),
            path.to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    Ok(v)
}

/// One `Match` line's criteria: (keyword lowercased, values).
fn match_criteria(line: &str) -> Vec<(String, Vec<String>)> {
    let toks: Vec<&str> = line
        .split(|c: char| c.is_whitespace() || c == '=')
        .filter(|t| !t.is_empty())
        .collect();
    let mut v = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let k = toks[i].to_ascii_lowercase();
        if k == "all" || k == "invalid-user" {
            v.push((k, Vec::new()));
            i += 1;
            continue;
        }
        let vals = toks
            .get(i + 1)
            .map(|x| x.split(',').map(|s| s.to_string()).collect())
            .unwrap_or_default();
        v.push((k, vals));
        i += 2;
    }
    v
}

/// Addresses that exercise a `Match Address` pattern: the address itself, or for a CIDR its first, middle
/// and last host addresses; `*`/`?` wildcards are filled in.
fn addresses_for(pattern: &str) -> Vec<String> {
    let p = pattern.trim_start_matches('!');
    if let Ok(net) = p.parse::<ipnet::IpNet>() {
        let mut v = Vec::new();
        let mut hosts = net.hosts();
        if let Some(a) = hosts.next() {
            v.push(a.to_string());
        }
        v.extend(representatives(&net));
        v.push(net.addr().to_string());
        v.sort();
        v.dedup();
        return v;
    }
    if let Ok(a) = p.parse::<IpAddr>() {
        return vec![a.to_string()];
    }
    let filled = p.replace(['*', '?'], "1");
    match filled.parse::<IpAddr>() {
        Ok(a) => vec![a.to_string()],
        Err(_) => {
            // e.g. `10.20.*`: complete the missing octets.
            let mut parts: Vec<&str> = filled.split('.').collect();
            while parts.len() < 4 {
                parts.push("1");
            }
            parts
                .join(".")
                .parse::<IpAddr>()
                .map(|a| vec![a.to_string()])
                .unwrap_or_default()
        }
    }
}

/// Network address + 1, a middle address and the last host address of `net`.
pub fn representatives(net: &ipnet::IpNet) -> Vec<String> {
    let mut v = Vec::new();
    match net {
        ipnet::IpNet::V4(n) => {
            let lo = u32::from(n.network());
            let hi = u32::from(n.broadcast());
            if hi > lo + 1 {
                v.push(std::net::Ipv4Addr::from(lo + 1).to_string());
                v.push(std::net::Ipv4Addr::from(lo + (hi - lo) / 2).to_string());
                v.push(std::net::Ipv4Addr::from(hi - 1).to_string());
            } else {
                v.push(n.addr().to_string());
            }
        }
        ipnet::IpNet::V6(n) => {
            let lo = u128::from(n.network());
            let hi = u128::from(n.broadcast());
            if hi > lo + 1 {
                v.push(std::net::Ipv6Addr::from(lo + 1).to_string());
                v.push(std::net::Ipv6Addr::from(lo + (hi - lo) / 2).to_string());
                v.push(std::net::Ipv6Addr::from(hi - 1).to_string());
            } else {
                v.push(n.addr().to_string());
            }
        }
    }
    v
}

/// OpenSSH's `match_pattern`: `*` and `?` wildcards, case-sensitive.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

fn host_matches(pat: &str, addr: &str) -> bool {
    if let (Ok(net), Ok(a)) = (pat.parse::<ipnet::IpNet>(), addr.parse::<IpAddr>()) {
        return net.contains(&a);
    }
    glob(pat.as_bytes(), addr.as_bytes())
}

/// An AllowUsers/DenyUsers entry `USER[@HOST]` against an account connecting from `addr`.
fn user_entry_matches(entry: &str, user: &str, addr: &str) -> bool {
    match entry.split_once('@') {
        Some((u, h)) => glob(u.as_bytes(), user.as_bytes()) && host_matches(h, addr),
        None => glob(entry.as_bytes(), user.as_bytes()),
    }
}

/// `sshd -T` text → keyword → values.
pub fn sshd_map(out: &str) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in out.lines() {
        if l.starts_with("file ") || l.starts_with("== ") {
            continue;
        }
        let mut it = l.splitn(2, ' ');
        let k = it.next().unwrap_or("").to_ascii_lowercase();
        let v = it.next().unwrap_or("").trim().to_string();
        if !k.is_empty() {
            m.entry(k).or_default().push(v);
        }
    }
    m
}

/// Why sshd would refuse `a` from this row's config, or `None` when it admits it.
fn refused(
    a: &Account,
    groups: &[String],
    addr: &str,
    m: &BTreeMap<String, Vec<String>>,
) -> Option<String> {
    let list = |k: &str| -> Vec<String> {
        m.get(k)
            .map(|v| {
                v.iter()
                    .flat_map(|x| x.split_whitespace().map(|s| s.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    if a.name == "root"
        && m.get("permitrootlogin")
            .and_then(|v| v.first())
            .map(|s| s.as_str())
            == Some("no")
    {
        return Some("PermitRootLogin no".into());
    }
    if list("denyusers")
        .iter()
        .any(|e| user_entry_matches(e, &a.name, addr))
    {
        return Some("DenyUsers".into());
    }
    let allow = list("allowusers");
    if !allow.is_empty() && !allow.iter().any(|e| user_entry_matches(e, &a.name, addr)) {
        return Some("not in AllowUsers".into());
    }
    if list("denygroups")
        .iter()
        .any(|g| groups.iter().any(|x| glob(g.as_bytes(), x.as_bytes())))
    {
        return Some("DenyGroups".into());
    }
    let ag = list("allowgroups");
    if !ag.is_empty()
        && !ag
            .iter()
            .any(|g| groups.iter().any(|x| glob(g.as_bytes(), x.as_bytes())))
    {
        return Some("not in AllowGroups".into());
    }
    None
}

fn no_login_shell(sh: &str) -> bool {
    sh.is_empty()
        || sh.ends_with("/nologin")
        || sh.ends_with("/false")
        || sh == "/bin/sync"
        || sh.ends_with("/shutdown")
        || sh.ends_with("/halt")
}

/// Everything phase 1 says, parsed.
struct Phase1 {
    accounts: Vec<Account>,
    groups: BTreeMap<String, (String, Vec<String>)>,
    matches: Vec<Vec<(String, Vec<String>)>>,
    files: Vec<(String, String, String)>,
    mgmt: BTreeMap<String, Vec<String>>,
}

fn phase1(remote: &BTreeMap<String, RemoteOut>) -> Result<Phase1, String> {
    Ok(Phase1 {
        accounts: parse_passwd(ok_out(remote, PASSWD.0)?),
        groups: parse_group(ok_out(remote, GROUP.0)?),
        matches: ok_out(remote, MATCHES.0)?
            .lines()
            .filter_map(|l| l.strip_prefix("match "))
            .map(match_criteria)
            .collect(),
        files: parse_files(ok_out(remote, "keyfiles")?, true)?,
        mgmt: sshd_map(ok_out(remote, "sshd-mgmt")?),
    })
}

/// The accounts worth judging: login shells, key files, AllowUsers names, AllowGroups members, users and
/// groups a `Match` names, the spec's admins — in passwd order.
fn candidates<'a>(ctx: &Ctx, p: &'a Phase1) -> Vec<&'a Account> {
    let mut names: BTreeSet<String> = ctx.admins.iter().map(|a| a.0.clone()).collect();
    names.insert(ctx.admin.clone());
    for f in &p.files {
        names.insert(f.0.clone());
    }
    let mut groups: BTreeSet<String> = BTreeSet::new();
    for k in ["allowusers", "denyusers"] {
        for v in p.mgmt.get(k).into_iter().flatten() {
            for e in v.split_whitespace() {
                names.insert(e.split('@').next().unwrap_or(e).to_string());
            }
        }
    }
    for v in p.mgmt.get("allowgroups").into_iter().flatten() {
        groups.extend(v.split_whitespace().map(|s| s.to_string()));
    }
    for m in &p.matches {
        for (k, vals) in m {
            let vals = vals.iter().map(|v| v.trim_start_matches('!').to_string());
            match k.as_str() {
                "user" => names.extend(vals),
                "group" => groups.extend(vals),
                _ => {}
            }
        }
    }
    p.accounts
        .iter()
        .filter(|a| {
            !no_login_shell(&a.shell)
                || names.iter().any(|n| glob(n.as_bytes(), a.name.as_bytes()))
                || groups_of(a, &p.groups).iter().any(|g| groups.contains(g))
        })
        .collect()
}

/// The client addresses phase 2 evaluates: the management client, the spec's representatives and every
/// address a `Match Address` pattern covers.
fn addresses(ctx: &Ctx, p: &Phase1) -> Vec<String> {
    let mut v = vec![ctx.mgmt_client.clone()];
    for a in &ctx.reps {
        if !v.contains(a) {
            v.push(a.clone());
        }
    }
    for m in &p.matches {
        for (k, vals) in m {
            if k == "address" {
                for pat in vals {
                    for a in addresses_for(pat) {
                        if !v.contains(&a) {
                            v.push(a);
                        }
                    }
                }
            }
        }
    }
    v
}

/// Phase 2's rows: (key, account, address), empty when the config has no `Match` block.
fn rows<'a>(ctx: &Ctx, p: &'a Phase1) -> Result<Vec<(String, &'a Account, String)>, String> {
    if p.matches.is_empty() {
        return Ok(Vec::new());
    }
    let users = candidates(ctx, p);
    let addrs = addresses(ctx, p);
    if users.len() * addrs.len() > MAX_ROWS {
        return Err(format!(
            "{} account(s) × {} address(es) exceed {MAX_ROWS} sshd evaluations: narrow the Match blocks",
            users.len(),
            addrs.len()
        ));
    }
    let mut v = Vec::new();
    for u in &users {
        for a in &addrs {
            v.push((format!("row-{}", v.len()), *u, a.clone()));
        }
    }
    Ok(v)
}

fn valid_word(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'/' | b'@' | b'+')
        })
}

/// The phase-2 probes for what phase 1 found (empty: nothing more to ask).
pub fn phase2_probes(
    ctx: &Ctx,
    remote: &BTreeMap<String, RemoteOut>,
) -> Vec<(String, String, String)> {
    let Ok(p) = phase1(remote) else {
        return Vec::new();
    };
    let Ok(rows) = rows(ctx, &p) else {
        return Vec::new();
    };
    let kw = ROW_KEYWORDS.join("|");
    rows.into_iter()
        .filter(|(_, a, addr)| valid_word(&a.name) && valid_word(addr) && valid_word(&a.home))
        .map(|(key, a, addr)| {
            let spec = format!(
                "user={},host=labforge-verify,addr={addr},laddr={},lport={}",
                a.name, ctx.laddr, ctx.lport
            );
            (
                key,
                "sshd".to_string(),
                format!(
                    r#"o=$(sshd -T -C {spec} 2>&1) || {{ printf '%s\n' "$o"; exit 1; }}
printf '%s\n' "$o" | grep -E '^({kw}) '
printf '%s\n' "$o" | awk -v H={h} -v U={u} -v I={i} '$1=="authorizedkeysfile"{EXPAND}' | while read -r p; do
  if [ -f "$p" ]; then printf 'file %s ' "$p"; od -An -v -tx1 "$p" | tr -d ' \n'; echo; fi
done
exit 0"#,
                    spec = crate::transport::sq(&spec),
                    h = crate::transport::sq(&a.home),
                    u = crate::transport::sq(&a.name),
                    i = crate::transport::sq(&a.uid),
                    EXPAND = EXPAND,
                ),
            )
        })
        .collect()
}

/// One evaluated (account, address).
#[derive(Debug, Clone)]
pub struct Row {
    pub user: String,
    pub addr: String,
    pub map: BTreeMap<String, Vec<String>>,
    /// `None` = admitted; else why sshd refuses the account here.
    pub refused: Option<String>,
    /// Key files this row's AuthorizedKeysFile names that exist: (path, content).
    pub files: Vec<(String, String)>,
}

/// What the account checks judge.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// False when the config has no `Match` block (rows come from the global config).
    pub has_match: bool,
    pub rows: Vec<Row>,
}

pub fn analyze(ctx: &Ctx, remote: &BTreeMap<String, RemoteOut>) -> Result<Analysis, String> {
    let p = phase1(remote)?;
    let groups_for = |a: &Account| groups_of(a, &p.groups);
    if p.matches.is_empty() {
        let rows = candidates(ctx, &p)
            .into_iter()
            .map(|a| Row {
                user: a.name.clone(),
                addr: ctx.mgmt_client.clone(),
                map: p.mgmt.clone(),
                refused: refused(a, &groups_for(a), &ctx.mgmt_client, &p.mgmt),
                files: p
                    .files
                    .iter()
                    .filter(|f| f.0 == a.name)
                    .map(|f| (f.1.clone(), f.2.clone()))
                    .collect(),
            })
            .collect();
        return Ok(Analysis {
            has_match: false,
            rows,
        });
    }
    let mut out = Vec::new();
    for (key, a, addr) in rows(ctx, &p)? {
        if !(valid_word(&a.name) && valid_word(&addr) && valid_word(&a.home)) {
            return Err(format!(
                "account {:?} (home {:?}) cannot be evaluated safely",
                a.name, a.home
            ));
        }
        let o = ok_out(remote, &key)?;
        let map = sshd_map(o);
        let files = parse_files(o, false)?
            .into_iter()
            .map(|f| (f.1, f.2))
            .collect();
        out.push(Row {
            user: a.name.clone(),
            refused: refused(a, &groups_for(a), &addr, &map),
            addr,
            map,
            files,
        });
    }
    Ok(Analysis {
        has_match: true,
        rows: out,
    })
}

/// Which rows a check judges.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Every account other than the admin, from every address.
    Accounts,
    /// The admin from every address but the management client's.
    Addresses,
}

/// Which keywords a check judges.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Group {
    Auth,
    Forwarding,
    KeySources,
}

fn yn(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

/// (keyword, accepted values) of a group, for `user`.
pub fn expected(ctx: &Ctx, g: Group, user: &str) -> Vec<(&'static str, Vec<String>)> {
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    match g {
        Group::Auth => {
            let mut e = vec![
                ("passwordauthentication", v(&["no"])),
                ("kbdinteractiveauthentication", v(&["no"])),
                ("permitemptypasswords", v(&["no"])),
                ("authenticationmethods", v(&["publickey"])),
                ("pubkeyauthentication", v(&["yes"])),
            ];
            if user == "root" {
                e.push(("permitrootlogin", ctx.root_values.clone()));
            }
            e
        }
        Group::Forwarding => forwarding(ctx.x11, ctx.agent, ctx.tcp),
        Group::KeySources => key_sources(),
    }
}

/// The forwarding keywords and the values the spec's hardening accepts.
pub fn forwarding(x11: bool, agent: bool, tcp: bool) -> Vec<(&'static str, Vec<String>)> {
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let none_unless = |allowed: bool| {
        if allowed {
            v(&["any", "none"])
        } else {
            v(&["none"])
        }
    };
    vec![
        ("x11forwarding", vec![yn(x11)]),
        ("allowagentforwarding", vec![yn(agent)]),
        (
            "allowtcpforwarding",
            if tcp {
                v(&["yes", "all", "local"])
            } else {
                v(&["no"])
            },
        ),
        ("permittunnel", v(&["no"])),
        ("permituserenvironment", v(&["no"])),
        ("allowstreamlocalforwarding", v(&["no"])),
        ("gatewayports", v(&["no"])),
        ("permitlisten", none_unless(tcp)),
        ("permitopen", none_unless(tcp)),
        ("disableforwarding", vec![yn(!(x11 || agent || tcp))]),
    ]
}

/// Key sources besides the spec's authorized keys: none may be configured.
pub fn key_sources() -> Vec<(&'static str, Vec<String>)> {
    let none = vec!["none".to_string()];
    vec![
        ("authorizedkeyscommand", none.clone()),
        ("authorizedprincipalsfile", none.clone()),
        ("authorizedprincipalscommand", none.clone()),
        ("trustedusercakeys", none),
    ]
}

/// The findings of `want` in `map` (`keyword value (want …)`).
pub fn mismatches<K: AsRef<str>>(
    map: &BTreeMap<String, Vec<String>>,
    want: &[(K, Vec<String>)],
) -> Vec<String> {
    let mut bad = Vec::new();
    for (k, vals) in want {
        let k = k.as_ref();
        let got = map.get(k).map(|v| v.join(" "));
        match got {
            Some(g) if vals.contains(&g) => {}
            Some(g) => bad.push(format!("{k} {g} (want {})", vals.join(" or "))),
            None => bad.push(format!("{k} not printed by sshd -T")),
        }
    }
    bad
}

/// Normalised `type base64` of each key line.
pub fn key_set<'a>(lines: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    lines
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let i = f.iter().position(|x| {
                x.starts_with("ssh-") || x.starts_with("ecdsa-") || x.starts_with("sk-")
            })?;
            Some(format!("{} {}", f[i], f.get(i + 1)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_and_deny_entries_match_like_sshd() {
        assert!(user_entry_matches("ops", "ops", "10.0.0.1"));
        assert!(user_entry_matches("o*", "ops", "10.0.0.1"));
        assert!(!user_entry_matches("ops", "svc", "10.0.0.1"));
        assert!(user_entry_matches("svc@10.20.0.0/24", "svc", "10.20.0.9"));
        assert!(!user_entry_matches("svc@10.20.0.0/24", "svc", "10.99.0.1"));
        assert!(user_entry_matches("svc@10.20.*", "svc", "10.20.3.4"));
    }

    #[test]
    fn match_addresses_yield_addresses_inside_them() {
        assert_eq!(
            addresses_for("10.20.0.128/25"),
            ["10.20.0.128", "10.20.0.129", "10.20.0.191", "10.20.0.254"]
        );
        assert_eq!(addresses_for("!10.1.2.3"), ["10.1.2.3"]);
        assert_eq!(addresses_for("10.20.*"), ["10.20.1.1"]);
        let n: ipnet::IpNet = "10.20.0.0/24".parse().unwrap();
        assert_eq!(
            representatives(&n),
            ["10.20.0.1", "10.20.0.127", "10.20.0.254"]
        );
        let c = match_criteria("User svc,ops Address 10.20.0.0/24");
        assert_eq!(c[0], ("user".into(), vec!["svc".into(), "ops".into()]));
        assert_eq!(c[1], ("address".into(), vec!["10.20.0.0/24".into()]));
    }

    #[test]
    fn key_file_rows_keep_paths_and_content() {
        let hex: String = b"ssh-ed25519 AAAA k\n"
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let f = parse_files(
            &format!("file ops /home/o ps/.ssh/authorized_keys {hex}\n"),
            true,
        )
        .unwrap();
        assert_eq!(f[0].0, "ops");
        assert_eq!(f[0].1, "/home/o ps/.ssh/authorized_keys");
        assert_eq!(f[0].2, "ssh-ed25519 AAAA k\n");
        assert!(parse_files("file ops /x zz\n", true).is_err());
    }
}
