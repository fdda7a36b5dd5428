//! Raw spec → checked model. Gathers every problem; never stops at the first one.

use super::model::*;
use super::raw::{self, RawHardening, RawLayer, S};
use super::source::{FileId, Loc, SourceMap};
use super::{Def, Merged};
use crate::diag::Diagnostic;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::str::FromStr;

fn at<T>(file: FileId, s: &S<T>) -> Option<Loc> {
    Some(Loc::new(file, s.span()))
}

/// A seed-rule finding, before exceptions are applied.
struct Finding {
    rule: &'static str,
    /// Hosts whose exceptions may allow it.
    hosts: Vec<String>,
    subject: String,
    message: String,
    help: String,
    loc: Option<Loc>,
}

struct Ctx<'a> {
    diags: &'a mut Vec<Diagnostic>,
    findings: Vec<Finding>,
    /// Definitions that exist but failed validation, as (kind, name): they are reported once, where they are
    /// defined; a reference to one is not dangling.
    invalid: BTreeSet<(&'static str, String)>,
    /// Hosts whose interfaces are incomplete because of an error already reported (unknown network, bad
    /// address, a broken field): checks that need every interface stay silent about them.
    unsure_interfaces: BTreeSet<String>,
    /// Hosts with a mount or export that failed validation: checks that need all of them stay silent.
    unsure_storage: BTreeSet<String>,
    /// Field paths that failed to convert (already reported).
    broken: &'a super::convert::Broken,
}

impl Ctx<'_> {
    fn err(
        &mut self,
        rule: &'static str,
        path: impl Into<String>,
        loc: Option<Loc>,
        msg: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.diags
            .push(Diagnostic::error(rule, path, msg).at(loc).help(help));
    }
    fn warn(
        &mut self,
        rule: &'static str,
        path: impl Into<String>,
        loc: Option<Loc>,
        msg: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.diags
            .push(Diagnostic::warning(rule, path, msg).at(loc).help(help));
    }
    #[allow(clippy::too_many_arguments)]
    fn find(
        &mut self,
        rule: &'static str,
        hosts: &[&str],
        subject: impl Into<String>,
        loc: Option<Loc>,
        msg: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.findings.push(Finding {
            rule,
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            subject: subject.into(),
            message: msg.into(),
            help: help.into(),
            loc,
        });
    }
}

pub fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

fn is_username(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn is_abs_path(s: &str) -> bool {
    s.starts_with('/')
        && !s.contains("//")
        && !s.split('/').any(|c| c == ".." || c == ".")
        && (s == "/" || !s.ends_with('/'))
        && !s.chars().any(|c| c.is_control())
}

fn path_under(path: &str, base: &str) -> bool {
    path == base || base == "/" || path.starts_with(&format!("{base}/"))
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// One mount option token as fstab, systemd and NixOS `fileSystems.*.options` take it.
pub fn is_mount_option(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && (s.as_bytes()[0].is_ascii_alphanumeric() || s.as_bytes()[0] == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.=:/+@-".contains(&b))
}

/// A value shortened for a message (long values would bury the message).
pub fn elide(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let head: String = s.chars().take(MAX - 1).collect();
        format!("{head}…")
    }
}

fn is_package(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._".contains(&b))
}

fn port_of(c: &mut Ctx, file: FileId, v: &S<i64>, path: &str) -> Option<u16> {
    let n = *v.get_ref();
    if (1..=65535).contains(&n) {
        Some(n as u16)
    } else {
        c.err(
            "SPEC023",
            path,
            at(file, v),
            format!("port {n} is not in 1..65535"),
            "use a TCP/UDP port number between 1 and 65535",
        );
        None
    }
}

/// Parse `[registry[:port]/]name[:tag][@sha256:hex]`.
pub fn parse_image(s: &str) -> Result<ImageRef, String> {
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => {
            let hex = d
                .strip_prefix("sha256:")
                .ok_or_else(|| format!("digest `{d}` must start with `sha256:`"))?;
            if hex.len() != 64
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(format!(
                    "digest `{d}` must be `sha256:` followed by 64 lowercase hex digits"
                ));
            }
            (r, Some(d.to_string()))
        }
        None => (s, None),
    };
    let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (repo, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (
            &rest[..last_slash + i],
            Some(rest[last_slash + i + 1..].to_string()),
        ),
        None => (rest, None),
    };
    if repo.is_empty()
        || !repo
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/:".contains(&b))
        || repo.starts_with('/')
        || repo.ends_with('/')
    {
        return Err(format!(
            "`{repo}` is not a valid image repository (lowercase letters, digits, . _ - /)"
        ));
    }
    if let Some(t) = &tag {
        if t.is_empty()
            || t.len() > 128
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(format!("`{t}` is not a valid image tag"));
        }
    }
    Ok(ImageRef {
        repository: repo.to_string(),
        tag,
        digest,
    })
}

const WEAK_ALGOS: &[&str] = &[
    "diffie-hellman-group1-sha1",
    "diffie-hellman-group14-sha1",
    "diffie-hellman-group-exchange-sha1",
    "ssh-rsa",
    "ssh-dss",
    "3des-cbc",
    "aes128-cbc",
    "aes192-cbc",
    "aes256-cbc",
    "arcfour",
    "hmac-md5",
    "hmac-md5-etm@openssh.com",
    "hmac-sha1",
    "hmac-sha1-etm@openssh.com",
    "hmac-sha1-96",
    "umac-64@openssh.com",
    "umac-64-etm@openssh.com",
];

/// The lock-out guard (`SPEC030`, src/spec/ssh_algos.rs): the algorithm lists as they stand after this
/// layer, against what labforge's own SSH client offers. Reported once, where a list this layer sets is
/// to blame (a MAC problem also where the ciphers that need the MAC are set).
fn lockout_guard(c: &mut Ctx, file: FileId, h: &Hardening, src: &RawHardening, path: &str) {
    use super::ssh_algos::{lockouts, Lists, HOST_KEY_TYPE};
    let l = Lists {
        kex: Some(&h.kex_algorithms),
        ciphers: Some(&h.ciphers),
        macs: Some(&h.macs),
        host_keys: Some(&h.host_key_algorithms),
    };
    for p in lockouts(&l, HOST_KEY_TYPE) {
        let set = match p.field {
            "kex_algorithms" => src.kex_algorithms.as_ref(),
            "ciphers" => src.ciphers.as_ref(),
            "macs" => src.macs.as_ref().or(src.ciphers.as_ref()),
            _ => src.host_key_algorithms.as_ref(),
        };
        let Some(list) = set else { continue };
        c.err(
            "SPEC030",
            format!("{path}.{}", p.field),
            list.first().and_then(|a| at(file, a)),
            format!("{}: a deploy would lock labforge out", p.message),
            p.fix,
        );
    }
}

/// Overlay `src` onto `dst`, reporting invalid values.
/// Where each hardening field was last set: field → (spec path, location).
pub type Origins = BTreeMap<&'static str, (String, Option<Loc>)>;

fn record<T>(o: &mut Origins, field: &'static str, path: &str, file: FileId, v: &S<T>) {
    o.insert(field, (format!("{path}.{field}"), at(file, v)));
}

fn apply_hardening(
    c: &mut Ctx,
    file: FileId,
    h: &mut Hardening,
    src: &RawHardening,
    path: &str,
    o: &mut Origins,
) {
    if let Some(v) = &src.ssh_port {
        if let Some(p) = port_of(c, file, v, &format!("{path}.ssh_port")) {
            h.ssh_port = p;
            record(o, "ssh_port", path, file, v);
        }
    }
    if let Some(v) = &src.ssh_networks {
        h.ssh_networks = v.iter().map(|s| s.get_ref().clone()).collect();
        if let Some(first) = v.first() {
            record(o, "ssh_networks", path, file, first);
        }
    }
    if let Some(v) = &src.permit_root_login {
        let ok = [
            "no",
            "yes",
            "prohibit-password",
            "without-password",
            "forced-commands-only",
        ];
        if ok.contains(&v.get_ref().as_str()) {
            h.permit_root_login = v.get_ref().clone();
            record(o, "permit_root_login", path, file, v);
        } else {
            c.err(
                "SPEC003",
                format!("{path}.permit_root_login"),
                at(file, v),
                format!("`{}` is not an sshd PermitRootLogin value", v.get_ref()),
                "use \"no\"",
            );
        }
    }
    macro_rules! b {
        ($f:ident) => {
            if let Some(v) = &src.$f {
                h.$f = *v.get_ref();
                record(o, stringify!($f), path, file, v);
            }
        };
    }
    b!(password_authentication);
    b!(kbd_interactive_authentication);
    b!(pubkey_authentication);
    b!(x11_forwarding);
    b!(allow_agent_forwarding);
    b!(allow_tcp_forwarding);
    for (v, dst, name, lo, hi) in [
        (
            &src.max_auth_tries,
            &mut h.max_auth_tries,
            "max_auth_tries",
            1,
            10,
        ),
        (
            &src.login_grace_time,
            &mut h.login_grace_time,
            "login_grace_time",
            5,
            600,
        ),
    ] {
        if let Some(v) = v {
            let n = *v.get_ref();
            if (lo..=hi).contains(&n) {
                *dst = n as u32;
            } else {
                c.err(
                    "SPEC003",
                    format!("{path}.{name}"),
                    at(file, v),
                    format!("{name} = {n} is outside {lo}..{hi}"),
                    format!("choose a value between {lo} and {hi}"),
                );
            }
        }
    }
    for (v, dst, name) in [
        (&src.kex_algorithms, &mut h.kex_algorithms, "kex_algorithms"),
        (&src.ciphers, &mut h.ciphers, "ciphers"),
        (&src.macs, &mut h.macs, "macs"),
        (
            &src.host_key_algorithms,
            &mut h.host_key_algorithms,
            "host_key_algorithms",
        ),
    ] {
        let Some(list) = v else { continue };
        let mut good = true;
        for a in list {
            if WEAK_ALGOS.contains(&a.get_ref().as_str()) {
                good = false;
                c.err(
                    "SPEC003",
                    format!("{path}.{name}"),
                    at(file, a),
                    format!("`{}` is a weak algorithm", a.get_ref()),
                    "remove it; keep the defaults from the README",
                );
            }
        }
        if list.is_empty() {
            good = false;
            c.err(
                "SPEC003",
                format!("{path}.{name}"),
                None,
                format!("{name} is empty"),
                "list at least one algorithm",
            );
        }
        if good {
            *dst = list.iter().map(|s| s.get_ref().clone()).collect();
        }
    }
    lockout_guard(c, file, h, src, path);
    if let Some(v) = &src.firewall_default {
        match v.get_ref().as_str() {
            "drop" | "reject" | "accept" => {
                h.firewall_default = v.get_ref().clone();
                record(o, "firewall_default", path, file, v);
            }
            other => c.err(
                "SPEC003",
                format!("{path}.firewall_default"),
                at(file, v),
                format!("`{other}` is not a firewall policy"),
                "use \"drop\"",
            ),
        }
    }
}

pub fn validate(m: &Merged, sources: &SourceMap, diags: &mut Vec<Diagnostic>) -> Option<Spec> {
    let mut c = Ctx {
        diags,
        findings: Vec::new(),
        invalid: BTreeSet::new(),
        unsure_interfaces: BTreeSet::new(),
        unsure_storage: BTreeSet::new(),
        broken: &m.broken,
    };
    scan_secret_values(&mut c, sources);

    // ---- site ----
    let (site_file, site_raw) = match &m.site {
        Some((f, s)) => (*f, Some(s.get_ref())),
        None => (0, None),
    };
    let mut base_hardening = Hardening::default();
    let mut base_origins = Origins::new();
    let mut site = Site {
        name: String::new(),
        domain: String::new(),
        timezone: "UTC".into(),
        locale: "C.UTF-8".into(),
        nameservers: vec![],
        bootstrap_nameservers: vec![],
        admins: vec![],
        age_recipients: vec![],
        loc: m.site.as_ref().and_then(|(f, s)| at(*f, s)),
    };
    if let Some(s) = site_raw {
        let f = site_file;
        site.name = s.name.get_ref().clone();
        if !is_hostname(&site.name) {
            c.err(
                "SPEC010",
                "site.name",
                at(f, &s.name),
                format!("`{}` is not a valid name", site.name),
                "use lowercase letters, digits and '-'",
            );
        }
        site.domain = s.domain.get_ref().clone();
        if site.domain.is_empty() || !site.domain.split('.').all(is_hostname) {
            c.err(
                "SPEC010",
                "site.domain",
                at(f, &s.domain),
                format!("`{}` is not a valid DNS domain", site.domain),
                "use dot-separated lowercase labels, e.g. lab.example.net",
            );
        }
        site.timezone = s.timezone.get_ref().clone();
        let tz = &site.timezone;
        if !(tz == "UTC"
            || (tz.contains('/')
                && tz.split('/').all(|p| {
                    !p.is_empty()
                        && p.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"_-+".contains(&b))
                })))
        {
            c.err(
                "SPEC003",
                "site.timezone",
                at(f, &s.timezone),
                format!("`{tz}` is not an IANA time zone"),
                "use e.g. \"UTC\" or \"Europe/Berlin\"",
            );
        }
        if let Some(l) = &s.locale {
            site.locale = l.get_ref().clone();
        }
        for (i, ns) in s.nameservers.iter().enumerate() {
            match IpAddr::from_str(ns.get_ref()) {
                Ok(a) => site.nameservers.push(a),
                Err(_) => c.err(
                    "SPEC011",
                    format!("site.nameservers[{i}]"),
                    at(f, ns),
                    format!("`{}` is not an IP address", ns.get_ref()),
                    "write an IPv4 or IPv6 address",
                ),
            }
        }
        for (i, ns) in s.bootstrap_nameservers.iter().enumerate() {
            match IpAddr::from_str(ns.get_ref()) {
                Ok(a) => site.bootstrap_nameservers.push(a),
                Err(_) => c.err(
                    "SPEC011",
                    format!("site.bootstrap_nameservers[{i}]"),
                    at(f, ns),
                    format!("`{}` is not an IP address", ns.get_ref()),
                    "write an IPv4 or IPv6 address",
                ),
            }
        }
        let mut seen = BTreeSet::new();
        for (i, a) in s.admins.iter().enumerate() {
            let a = a.get_ref();
            let p = format!("site.admins[{i}]");
            let name = a.name.get_ref();
            if name == "root" {
                c.find(
                    "S000-ROOT-LOGIN",
                    &[],
                    format!("{p}.name"),
                    at(f, &a.name),
                    "the admin user must not be root",
                    "name a non-root admin user; root login stays disabled",
                );
            } else if !is_username(name) {
                c.err(
                    "SPEC010",
                    format!("{p}.name"),
                    at(f, &a.name),
                    format!("`{name}` is not a valid user name"),
                    "use lowercase letters, digits, '-' and '_', starting with a letter",
                );
            }
            if !seen.insert(name.clone()) {
                c.err(
                    "SPEC004",
                    format!("{p}.name"),
                    at(f, &a.name),
                    format!("admin `{name}` is listed twice"),
                    "list each admin once",
                );
            }
            let mut keys = Vec::new();
            for (j, k) in a.ssh_keys.iter().enumerate() {
                let text = k.get_ref().trim();
                if super::strings::forbidden_char(text).is_some() {
                    continue; // SPEC026 already names this string.
                }
                // Every OpenSSH key blob starts `AAAA` (the big-endian length of its type name).
                let blobs = text.split(' ').filter(|w| w.starts_with("AAAA")).count();
                if blobs > 1 {
                    c.err(
                        "SPEC017",
                        format!("{p}.ssh_keys[{j}]"),
                        at(f, k),
                        format!("this string holds {blobs} SSH keys"),
                        "write one key per string: ssh_keys = [\"ssh-ed25519 AAAA… a@b\", \"ssh-ed25519 AAAA… c@d\"]",
                    );
                    continue;
                }
                match ssh_key::PublicKey::from_openssh(text) {
                    Ok(_) => keys.push(text.to_string()),
                    Err(e) => c.err(
                        "SPEC017",
                        format!("{p}.ssh_keys[{j}]"),
                        at(f, k),
                        format!("not an OpenSSH public key: {e}"),
                        "paste the one line of your ~/.ssh/id_ed25519.pub",
                    ),
                }
            }
            if a.ssh_keys.is_empty() {
                c.find(
                    "S000-ROOT-LOGIN",
                    &[],
                    format!("{p}.ssh_keys"),
                    at(f, &a.name),
                    format!("admin `{name}` has no SSH key"),
                    "add the admin's public key: key authentication is the only way in",
                );
            }
            site.admins.push(Admin {
                name: name.clone(),
                ssh_keys: keys,
            });
        }
        if s.admins.is_empty() {
            c.find(
                "S000-ROOT-LOGIN",
                &[],
                "site.admins",
                at(f, &s.name),
                "no admin user: a non-root admin with a key is required",
                "add [[site.admins]] with name and ssh_keys",
            );
        }
        for (i, r) in s.age_recipients.iter().enumerate() {
            if age::x25519::Recipient::from_str(r.get_ref()).is_err() {
                c.err(
                    "SPEC003",
                    format!("site.age_recipients[{i}]"),
                    at(f, r),
                    "not an age X25519 public key (age1…)",
                    "run `age-keygen` (or `labforge secrets init`) and copy the public key",
                );
            } else {
                site.age_recipients.push(r.get_ref().clone());
            }
        }
        if let Some(h) = &s.hardening {
            apply_hardening(
                &mut c,
                f,
                &mut base_hardening,
                h.get_ref(),
                "site.hardening",
                &mut base_origins,
            );
        }
    }

    // ---- networks ----
    let mut networks = BTreeMap::new();
    let mut vlans: BTreeMap<u16, String> = BTreeMap::new();
    for (name, d) in &m.networks {
        let f = d.file;
        let n = d.value.get_ref();
        let p = format!("networks.{name}");
        if !is_ident(name) {
            c.err(
                "SPEC010",
                &p,
                at(f, &d.key),
                format!("`{name}` is not a valid network name"),
                "use lowercase letters, digits, '-' and '_'",
            );
        }
        let vlan = *n.vlan.get_ref();
        let vlan = if (1..=4094).contains(&vlan) {
            vlan as u16
        } else {
            c.err(
                "SPEC003",
                format!("{p}.vlan"),
                at(f, &n.vlan),
                format!("VLAN id {vlan} is not in 1..4094"),
                "use an 802.1Q VLAN id between 1 and 4094",
            );
            0
        };
        if vlan != 0 {
            if let Some(other) = vlans.get(&vlan) {
                c.err(
                    "SPEC015",
                    format!("{p}.vlan"),
                    at(f, &n.vlan),
                    format!("VLAN {vlan} is already used by network `{other}`"),
                    "give each network its own VLAN id",
                );
            } else {
                vlans.insert(vlan, name.clone());
            }
        }
        let cidr = match IpNet::from_str(n.cidr.get_ref()) {
            Ok(net) if net.trunc() == net => Some(net),
            Ok(net) => {
                c.err(
                    "SPEC011",
                    format!("{p}.cidr"),
                    at(f, &n.cidr),
                    format!("`{net}` has host bits set"),
                    format!("write the network address: {}", net.trunc()),
                );
                None
            }
            Err(_) => {
                c.err(
                    "SPEC011",
                    format!("{p}.cidr"),
                    at(f, &n.cidr),
                    format!("`{}` is not a CIDR", n.cidr.get_ref()),
                    "write it as address/prefix, e.g. 10.60.0.0/24",
                );
                None
            }
        };
        let role = match NetRole::parse(n.role.get_ref()) {
            Some(r) => Some(r),
            None => {
                c.err(
                    "SPEC003",
                    format!("{p}.role"),
                    at(f, &n.role),
                    format!("unknown network role `{}`", n.role.get_ref()),
                    format!("use one of: {}", NetRole::ALL.join(", ")),
                );
                None
            }
        };
        let mut gateway = None;
        if let Some(g) = &n.gateway {
            match IpAddr::from_str(g.get_ref()) {
                Ok(a) => {
                    if let Some(net) = cidr {
                        if !net.contains(&a) {
                            c.err(
                                "SPEC012",
                                format!("{p}.gateway"),
                                at(f, g),
                                format!("gateway {a} is outside {net}"),
                                format!("pick a gateway inside {net}"),
                            );
                        }
                    }
                    gateway = Some(a);
                }
                Err(_) => c.err(
                    "SPEC011",
                    format!("{p}.gateway"),
                    at(f, g),
                    format!("`{}` is not an IP address", g.get_ref()),
                    "write an IPv4 or IPv6 address",
                ),
            }
        }
        let mut nameservers = vec![];
        for (i, ns) in n.nameservers.iter().enumerate() {
            match IpAddr::from_str(ns.get_ref()) {
                Ok(a) => nameservers.push(a),
                Err(_) => c.err(
                    "SPEC011",
                    format!("{p}.nameservers[{i}]"),
                    at(f, ns),
                    format!("`{}` is not an IP address", ns.get_ref()),
                    "write an IPv4 or IPv6 address",
                ),
            }
        }
        if cidr.is_none() || role.is_none() {
            c.invalid.insert(("network", name.clone()));
        }
        if let (Some(cidr), Some(role)) = (cidr, role) {
            networks.insert(
                name.clone(),
                Network {
                    name: name.clone(),
                    vlan,
                    cidr,
                    gateway,
                    role,
                    nameservers,
                    loc: at(f, &d.key),
                    cidr_loc: at(f, &n.cidr),
                },
            );
        }
    }
    // One diagnostic per overlapping network, naming every network it overlaps.
    let nets: Vec<&Network> = networks.values().collect();
    for (i, b) in nets.iter().enumerate() {
        let over: Vec<String> = nets[..i]
            .iter()
            .filter(|a| a.cidr.contains(&b.cidr.network()) || b.cidr.contains(&a.cidr.network()))
            .map(|a| format!("`{}` ({})", a.name, a.cidr))
            .collect();
        if !over.is_empty() {
            c.err(
                "SPEC015",
                format!("networks.{}.cidr", b.name),
                b.cidr_loc,
                format!(
                    "{} overlaps network{} {}",
                    b.cidr,
                    if over.len() > 1 { "s" } else { "" },
                    over.join(", ")
                ),
                "give each VLAN its own, non-overlapping subnet",
            );
        }
    }

    // ---- secrets ----
    let mut secrets = BTreeMap::new();
    for (name, d) in &m.secrets {
        let f = d.file;
        let s = d.value.get_ref();
        let p = format!("secrets.{name}");
        if !is_ident(name) {
            c.err(
                "SPEC010",
                &p,
                at(f, &d.key),
                format!("`{name}` is not a valid secret name"),
                "use lowercase letters, digits, '-' and '_'",
            );
        }
        let src = s.source.get_ref();
        let source = if src == "store" {
            Some(SecretSource::Store)
        } else if let Some(v) = src.strip_prefix("env:") {
            if !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                Some(SecretSource::Env(v.to_string()))
            } else {
                None
            }
        } else if let Some(v) = src.strip_prefix("file:") {
            if is_abs_path(v) || v.starts_with("~/") {
                Some(SecretSource::File(v.to_string()))
            } else {
                None
            }
        } else {
            None
        };
        if source.is_none() {
            c.err("SPEC024", format!("{p}.source"), at(f, &s.source), format!("`{src}` is not a secret source"), "use \"store\" (the age store in secrets/), \"env:VAR\" or \"file:/absolute/path\" — never the value itself");
        }
        let generate = s.generate.as_ref().map(|g| g.get_ref().clone());
        if let Some(g) = &s.generate {
            if !["password", "token", "base64-32", "hex-32"].contains(&g.get_ref().as_str()) {
                c.err(
                    "SPEC003",
                    format!("{p}.generate"),
                    at(f, g),
                    format!("unknown generator `{}`", g.get_ref()),
                    "use password, token, base64-32 or hex-32",
                );
            } else if source.is_some() && source != Some(SecretSource::Store) {
                c.err(
                    "SPEC024",
                    format!("{p}.generate"),
                    at(f, g),
                    "only `store` secrets can be generated",
                    "set source = \"store\" or drop `generate`",
                );
            }
        }
        if source.is_none() {
            c.invalid.insert(("secret", name.clone()));
        }
        if let Some(source) = source {
            secrets.insert(
                name.clone(),
                SecretRef {
                    name: name.clone(),
                    source,
                    description: s.description.as_ref().map(|d| d.get_ref().clone()),
                    generate,
                },
            );
        }
    }

    // ---- hosts (first pass: identity, interfaces) ----
    let mut hosts: BTreeMap<String, Host> = BTreeMap::new();
    let mut ip_owner: BTreeMap<IpAddr, (String, Option<Loc>)> = BTreeMap::new();
    let mut mac_owner: BTreeMap<String, String> = BTreeMap::new();
    let site_defaults = site_raw
        .and_then(|s| s.defaults.as_ref())
        .map(|d| (site_file, d.get_ref()));
    for (name, d) in &m.hosts {
        if let Some(h) = host_pass1(
            &mut c,
            m,
            &networks,
            site_defaults,
            (&base_hardening, &base_origins),
            name,
            d,
            &mut ip_owner,
            &mut mac_owner,
        ) {
            hosts.insert(name.clone(), h);
        } else {
            c.invalid.insert(("host", name.clone()));
        }
    }

    // ---- clusters ----
    let mut clusters = BTreeMap::new();
    for (name, d) in &m.clusters {
        let f = d.file;
        let cl = d.value.get_ref();
        let p = format!("clusters.{name}");
        if !is_hostname(name) {
            c.err(
                "SPEC010",
                &p,
                at(f, &d.key),
                format!("`{name}` is not a valid cluster name"),
                "use lowercase letters, digits and '-'",
            );
        }
        let ver_ok = |v: &str| {
            let v = v.strip_prefix('v').unwrap_or(v);
            let parts: Vec<&str> = v.split('.').collect();
            parts.len() == 3
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        };
        if !ver_ok(cl.talos_version.get_ref()) || !cl.talos_version.get_ref().starts_with("v1.") {
            c.err(
                "SPEC003",
                format!("{p}.talos_version"),
                at(f, &cl.talos_version),
                format!("`{}` is not a Talos version", cl.talos_version.get_ref()),
                "write it as v1.MINOR.PATCH, e.g. v1.13.9",
            );
        }
        if !ver_ok(cl.kubernetes_version.get_ref()) {
            c.err(
                "SPEC003",
                format!("{p}.kubernetes_version"),
                at(f, &cl.kubernetes_version),
                format!(
                    "`{}` is not a Kubernetes version",
                    cl.kubernetes_version.get_ref()
                ),
                "write it as MAJOR.MINOR.PATCH, e.g. 1.34.1",
            );
        }
        let net = networks.get(cl.network.get_ref());
        if net.is_none() {
            dangling(
                &mut c,
                format!("{p}.network"),
                at(f, &cl.network),
                "network",
                cl.network.get_ref(),
                networks.keys(),
            );
        }
        let vip = match &cl.endpoint_vip {
            None => {
                c.find("S003-TALOS-HA", &[], format!("{p}.endpoint_vip"), at(f, &d.key), "the cluster has no endpoint VIP", "set endpoint_vip to a free address on the cluster network; control planes share it");
                None
            }
            Some(v) => match IpAddr::from_str(v.get_ref()) {
                Err(_) => {
                    c.err(
                        "SPEC011",
                        format!("{p}.endpoint_vip"),
                        at(f, v),
                        format!("`{}` is not an IP address", v.get_ref()),
                        "write an IPv4 address on the cluster network",
                    );
                    None
                }
                Ok(a) => {
                    if let Some(n) = net {
                        if !n.cidr.contains(&a) {
                            c.err(
                                "SPEC012",
                                format!("{p}.endpoint_vip"),
                                at(f, v),
                                format!("VIP {a} is outside network `{}` ({})", n.name, n.cidr),
                                format!("pick a free address inside {}", n.cidr),
                            );
                        }
                    }
                    if let Some((owner, _)) = ip_owner.get(&a) {
                        c.err(
                            "SPEC013",
                            format!("{p}.endpoint_vip"),
                            at(f, v),
                            format!("VIP {a} is already the address of {owner}"),
                            "the VIP must be an address no host uses",
                        );
                    } else {
                        ip_owner.insert(a, (format!("cluster {name}"), at(f, v)));
                    }
                    Some(a)
                }
            },
        };
        if cl.control_planes.len() < 3 {
            c.find(
                "S003-TALOS-HA",
                &[],
                format!("{p}.control_planes"),
                at(f, &d.key),
                format!(
                    "{} control-plane node(s); at least 3 are required for etcd quorum",
                    cl.control_planes.len()
                ),
                "list three (or five) control-plane hosts",
            );
        } else if cl.control_planes.len() % 2 == 0 {
            c.warn(
                "S003-TALOS-HA",
                format!("{p}.control_planes"),
                at(f, &cl.control_planes[0]),
                "an even number of control planes adds no etcd fault tolerance",
                "use an odd number of control planes",
            );
        }
        let mut members = BTreeSet::new();
        for (list, kind) in [
            (&cl.control_planes, "control_planes"),
            (&cl.workers, "workers"),
        ] {
            for (i, n) in list.iter().enumerate() {
                let hp = format!("{p}.{kind}[{i}]");
                let hn = n.get_ref();
                if !members.insert(hn.clone()) {
                    c.err(
                        "SPEC004",
                        &hp,
                        at(f, n),
                        format!("`{hn}` is listed twice in the cluster"),
                        "list each node once, as control plane or worker",
                    );
                    continue;
                }
                match hosts.get_mut(hn) {
                    None => dangling(&mut c, hp, at(f, n), "host", hn, m.hosts.keys()),
                    Some(h) if h.os != Os::Talos => c.err(
                        "SPEC003",
                        hp,
                        at(f, n),
                        format!(
                            "host `{hn}` has os = \"{}\"; cluster nodes run Talos",
                            h.os.as_str()
                        ),
                        format!("set os = \"talos\" on hosts.{hn} or remove it from the cluster"),
                    ),
                    Some(h) => {
                        if let Some(other) = &h.cluster {
                            c.err(
                                "SPEC004",
                                hp,
                                at(f, n),
                                format!("host `{hn}` is already a node of cluster `{other}`"),
                                "a node belongs to one cluster",
                            );
                        } else {
                            if net.is_some()
                                && !c.unsure_interfaces.contains(hn)
                                && !h
                                    .interfaces
                                    .iter()
                                    .any(|i| i.network == *cl.network.get_ref())
                            {
                                c.err(
                                    "SPEC016",
                                    hp.clone(),
                                    at(f, n),
                                    format!(
                                        "host `{hn}` has no interface on the cluster network `{}`",
                                        cl.network.get_ref()
                                    ),
                                    format!(
                                        "add an interface on `{}` to hosts.{hn}",
                                        cl.network.get_ref()
                                    ),
                                );
                            }
                            h.cluster = Some(name.clone());
                        }
                    }
                }
            }
        }
        for (i, e) in cl.extensions.iter().enumerate() {
            if !e.get_ref().starts_with("siderolabs/") {
                c.err(
                    "SPEC003",
                    format!("{p}.extensions[{i}]"),
                    at(f, e),
                    format!(
                        "`{}` is not an official Talos system extension name",
                        e.get_ref()
                    ),
                    "use the Image Factory name, e.g. siderolabs/iscsi-tools",
                );
            }
        }
        if let Some(vip) = vip {
            clusters.insert(
                name.clone(),
                Cluster {
                    name: name.clone(),
                    talos_version: cl.talos_version.get_ref().clone(),
                    kubernetes_version: cl
                        .kubernetes_version
                        .get_ref()
                        .trim_start_matches('v')
                        .to_string(),
                    endpoint_vip: vip,
                    network: cl.network.get_ref().clone(),
                    control_planes: cl
                        .control_planes
                        .iter()
                        .map(|s| s.get_ref().clone())
                        .collect(),
                    workers: cl.workers.iter().map(|s| s.get_ref().clone()).collect(),
                    extensions: cl.extensions.iter().map(|s| s.get_ref().clone()).collect(),
                    allow_scheduling_on_control_planes: cl
                        .allow_scheduling_on_control_planes
                        .as_ref()
                        .map(|b| *b.get_ref())
                        .unwrap_or(false),
                    patches: talos_patches(&mut c, f, &cl.patches, &format!("{p}.patches")),
                    loc: at(f, &d.key),
                },
            );
        }
    }
    // A cluster node list with a broken entry cannot say who is not a node.
    let members_known = !m.clusters.keys().any(|k| {
        m.broken.under(&format!("clusters.{k}.control_planes"))
            || m.broken.under(&format!("clusters.{k}.workers"))
    });
    for (name, h) in &hosts {
        if (h.os == Os::Talos && h.cluster.is_none() && !m.clusters.is_empty()
            || h.os == Os::Talos && m.clusters.is_empty())
            && members_known
        {
            c.err(
                "SPEC016",
                format!("hosts.{name}"),
                h.loc,
                format!("Talos host `{name}` is not a node of any cluster"),
                "add it to a cluster's control_planes or workers",
            );
        }
    }

    // ---- stacks ----
    let mut stacks = BTreeMap::new();
    for (name, d) in &m.stacks {
        if let Some(s) = stack(&mut c, name, d, &networks, &secrets, &m.hosts) {
            stacks.insert(name.clone(), s);
        }
    }
    for (hn, h) in hosts.iter() {
        let d = &m.hosts[hn];
        let rh = d.value.get_ref();
        for (i, sref) in rh.stacks.iter().enumerate() {
            if !m.stacks.contains_key(sref.get_ref()) {
                dangling(
                    &mut c,
                    format!("hosts.{hn}.stacks[{i}]"),
                    at(d.file, sref),
                    "stack",
                    sref.get_ref(),
                    m.stacks.keys(),
                );
            }
        }
        for s in &h.stacks {
            if let Some(st) = stacks.get_mut(s) {
                if !st.hosts.contains(hn) {
                    st.hosts.push(hn.clone());
                }
            }
        }
    }

    // ---- gates ----
    let mut gates = BTreeMap::new();
    for (id, d) in &m.gates {
        let f = d.file;
        let g = d.value.get_ref();
        let p = format!("gates.{id}");
        if !is_ident(id) {
            c.err(
                "SPEC010",
                &p,
                at(f, &d.key),
                format!("`{id}` is not a valid gate id"),
                "use lowercase letters, digits, '-' and '_'",
            );
        }
        let seed = g.seed.get_ref();
        if !(seed.len() == 3 && seed.bytes().all(|b| b.is_ascii_digit())) {
            c.err(
                "S001-GATE",
                format!("{p}.seed"),
                at(f, &g.seed),
                format!("`{seed}` is not an operator document number"),
                "name the seed document, e.g. \"001\"",
            );
        }
        if g.checklist.is_empty() {
            c.err(
                "S001-GATE",
                format!("{p}.checklist"),
                at(f, &d.key),
                "an operator gate needs a checklist",
                "copy the operator's checklist items from the document",
            );
        }
        let when = g.when.get_ref();
        let parsed = when.split_once(":stack:").and_then(|(w, s)| match w {
            "before" => Some((GateWhen::Before, s)),
            "after" => Some((GateWhen::After, s)),
            _ => None,
        });
        match parsed {
            None => c.err(
                "SPEC003",
                format!("{p}.when"),
                at(f, &g.when),
                format!("`{when}` is not a gate position"),
                "use \"before:stack:NAME\" or \"after:stack:NAME\"",
            ),
            Some((w, s)) => {
                if !stacks.contains_key(s) {
                    dangling(
                        &mut c,
                        format!("{p}.when"),
                        at(f, &g.when),
                        "stack",
                        s,
                        stacks.keys(),
                    );
                } else {
                    gates.insert(
                        id.clone(),
                        Gate {
                            id: id.clone(),
                            seed: seed.clone(),
                            title: g.title.get_ref().clone(),
                            when: w,
                            stack: s.to_string(),
                            checklist: g.checklist.iter().map(|s| s.get_ref().clone()).collect(),
                            evidence: g.evidence.iter().map(|s| s.get_ref().clone()).collect(),
                        },
                    );
                }
            }
        }
    }

    // ---- cross-object seed rules ----
    seed_rules(&mut c, m, &networks, &hosts, &stacks);

    // ---- unused definitions (warnings) ----
    for (name, st) in &stacks {
        if st.hosts.is_empty() {
            let d = &m.stacks[name];
            c.warn(
                "SPEC025",
                format!("stacks.{name}"),
                at(d.file, &d.key),
                format!("stack `{name}` runs on no host"),
                "add it to a host's `stacks` or remove it",
            );
        }
    }

    // ---- exceptions ----
    apply_exceptions(&mut c, m, &hosts, &stacks);

    m.site.as_ref()?;
    resolve_mount_servers(&mut hosts, &networks);
    let mut spec = Spec {
        revision: sources.revision(),
        site,
        networks,
        hosts,
        stacks,
        clusters,
        secrets,
        gates,
        sources: sources.clone(),
    };
    spec.derive_facts();
    Some(spec)
}

fn dangling<'k>(
    c: &mut Ctx,
    path: String,
    loc: Option<Loc>,
    what: &str,
    name: &str,
    known: impl Iterator<Item = &'k String>,
) {
    if c.invalid.iter().any(|(k, n)| *k == what && n == name) {
        return; // defined, and its own error is already reported where it is defined
    }
    let known: Vec<&str> = known.map(|s| s.as_str()).collect();
    let help = match super::closest(name, &known) {
        Some(s) => format!("did you mean `{s}`?"),
        None if known.is_empty() => format!("define the {what} first"),
        None => format!("defined {what}s: {}", known.join(", ")),
    };
    c.err(
        "SPEC016",
        path,
        loc,
        format!("no {what} named `{name}`"),
        help,
    );
}

/// Layers for a host, lowest first: site.defaults, roles.<role>, tags.<tag>…
/// A layer of defaults: its file, its spec path (for messages) and its contents.
type Layer<'a> = (FileId, String, &'a RawLayer);

fn layers<'a>(
    m: &'a Merged,
    site_defaults: Option<(FileId, &'a RawLayer)>,
    role: Option<&str>,
    tags: &[S<String>],
) -> Vec<Layer<'a>> {
    let mut out = Vec::new();
    if let Some((f, l)) = site_defaults {
        out.push((f, "site.defaults".to_string(), l));
    }
    if let Some((r, d)) = role.and_then(|r| m.roles.get(r).map(|d| (r, d))) {
        out.push((d.file, format!("roles.{r}"), d.value.get_ref()));
    }
    for t in tags {
        if let Some(d) = m.tags.get(t.get_ref()) {
            out.push((d.file, format!("tags.{}", t.get_ref()), d.value.get_ref()));
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn host_pass1(
    c: &mut Ctx,
    m: &Merged,
    networks: &BTreeMap<String, Network>,
    site_defaults: Option<(FileId, &RawLayer)>,
    (base_hardening, base_origins): (&Hardening, &Origins),
    name: &str,
    d: &Def<raw::RawHost>,
    ip_owner: &mut BTreeMap<IpAddr, (String, Option<Loc>)>,
    mac_owner: &mut BTreeMap<String, String>,
) -> Option<Host> {
    let f = d.file;
    let h = d.value.get_ref();
    let p = format!("hosts.{name}");
    let key_loc = at(f, &d.key);
    if !is_hostname(name) {
        c.err(
            "SPEC010",
            &p,
            key_loc,
            format!("`{name}` is not a valid hostname"),
            "use 1-63 lowercase letters, digits and '-', not starting or ending with '-'",
        );
    }
    for (i, t) in h.tags.iter().enumerate() {
        if !is_ident(t.get_ref()) {
            c.err(
                "SPEC010",
                format!("{p}.tags[{i}]"),
                at(f, t),
                format!("`{}` is not a valid tag", t.get_ref()),
                "use lowercase letters, digits, '-' and '_'",
            );
        }
    }
    let role = h.role.as_ref().map(|r| r.get_ref().as_str());
    let ls = layers(m, site_defaults, role, &h.tags);
    // A layered field is unknown (not missing) when the host's role or tags, or the field in one of its
    // layers, failed to read: that error is already reported.
    let broken = c.broken;
    let unsure = |field: &str| {
        broken.under(&format!("{p}.tags"))
            || broken.covers(&format!("{p}.role"))
            || ls
                .iter()
                .any(|(_, lp, _)| broken.covers(&format!("{lp}.{field}")))
    };
    let (unsure_os, unsure_arch, unsure_board) = (unsure("os"), unsure("arch"), unsure("board"));

    // Scalar from the highest layer that sets it (host last), with its location.
    macro_rules! pick {
        ($field:ident) => {{
            let mut v: Option<(FileId, &S<_>)> = None;
            for (lf, _, l) in &ls {
                if let Some(x) = &l.$field {
                    v = Some((*lf, x));
                }
            }
            if let Some(x) = &h.$field {
                v = Some((f, x));
            }
            v
        }};
    }
    let os = match pick!(os) {
        None if unsure_os => None,
        None => {
            c.err(
                "SPEC005",
                format!("{p}.os"),
                key_loc,
                "no `os` for this host (not set on the host, its role, tags or site.defaults)",
                format!("add os = one of {}", Os::ALL.join(", ")),
            );
            None
        }
        Some((lf, v)) => Os::parse(v.get_ref()).or_else(|| {
            c.err(
                "SPEC003",
                format!("{p}.os"),
                at(lf, v),
                format!("unknown os `{}`", v.get_ref()),
                format!("use one of: {}", Os::ALL.join(", ")),
            );
            None
        }),
    };
    let arch = match pick!(arch) {
        None if unsure_arch => None,
        None => {
            c.err(
                "SPEC005",
                format!("{p}.arch"),
                key_loc,
                "no `arch` for this host",
                format!("add arch = one of {}", Arch::ALL.join(", ")),
            );
            None
        }
        Some((lf, v)) => Arch::parse(v.get_ref()).or_else(|| {
            c.err(
                "SPEC003",
                format!("{p}.arch"),
                at(lf, v),
                format!("unknown arch `{}`", v.get_ref()),
                format!("use one of: {}", Arch::ALL.join(", ")),
            );
            None
        }),
    };
    let board_v = pick!(board);
    let board = match board_v {
        None if unsure_board => None,
        None => {
            c.err(
                "SPEC005",
                format!("{p}.board"),
                key_loc,
                "no `board` for this host",
                format!("add board = one of {}", Board::ALL.join(", ")),
            );
            None
        }
        Some((lf, v)) => Board::parse(v.get_ref()).or_else(|| {
            c.err(
                "SPEC003",
                format!("{p}.board"),
                at(lf, v),
                format!("unknown board `{}`", v.get_ref()),
                format!("use one of: {}", Board::ALL.join(", ")),
            );
            None
        }),
    };
    if let (Some(b), Some(a), Some((lf, v))) = (board, arch, board_v) {
        if let Some(req) = b.required_arch() {
            if req != a {
                c.err(
                    "SPEC021",
                    format!("{p}.board"),
                    at(lf, v),
                    format!(
                        "board `{}` is {} but the host's arch is {}",
                        b.as_str(),
                        req.as_str(),
                        a.as_str()
                    ),
                    format!("set arch = \"{}\"", req.as_str()),
                );
            }
        }
    }
    let role = match &h.role {
        Some(r) if is_ident(r.get_ref()) => r.get_ref().clone(),
        Some(r) => {
            c.err(
                "SPEC010",
                format!("{p}.role"),
                at(f, r),
                format!("`{}` is not a valid role name", r.get_ref()),
                "use lowercase letters, digits, '-' and '_'",
            );
            String::new()
        }
        None => {
            c.err(
                "SPEC005",
                format!("{p}.role"),
                key_loc,
                "no `role` for this host",
                "add role = \"compute\" (or storage, platform, …)",
            );
            String::new()
        }
    };
    let disposable = pick!(disposable)
        .map(|(_, v)| *v.get_ref())
        .unwrap_or(false);
    let state_version = pick!(state_version).map(|(_, v)| v.get_ref().clone());
    let image = pick!(image).map(|(_, v)| v.get_ref().clone());

    // Hardening: default → site → layers → host.
    let mut hardening = base_hardening.clone();
    let mut origins = base_origins.clone();
    for (lf, _, l) in &ls {
        if let Some(hh) = &l.hardening {
            apply_hardening(
                c,
                *lf,
                &mut hardening,
                hh.get_ref(),
                &format!("{p}.hardening"),
                &mut origins,
            );
        }
    }
    if let Some(hh) = &h.hardening {
        apply_hardening(
            c,
            f,
            &mut hardening,
            hh.get_ref(),
            &format!("{p}.hardening"),
            &mut origins,
        );
    }

    // Lists: union over the layers, then the host, in order.
    let mut packages: Vec<String> = Vec::new();
    let mut stacks: Vec<String> = Vec::new();
    let mut raw_mounts: Vec<(FileId, &S<raw::RawMount>)> = Vec::new();
    let list_sources = ls
        .iter()
        .map(|(lf, lp, l)| (*lf, lp.clone(), &l.packages, &l.stacks, &l.mounts))
        .chain(std::iter::once((
            f,
            p.clone(),
            &h.packages,
            &h.stacks,
            &h.mounts,
        )));
    for (lf, lp, pkgs, stks, mnts) in list_sources {
        for (i, pk) in pkgs.iter().enumerate() {
            if !is_package(pk.get_ref()) {
                c.err(
                    "SPEC003",
                    format!("{lp}.packages[{i}]"),
                    at(lf, pk),
                    format!("`{}` is not a package name", pk.get_ref()),
                    "use the distribution's package name",
                );
            } else if !packages.contains(pk.get_ref()) {
                packages.push(pk.get_ref().clone());
            }
        }
        for st in stks {
            if !stacks.contains(st.get_ref()) {
                stacks.push(st.get_ref().clone());
            }
        }
        raw_mounts.extend(mnts.iter().map(|x| (lf, x)));
    }

    // Admins: layer override, default all site admins.
    let site_admins: Vec<String> = m
        .site
        .as_ref()
        .map(|(_, s)| {
            s.get_ref()
                .admins
                .iter()
                .map(|a| a.get_ref().name.get_ref().clone())
                .collect()
        })
        .unwrap_or_default();
    let mut admins = site_admins.clone();
    let mut admins_src: Option<(FileId, &Vec<S<String>>)> = None;
    for (lf, _, l) in &ls {
        if let Some(a) = &l.admins {
            admins_src = Some((*lf, a));
        }
    }
    if let Some(a) = &h.admins {
        admins_src = Some((f, a));
    }
    if let Some((lf, list)) = admins_src {
        admins = Vec::new();
        for (i, a) in list.iter().enumerate() {
            if site_admins.contains(a.get_ref()) {
                admins.push(a.get_ref().clone());
            } else {
                dangling(
                    c,
                    format!("{p}.admins[{i}]"),
                    at(lf, a),
                    "admin",
                    a.get_ref(),
                    site_admins.iter(),
                );
            }
        }
    }

    // Interfaces.
    let mut interfaces = Vec::new();
    if m.broken.under(&format!("{p}.interfaces")) {
        c.unsure_interfaces.insert(name.to_string());
    }
    for (iname, iv) in &h.interfaces {
        let i = iv.get_ref();
        let ip = format!("{p}.interfaces.{}", iname.get_ref());
        if !is_ident(iname.get_ref()) || iname.get_ref().len() > 15 {
            c.err(
                "SPEC010",
                &ip,
                at(f, iname),
                format!("`{}` is not a valid interface name", iname.get_ref()),
                "use at most 15 lowercase letters, digits, '-' and '_'",
            );
        }
        let net = networks.get(i.network.get_ref());
        if net.is_none() {
            c.unsure_interfaces.insert(name.to_string());
            dangling(
                c,
                format!("{ip}.network"),
                at(f, &i.network),
                "network",
                i.network.get_ref(),
                networks.keys(),
            );
        }
        let mut address = None;
        if let Some(a) = &i.address {
            match IpAddr::from_str(a.get_ref()) {
                Err(_) => {
                    c.unsure_interfaces.insert(name.to_string());
                    c.err(
                        "SPEC011",
                        format!("{ip}.address"),
                        at(f, a),
                        format!("`{}` is not an IP address", a.get_ref()),
                        "write the bare address (the prefix comes from the network's CIDR)",
                    )
                }
                Ok(addr) => {
                    if let Some(n) = net {
                        if !n.cidr.contains(&addr) {
                            c.err(
                                "SPEC012",
                                format!("{ip}.address"),
                                at(f, a),
                                format!("{addr} is outside network `{}` ({})", n.name, n.cidr),
                                format!("pick an address inside {}", n.cidr),
                            );
                        } else if addr == n.cidr.network()
                            || (matches!(n.cidr, IpNet::V4(_)) && addr == n.cidr.broadcast())
                        {
                            c.err(
                                "SPEC012",
                                format!("{ip}.address"),
                                at(f, a),
                                format!("{addr} is the network or broadcast address of {}", n.cidr),
                                "pick a host address",
                            );
                        } else if Some(addr) == n.gateway {
                            c.err(
                                "SPEC013",
                                format!("{ip}.address"),
                                at(f, a),
                                format!("{addr} is the gateway of network `{}`", n.name),
                                "pick another address",
                            );
                        }
                    }
                    if let Some((owner, _)) = ip_owner.get(&addr) {
                        c.err(
                            "SPEC013",
                            format!("{ip}.address"),
                            at(f, a),
                            format!("{addr} is already used by {owner}"),
                            "give every interface its own address",
                        );
                    } else {
                        ip_owner.insert(addr, (format!("host {name}"), at(f, a)));
                    }
                    address = Some(addr);
                }
            }
        }
        let dhcp = i.dhcp.as_ref().map(|b| *b.get_ref()).unwrap_or(false);
        if i.address.is_some() && dhcp {
            c.err(
                "SPEC003",
                format!("{ip}.dhcp"),
                at(f, i.dhcp.as_ref().unwrap()),
                "an interface has either a static address or dhcp = true, not both",
                "remove one of them",
            );
        } else if i.address.is_none() && !dhcp {
            c.err(
                "SPEC005",
                format!("{ip}.address"),
                at(f, iname),
                "no address and no dhcp = true",
                "set address = \"…\" (static) or dhcp = true",
            );
        }
        if let Some(mac) = &i.mac {
            let mv = mac.get_ref().to_ascii_lowercase();
            if !is_mac(&mv) {
                c.err(
                    "SPEC018",
                    format!("{ip}.mac"),
                    at(f, mac),
                    format!("`{}` is not a MAC address", mac.get_ref()),
                    "write six hex pairs separated by ':', e.g. 52:54:00:12:34:56",
                );
            } else if let Some(owner) = mac_owner.get(&mv) {
                c.err(
                    "SPEC015",
                    format!("{ip}.mac"),
                    at(f, mac),
                    format!("MAC {mv} is already used by {owner}"),
                    "every NIC has its own MAC address",
                );
            } else {
                mac_owner.insert(mv, format!("{name}.{}", iname.get_ref()));
            }
        }
        if let Some(l) = &i.link {
            if i.mac.is_some() {
                c.err(
                    "SPEC003",
                    format!("{ip}.link"),
                    at(f, l),
                    "a VLAN interface (link = …) has no MAC of its own",
                    "remove `mac` from this interface",
                );
            }
            match h
                .interfaces
                .iter()
                .find(|(k, _)| k.get_ref() == l.get_ref())
            {
                None => dangling(
                    c,
                    format!("{ip}.link"),
                    at(f, l),
                    "interface",
                    l.get_ref(),
                    h.interfaces.keys().map(|k| k.get_ref()),
                ),
                Some((_, parent)) if parent.get_ref().link.is_some() => c.err(
                    "SPEC003",
                    format!("{ip}.link"),
                    at(f, l),
                    format!("`{}` is itself a VLAN interface", l.get_ref()),
                    "link VLANs to a physical interface",
                ),
                _ => {}
            }
        }
        if let Some(n) = net {
            interfaces.push(Interface {
                name: iname.get_ref().clone(),
                network: n.name.clone(),
                mac: i.mac.as_ref().map(|m| m.get_ref().to_ascii_lowercase()),
                address,
                prefix_len: n.cidr.prefix_len(),
                vlan: n.vlan,
                link: i.link.as_ref().map(|l| l.get_ref().clone()),
            });
        }
    }
    if h.interfaces.is_empty() {
        c.unsure_interfaces.insert(name.to_string());
        c.err(
            "SPEC005",
            format!("{p}.interfaces"),
            key_loc,
            "the host has no interfaces",
            "add [hosts.NAME.interfaces.NIC] with network and address",
        );
    }
    let mut nets_seen = BTreeSet::new();
    for i in &interfaces {
        if !nets_seen.insert(i.network.clone()) {
            c.err(
                "SPEC015",
                format!("{p}.interfaces.{}", i.name),
                key_loc,
                format!("two interfaces on network `{}`", i.network),
                "one interface per network",
            );
        }
    }

    // Disks.
    let mut disks = Vec::new();
    for (dn, dv) in &h.disks {
        let dk = dv.get_ref();
        let dp = format!("{p}.disks.{}", dn.get_ref());
        let purpose = match dk.purpose.get_ref().as_str() {
            "os" => Some(DiskPurpose::Os),
            "data" => Some(DiskPurpose::Data),
            "scratch" => Some(DiskPurpose::Scratch),
            other => {
                c.err(
                    "SPEC003",
                    format!("{dp}.purpose"),
                    at(f, &dk.purpose),
                    format!("unknown disk purpose `{other}`"),
                    "use os, data or scratch",
                );
                None
            }
        };
        if !is_abs_path(dk.device.get_ref()) || !dk.device.get_ref().starts_with("/dev/") {
            c.err(
                "SPEC019",
                format!("{dp}.device"),
                at(f, &dk.device),
                format!("`{}` is not a device path", dk.device.get_ref()),
                "use a stable path such as /dev/disk/by-id/…",
            );
        }
        if let Some(mp) = &dk.mountpoint {
            if !is_abs_path(mp.get_ref()) {
                c.err(
                    "SPEC019",
                    format!("{dp}.mountpoint"),
                    at(f, mp),
                    format!("`{}` is not an absolute path", mp.get_ref()),
                    "write an absolute, normalised path like /scratch",
                );
            }
        }
        let fs = dk
            .fs
            .as_ref()
            .map(|x| x.get_ref().clone())
            .unwrap_or_else(|| "ext4".into());
        if !["ext4", "xfs", "btrfs", "vfat"].contains(&fs.as_str()) {
            c.err(
                "SPEC003",
                format!("{dp}.fs"),
                dk.fs.as_ref().and_then(|x| at(f, x)),
                format!("unsupported filesystem `{fs}`"),
                "use ext4, xfs, btrfs or vfat",
            );
        }
        if let Some(purpose) = purpose {
            let disposable_default = purpose == DiskPurpose::Scratch;
            disks.push(Disk {
                name: dn.get_ref().clone(),
                device: dk.device.get_ref().clone(),
                purpose,
                disposable: dk
                    .disposable
                    .as_ref()
                    .map(|b| *b.get_ref())
                    .unwrap_or(disposable_default),
                mountpoint: dk.mountpoint.as_ref().map(|x| x.get_ref().clone()),
                fs,
            });
        }
    }

    // Mounts (server address resolved in seed_rules once all hosts exist).
    let mut mounts = Vec::new();
    let errors_before = c.diags.len();
    let storage_broken = std::iter::once(p.clone())
        .chain(ls.iter().map(|(_, lp, _)| lp.clone()))
        .any(|lp| m.broken.under(&format!("{lp}.mounts")))
        || m.broken.under(&format!("{p}.exports"))
        || m.broken.under(&format!("{p}.disks"))
        || m.broken.under(&format!("{p}.persistent_paths"));
    for (mi, (lf, mv)) in raw_mounts.iter().enumerate() {
        let mt = mv.get_ref();
        let mp = format!("{p}.mounts[{mi}]");
        let kind = match mt.kind.get_ref().as_str() {
            "nfs" => Some(MountKind::Nfs),
            "smb" | "cifs" => Some(MountKind::Smb),
            other => {
                c.err(
                    "SPEC003",
                    format!("{mp}.kind"),
                    at(*lf, &mt.kind),
                    format!("unknown mount kind `{other}`"),
                    "use nfs (preferred) or smb",
                );
                None
            }
        };
        for (fld, v) in [("export", &mt.export), ("at", &mt.at)] {
            let ok = if fld == "export" && kind == Some(MountKind::Smb) {
                !v.get_ref().is_empty()
            } else {
                is_abs_path(v.get_ref())
            };
            if !ok {
                c.err(
                    "SPEC019",
                    format!("{mp}.{fld}"),
                    at(*lf, v),
                    format!("`{}` is not an absolute path", v.get_ref()),
                    "write an absolute, normalised path",
                );
            }
        }
        for (oi, o) in mt.options.iter().enumerate() {
            let o = o.get_ref();
            if super::strings::forbidden_char(o).is_none() && !is_mount_option(o) {
                c.err(
                    "SPEC027",
                    format!("{mp}.options[{oi}]"),
                    at(*lf, &mt.options[oi]),
                    format!("`{}` is not one mount option", elide(o)),
                    "write one option per list item, e.g. options = [\"nfsvers=4.2\", \"noatime\"]: \
                     letters, digits and _ . = : / + @ - only, no spaces or commas",
                );
            }
        }
        if let Some(kind) = kind {
            mounts.push(Mount {
                kind,
                from: mt.from.get_ref().clone(),
                server: IpAddr::from([0, 0, 0, 0]),
                export: mt.export.get_ref().clone(),
                at: mt.at.get_ref().clone(),
                options: mt.options.iter().map(|o| o.get_ref().clone()).collect(),
                locs: (at(*lf, &mt.from), at(*lf, &mt.export)),
            });
        }
    }
    // A mount that failed validation (or a broken export, disk or path) leaves the host's storage
    // incomplete: checks that need all of it stay silent.
    if storage_broken || c.diags.len() > errors_before {
        c.unsure_storage.insert(name.to_string());
    }
    let mut persistent_paths = Vec::new();
    for (i, pp) in h.persistent_paths.iter().enumerate() {
        if !is_abs_path(pp.get_ref()) {
            c.err(
                "SPEC019",
                format!("{p}.persistent_paths[{i}]"),
                at(f, pp),
                format!("`{}` is not an absolute path", pp.get_ref()),
                "write an absolute, normalised path",
            );
        } else {
            persistent_paths.push(pp.get_ref().clone());
        }
    }

    // Virtualisation (layered, field-wise).
    let mut virt: Option<Virtualisation> = None;
    let virt_layers: Vec<(FileId, &S<raw::RawVirt>)> = ls
        .iter()
        .filter_map(|(lf, _, l)| l.virtualisation.as_ref().map(|v| (*lf, v)))
        .chain(h.virtualisation.as_ref().map(|v| (f, v)))
        .collect();
    if !virt_layers.is_empty() {
        let mut v = Virtualisation {
            hypervisor: "kvm".into(),
            cpu_mode: "host-passthrough".into(),
            cpu_overcommit: false,
            memory_overcommit: false,
        };
        for (lf, rv) in &virt_layers {
            let r = rv.get_ref();
            if let Some(x) = &r.hypervisor {
                if x.get_ref() != "kvm" {
                    c.err(
                        "SPEC003",
                        format!("{p}.virtualisation.hypervisor"),
                        at(*lf, x),
                        format!("unsupported hypervisor `{}`", x.get_ref()),
                        "use \"kvm\" (KVM/QEMU with libvirt)",
                    );
                }
                v.hypervisor = x.get_ref().clone();
            }
            if let Some(x) = &r.cpu_mode {
                if !["host-passthrough", "host-model", "custom"].contains(&x.get_ref().as_str()) {
                    c.err(
                        "SPEC003",
                        format!("{p}.virtualisation.cpu_mode"),
                        at(*lf, x),
                        format!("unknown libvirt CPU mode `{}`", x.get_ref()),
                        "use host-passthrough",
                    );
                } else if x.get_ref() != "host-passthrough" {
                    c.find(
                        "S000-VIRT-POLICY",
                        &[name],
                        format!("{p}.virtualisation.cpu_mode"),
                        at(*lf, x),
                        format!(
                            "CPU mode `{}`; the operator's policy is host-passthrough",
                            x.get_ref()
                        ),
                        "set cpu_mode = \"host-passthrough\"",
                    );
                }
                v.cpu_mode = x.get_ref().clone();
            }
            for (fld, val, dst) in [
                ("cpu_overcommit", &r.cpu_overcommit, &mut v.cpu_overcommit),
                (
                    "memory_overcommit",
                    &r.memory_overcommit,
                    &mut v.memory_overcommit,
                ),
            ] {
                if let Some(x) = val {
                    if *x.get_ref() {
                        c.find(
                            "S000-VIRT-POLICY",
                            &[name],
                            format!("{p}.virtualisation.{fld}"),
                            at(*lf, x),
                            format!("{fld} is enabled; the operator's policy disables it"),
                            format!("set {fld} = false"),
                        );
                    }
                    *dst = *x.get_ref();
                }
            }
        }
        virt = Some(v);
    }

    // Talos node settings.
    let talos = h.talos.as_ref().map(|t| {
        let t = t.get_ref();
        if !t.install_disk.get_ref().starts_with("/dev/") {
            c.err(
                "SPEC019",
                format!("{p}.talos.install_disk"),
                at(f, &t.install_disk),
                format!("`{}` is not a device path", t.install_disk.get_ref()),
                "use e.g. /dev/sda, /dev/nvme0n1 or /dev/mmcblk0",
            );
        }
        for (i, e) in t.extensions.iter().enumerate() {
            if !e.get_ref().starts_with("siderolabs/") {
                c.err(
                    "SPEC003",
                    format!("{p}.talos.extensions[{i}]"),
                    at(f, e),
                    format!(
                        "`{}` is not an official Talos system extension name",
                        e.get_ref()
                    ),
                    "use the Image Factory name, e.g. siderolabs/iscsi-tools",
                );
            }
        }
        TalosNode {
            install_disk: t.install_disk.get_ref().clone(),
            extensions: t.extensions.iter().map(|s| s.get_ref().clone()).collect(),
            patches: talos_patches(c, f, &t.patches, &format!("{p}.talos.patches")),
        }
    });
    if os == Some(Os::Talos) && talos.is_none() {
        c.err(
            "SPEC005",
            format!("{p}.talos"),
            key_loc,
            "a Talos host needs a [hosts.NAME.talos] table",
            "add [hosts.NAME.talos] with install_disk = \"/dev/…\"",
        );
    }
    if os.is_some() && os != Some(Os::Talos) && h.talos.is_some() {
        c.err(
            "SPEC003",
            format!("{p}.talos"),
            h.talos.as_ref().and_then(|t| at(f, t)),
            "a [talos] table on a host that does not run Talos",
            "remove it or set os = \"talos\"",
        );
    }
    if os == Some(Os::Talos) && !stacks.is_empty() {
        c.err(
            "SPEC003",
            format!("{p}.stacks"),
            key_loc,
            "Talos hosts run no Compose stacks",
            "deploy workloads to the Kubernetes cluster instead",
        );
    }

    // Exports.
    let mut exports = Vec::new();
    for (i, e) in h.exports.iter().enumerate() {
        let e = e.get_ref();
        if !is_abs_path(e.path.get_ref()) {
            c.unsure_storage.insert(name.to_string());
            c.err(
                "SPEC019",
                format!("{p}.exports[{i}].path"),
                at(f, &e.path),
                format!("`{}` is not an absolute path", e.path.get_ref()),
                "write an absolute, normalised path",
            );
        }
        for (j, n) in e.networks.iter().enumerate() {
            if !networks.contains_key(n.get_ref()) {
                dangling(
                    c,
                    format!("{p}.exports[{i}].networks[{j}]"),
                    at(f, n),
                    "network",
                    n.get_ref(),
                    networks.keys(),
                );
            }
        }
        exports.push(Export {
            path: e.path.get_ref().clone(),
            networks: e.networks.iter().map(|n| n.get_ref().clone()).collect(),
            read_only: e.read_only.as_ref().map(|b| *b.get_ref()).unwrap_or(false),
        });
    }

    // Exceptions are checked later against findings; validate their shape now.
    let mut exceptions = Vec::new();
    for (i, e) in h.exceptions.iter().enumerate() {
        let e = e.get_ref();
        let ep = format!("{p}.exceptions[{i}]");
        match super::rules::find(e.rule.get_ref()) {
            Some(r) if r.seed.is_some() => {}
            Some(_) => c.err(
                "SPEC022",
                format!("{ep}.rule"),
                at(f, &e.rule),
                format!(
                    "`{}` is a structural rule; only operator rules (Snnn-…) take exceptions",
                    e.rule.get_ref()
                ),
                "fix the spec instead",
            ),
            None => c.err(
                "SPEC022",
                format!("{ep}.rule"),
                at(f, &e.rule),
                format!("no rule `{}`", e.rule.get_ref()),
                "use a rule id from docs/rules.md, e.g. S000-SVC-BIND",
            ),
        }
        if e.reason.get_ref().trim().len() < 10 {
            c.err(
                "SPEC022",
                format!("{ep}.reason"),
                at(f, &e.reason),
                "an exception needs a real reason",
                "say why the operator allows this (at least a sentence)",
            );
        }
        exceptions.push(Exception {
            rule: e.rule.get_ref().clone(),
            subject: e.subject.get_ref().clone(),
            reason: e.reason.get_ref().clone(),
        });
    }

    Some(Host {
        name: name.to_string(),
        os: os?,
        arch: arch?,
        board: board?,
        role,
        tags: h.tags.iter().map(|t| t.get_ref().clone()).collect(),
        description: h.description.as_ref().map(|d| d.get_ref().clone()),
        disposable,
        interfaces,
        disks,
        mounts,
        persistent_paths,
        stacks,
        packages,
        virtualisation: virt,
        exceptions,
        hardening,
        hardening_origin: origins,
        admins,
        image,
        state_version,
        talos,
        cluster: None,
        exports,
        facts: Default::default(),
        loc: key_loc,
    })
}

fn stack(
    c: &mut Ctx,
    name: &str,
    d: &Def<raw::RawStack>,
    networks: &BTreeMap<String, Network>,
    secrets: &BTreeMap<String, SecretRef>,
    raw_hosts: &BTreeMap<String, Def<raw::RawHost>>,
) -> Option<Stack> {
    let f = d.file;
    let s = d.value.get_ref();
    let p = format!("stacks.{name}");
    if !is_ident(name) {
        c.err(
            "SPEC010",
            &p,
            at(f, &d.key),
            format!("`{name}` is not a valid stack name"),
            "use lowercase letters, digits, '-' and '_'",
        );
    }
    let mut dnets = BTreeMap::new();
    for (n, v) in &s.networks {
        if !is_ident(n.get_ref()) {
            c.err(
                "SPEC010",
                format!("{p}.networks.{}", n.get_ref()),
                at(f, n),
                format!("`{}` is not a valid Docker network name", n.get_ref()),
                "use lowercase letters, digits, '-' and '_'",
            );
        }
        let rv = v.get_ref();
        let external = rv
            .external
            .as_ref()
            .and_then(|e| match e.get_ref().split_once('/') {
                Some((a, b)) if !a.is_empty() && !b.is_empty() => {
                    Some((a.to_string(), b.to_string()))
                }
                _ => {
                    c.err(
                        "SPEC003",
                        format!("{p}.networks.{}.external", n.get_ref()),
                        at(f, e),
                        format!("`{}` is not STACK/NETWORK", e.get_ref()),
                        "name another stack's network, e.g. \"ingress/proxy\"",
                    );
                    None
                }
            });
        dnets.insert(
            n.get_ref().clone(),
            DockerNetwork {
                internal: rv.internal.as_ref().map(|b| *b.get_ref()).unwrap_or(false),
                external,
            },
        );
    }
    let volumes: Vec<String> = s.volumes.iter().map(|v| v.get_ref().clone()).collect();
    for (i, v) in s.volumes.iter().enumerate() {
        if !is_ident(v.get_ref()) {
            c.err(
                "SPEC010",
                format!("{p}.volumes[{i}]"),
                at(f, v),
                format!("`{}` is not a valid volume name", v.get_ref()),
                "use lowercase letters, digits, '-' and '_'",
            );
        }
    }
    let svc_names: Vec<&String> = s.services.keys().map(|k| k.get_ref()).collect();
    let mut services = BTreeMap::new();
    for (sn, sv) in &s.services {
        let sname = sn.get_ref();
        let r = sv.get_ref();
        let sp = format!("{p}.services.{sname}");
        if !is_ident(sname) {
            c.err(
                "SPEC010",
                &sp,
                at(f, sn),
                format!("`{sname}` is not a valid service name"),
                "use lowercase letters, digits, '-' and '_'",
            );
        }
        let image = match parse_image(r.image.get_ref()) {
            Ok(i) => i,
            Err(e) => {
                c.err(
                    "SPEC020",
                    format!("{sp}.image"),
                    at(f, &r.image),
                    e,
                    "write repository[:tag]@sha256:<digest>",
                );
                continue;
            }
        };
        for (i, pl) in r.platforms.iter().enumerate() {
            if !["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/arm/v6"]
                .contains(&pl.get_ref().as_str())
            {
                c.err(
                    "SPEC003",
                    format!("{sp}.platforms[{i}]"),
                    at(f, pl),
                    format!("unknown platform `{}`", pl.get_ref()),
                    "use linux/amd64, linux/arm64 or linux/arm/v7",
                );
            }
        }
        let mut ports = Vec::new();
        for (i, pv) in r.ports.iter().enumerate() {
            let pr = pv.get_ref();
            let pp = format!("{sp}.ports[{i}]");
            let host = port_of(c, f, &pr.host, &format!("{pp}.host"));
            let container = match &pr.container {
                Some(cv) => port_of(c, f, cv, &format!("{pp}.container")),
                None => host,
            };
            let protocol = match pr.protocol.as_ref().map(|x| x.get_ref().as_str()) {
                None | Some("tcp") => Some(Proto::Tcp),
                Some("udp") => Some(Proto::Udp),
                Some(other) => {
                    c.err(
                        "SPEC003",
                        format!("{pp}.protocol"),
                        at(f, pr.protocol.as_ref().unwrap()),
                        format!("unknown protocol `{other}`"),
                        "use tcp or udp",
                    );
                    None
                }
            };
            if !networks.contains_key(pr.network.get_ref()) {
                dangling(
                    c,
                    format!("{pp}.network"),
                    at(f, &pr.network),
                    "network",
                    pr.network.get_ref(),
                    networks.keys(),
                );
            }
            for (j, a) in pr.allow_from.iter().enumerate() {
                if !networks.contains_key(a.get_ref())
                    && !raw_hosts.contains_key(a.get_ref())
                    && !c.invalid.contains(&("network", a.get_ref().clone()))
                {
                    dangling(
                        c,
                        format!("{pp}.allow_from[{j}]"),
                        at(f, a),
                        "host or network",
                        a.get_ref(),
                        raw_hosts.keys().chain(networks.keys()),
                    );
                }
            }
            if let (Some(host), Some(container), Some(protocol)) = (host, container, protocol) {
                ports.push(Port {
                    host,
                    container,
                    protocol,
                    network: pr.network.get_ref().clone(),
                    allow_from: pr.allow_from.iter().map(|a| a.get_ref().clone()).collect(),
                });
            }
        }
        let mut expose = Vec::new();
        for (i, e) in r.expose.iter().enumerate() {
            if let Some(x) = port_of(c, f, e, &format!("{sp}.expose[{i}]")) {
                expose.push(x);
            }
        }
        let metrics = r.metrics.as_ref().and_then(|mv| {
            let mr = mv.get_ref();
            let port = port_of(c, f, &mr.port, &format!("{sp}.metrics.port"))?;
            let path = mr.path.as_ref().map(|x| x.get_ref().clone()).unwrap_or_else(|| "/metrics".into());
            if !path.starts_with('/') {
                c.err("SPEC003", format!("{sp}.metrics.path"), mr.path.as_ref().and_then(|x| at(f, x)), format!("`{path}` is not an HTTP path"), "start it with '/', e.g. /metrics");
            }
            if ports.iter().any(|pt| pt.container == port) {
                c.find("S001-METRICS-INTERNAL", &[], format!("{sp}.metrics"), at(f, mv), format!("metrics port {port} is published on the host"), format!("remove the published port for {port}; Prometheus scrapes it over the Docker network"));
            }
            Some(Metrics { port, path })
        });
        let mut snets = Vec::new();
        for (i, n) in r.networks.iter().enumerate() {
            if !dnets.contains_key(n.get_ref()) && !c.broken.under(&format!("{p}.networks")) {
                dangling(
                    c,
                    format!("{sp}.networks[{i}]"),
                    at(f, n),
                    "Docker network of this stack",
                    n.get_ref(),
                    dnets.keys(),
                );
            } else {
                snets.push(n.get_ref().clone());
            }
        }
        let mut vols = Vec::new();
        for (i, v) in r.volumes.iter().enumerate() {
            let vp = format!("{sp}.volumes[{i}]");
            let parts: Vec<&str> = v.get_ref().split(':').collect();
            let (src, target, ro) = match parts.as_slice() {
                [s, t] => (*s, *t, false),
                [s, t, "ro"] => (*s, *t, true),
                [s, t, "rw"] => (*s, *t, false),
                _ => {
                    c.err("SPEC003", &vp, at(f, v), format!("`{}` is not SOURCE:TARGET[:ro]", v.get_ref()), "write e.g. \"prometheus-data:/prometheus\" or \"/mnt/atlas/media:/media:ro\"");
                    continue;
                }
            };
            if !is_abs_path(target) {
                c.err(
                    "SPEC019",
                    &vp,
                    at(f, v),
                    format!("container path `{target}` is not absolute"),
                    "write an absolute container path",
                );
                continue;
            }
            if src.starts_with('/') {
                if !is_abs_path(src) {
                    c.err(
                        "SPEC019",
                        &vp,
                        at(f, v),
                        format!("host path `{src}` is not normalised"),
                        "write an absolute, normalised host path",
                    );
                    continue;
                }
                if src == "/var/run/docker.sock" || src == "/run/docker.sock" {
                    c.err(
                        "SPEC003",
                        &vp,
                        at(f, v),
                        "the Docker socket is mounted through `docker_socket = true`, not a volume",
                        "remove this volume and set docker_socket = true",
                    );
                    continue;
                }
                vols.push(VolumeMount::Bind {
                    source: src.into(),
                    target: target.into(),
                    read_only: ro,
                });
            } else if volumes.iter().any(|x| x == src) {
                vols.push(VolumeMount::Named {
                    name: src.into(),
                    target: target.into(),
                    read_only: ro,
                });
            } else if !c.broken.under(&format!("{p}.volumes")) {
                dangling(c, vp, at(f, v), "volume of this stack", src, volumes.iter());
            }
        }
        let mut environment = BTreeMap::new();
        for (k, v) in &r.environment {
            let key = k.get_ref();
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                c.err(
                    "SPEC010",
                    format!("{sp}.environment.{key}"),
                    at(f, k),
                    format!("`{key}` is not an environment variable name"),
                    "use letters, digits and '_'",
                );
            }
            let val = v.get_ref();
            if let Some(sname) = val.strip_prefix("secret:") {
                if !secrets.contains_key(sname) {
                    dangling(
                        c,
                        format!("{sp}.environment.{key}"),
                        at(f, v),
                        "secret",
                        sname,
                        secrets.keys(),
                    );
                }
                environment.insert(key.clone(), EnvValue::Secret(sname.to_string()));
            } else {
                if looks_secret_name(key) && !val.is_empty() {
                    c.find("S002-NO-SECRETS", &[], format!("{sp}.environment.{key}"), at(f, v), format!("`{key}` looks like a credential and has a literal value in the spec"), format!("declare [secrets.NAME] (source = \"store\" / \"env:VAR\") and write {key} = \"secret:NAME\""));
                }
                environment.insert(key.clone(), EnvValue::Literal(val.clone()));
            }
        }
        for (i, dep) in r.depends_on.iter().enumerate() {
            if !svc_names.contains(&dep.get_ref()) || dep.get_ref() == sname {
                dangling(
                    c,
                    format!("{sp}.depends_on[{i}]"),
                    at(f, dep),
                    "other service in this stack",
                    dep.get_ref(),
                    svc_names.iter().copied().filter(|n| *n != sname),
                );
            }
        }
        let restart = r
            .restart
            .as_ref()
            .map(|x| x.get_ref().clone())
            .unwrap_or_else(|| "unless-stopped".into());
        if !["no", "always", "unless-stopped", "on-failure"].contains(&restart.as_str()) {
            c.err(
                "SPEC003",
                format!("{sp}.restart"),
                r.restart.as_ref().and_then(|x| at(f, x)),
                format!("`{restart}` is not a restart policy"),
                "use no, always, unless-stopped or on-failure",
            );
        }
        services.insert(
            sname.clone(),
            Service {
                name: sname.clone(),
                image,
                platforms: r.platforms.iter().map(|x| x.get_ref().clone()).collect(),
                ports,
                expose,
                metrics,
                networks: snets,
                volumes: vols,
                environment,
                command: r.command.iter().map(|x| x.get_ref().clone()).collect(),
                depends_on: r.depends_on.iter().map(|x| x.get_ref().clone()).collect(),
                docker_socket: r
                    .docker_socket
                    .as_ref()
                    .map(|b| *b.get_ref())
                    .unwrap_or(false),
                gpu: r.gpu.as_ref().map(|b| *b.get_ref()).unwrap_or(false),
                restart,
                user: r.user.as_ref().map(|x| x.get_ref().clone()),
            },
        );
    }
    Some(Stack {
        name: name.to_string(),
        description: s.description.as_ref().map(|x| x.get_ref().clone()),
        networks: dnets,
        volumes,
        services,
        hosts: vec![],
        loc: at(f, &d.key),
    })
}

fn looks_secret_name(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    [
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "API_KEY",
        "APIKEY",
        "PRIVATE_KEY",
        "CREDENTIAL",
        "AUTH_KEY",
    ]
    .iter()
    .any(|w| k.contains(w))
}

/// Secret material anywhere in the spec text is an error, whatever key it sits under.
fn scan_secret_values(c: &mut Ctx, sources: &SourceMap) {
    const MARKERS: &[(&str, &str)] = &[
        ("PRIVATE KEY-----", "a PEM private key"),
        (concat!("AGE-SECRET", "-KEY-1"), "an age secret key"),
        ("ghp_", "a GitHub token"),
        ("glpat-", "a GitLab token"),
        ("xoxb-", "a Slack token"),
        ("AKIA", "an AWS access key id"),
    ];
    for (fid, f) in sources.files.iter().enumerate() {
        for (needle, what) in MARKERS {
            let mut from = 0;
            while let Some(i) = f.text[from..].find(needle) {
                let start = from + i;
                from = start + needle.len();
                // Short, common prefixes only count when followed by token-like characters.
                if needle.len() <= 5 {
                    let tail: String = f.text[from..].chars().take(16).collect();
                    if tail.len() < 16
                        || !tail
                            .chars()
                            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
                    {
                        continue;
                    }
                }
                c.find("S002-NO-SECRETS", &[], "", Some(Loc::new(fid, start..from)), format!("the spec contains {what}"), "remove it from the spec (and from git history); reference it with [secrets.NAME] instead");
                break;
            }
        }
    }
}

fn seed_rules(
    c: &mut Ctx,
    m: &Merged,
    networks: &BTreeMap<String, Network>,
    hosts: &BTreeMap<String, Host>,
    stacks: &BTreeMap<String, Stack>,
) {
    for (name, h) in hosts {
        let d = &m.hosts[name];
        let f = d.file;
        let rh = d.value.get_ref();
        let p = format!("hosts.{name}");
        let key_loc = at(f, &d.key);
        let iface_loc = |iname: &str| {
            rh.interfaces
                .iter()
                .find(|(k, _)| k.get_ref() == iname)
                .map(|(k, _)| Loc::new(f, k.span()))
        };
        let role_of = |n: &str| networks.get(n).map(|n| n.role);

        // S000-NO-USER-VLAN
        for i in &h.interfaces {
            if matches!(role_of(&i.network), Some(NetRole::User | NetRole::Guest)) {
                c.find("S000-NO-USER-VLAN", &[name], format!("{p}.interfaces.{}", i.name), iface_loc(&i.name), format!("interface `{}` is on the {} network `{}`", i.name, role_of(&i.network).unwrap().as_str(), i.network), "managed hosts have no USER or GUEST access; move the interface to servers or management");
            }
        }
        if h.os.has_ssh() {
            let hd = &h.hardening;
            // Report a hardening value where it was set (once, when set on the site or a shared layer).
            let origin = |field: &str| -> (String, Option<Loc>) {
                h.hardening_origin
                    .get(field)
                    .cloned()
                    .unwrap_or_else(|| (format!("{p}.hardening.{field}"), key_loc))
            };
            // S000-SSH-MGMT
            let mgmt = h
                .interfaces
                .iter()
                .find(|i| role_of(&i.network) == Some(NetRole::Management) && i.address.is_some());
            if mgmt.is_none() && !c.unsure_interfaces.contains(name) {
                c.find("S000-SSH-MGMT", &[name], format!("{p}.interfaces"), key_loc, "no interface with a static address on a management network", "add an interface on the MGMT network with a static address: SSH listens only there");
            }
            for sn in &hd.ssh_networks {
                match role_of(sn) {
                    None => dangling(
                        c,
                        format!("{p}.hardening.ssh_networks"),
                        key_loc,
                        "network",
                        sn,
                        networks.keys(),
                    ),
                    Some(NetRole::Management) => {
                        if h.address_on(sn).is_none() {
                            c.err("SPEC016", format!("{p}.hardening.ssh_networks"), key_loc, format!("SSH should listen on `{sn}` but the host has no static address there"), format!("add an interface on `{sn}` or drop it from ssh_networks"));
                        }
                    }
                    Some(r) => c.find(
                        "S000-SSH-MGMT",
                        &[name],
                        origin("ssh_networks").0,
                        origin("ssh_networks").1,
                        format!("SSH would listen on `{sn}`, a {} network", r.as_str()),
                        "list only management networks in ssh_networks",
                    ),
                }
            }
            // S000-ROOT-LOGIN
            if hd.permit_root_login != "no" {
                let (op, ol) = origin("permit_root_login");
                c.find(
                    "S000-ROOT-LOGIN",
                    &[name],
                    op,
                    ol,
                    format!("PermitRootLogin is `{}`", hd.permit_root_login),
                    "set permit_root_login = \"no\"; administer through the non-root admin",
                );
            }
            // (Not when the site's admins failed to read: that error is already reported.)
            let admins_known = !c.broken.covers("site.admins") && !c.broken.under("site.admins");
            if h.admins.is_empty() && admins_known {
                c.find(
                    "S000-ROOT-LOGIN",
                    &[name],
                    format!("{p}.admins"),
                    key_loc,
                    "the host has no admin user",
                    "list at least one site admin with an SSH key",
                );
            }
            // S000-KEY-AUTH
            for (flag, val, want) in [
                ("password_authentication", hd.password_authentication, false),
                (
                    "kbd_interactive_authentication",
                    hd.kbd_interactive_authentication,
                    false,
                ),
                ("pubkey_authentication", hd.pubkey_authentication, true),
            ] {
                if val != want {
                    let (op, ol) = origin(flag);
                    c.find(
                        "S000-KEY-AUTH",
                        &[name],
                        op,
                        ol,
                        format!("{flag} = {val}"),
                        format!("set {flag} = {want}: SSH keys are the only way in"),
                    );
                }
            }
            // S002-FIREWALL
            if hd.firewall_default != "drop" {
                let (op, ol) = origin("firewall_default");
                c.find(
                    "S002-FIREWALL",
                    &[name],
                    op,
                    ol,
                    format!("firewall default policy is `{}`", hd.firewall_default),
                    "set firewall_default = \"drop\"",
                );
            }
        }

        // Mounts: storage host exists, exports the path, shares a network.
        for (mi, mt) in h.mounts.iter().enumerate() {
            let mp = format!("{p}.mounts[{mi}]");
            let loc = mt.locs.0.or(key_loc);
            let export_loc = mt.locs.1.or(key_loc);
            match hosts.get(&mt.from) {
                None => {
                    if !m.hosts.contains_key(&mt.from) {
                        dangling(
                            c,
                            format!("{mp}.from"),
                            loc,
                            "host",
                            &mt.from,
                            m.hosts.keys(),
                        );
                    }
                }
                Some(srv) => {
                    if mt.kind == MountKind::Nfs
                        && !srv.exports.iter().any(|e| e.path == mt.export)
                        && !c.unsure_storage.contains(&mt.from)
                    {
                        c.err(
                            "SPEC016",
                            format!("{mp}.export"),
                            export_loc,
                            format!("host `{}` exports no `{}`", mt.from, mt.export),
                            format!("add it to hosts.{}.exports or fix the path", mt.from),
                        );
                    }
                    let shared = srv
                        .interfaces
                        .iter()
                        .filter(|si| {
                            si.address.is_some()
                                && h.interfaces.iter().any(|hi| hi.network == si.network)
                        })
                        .min_by_key(|si| match role_of(&si.network) {
                            Some(NetRole::Storage) => 0,
                            Some(NetRole::Servers) => 1,
                            _ => 2,
                        });
                    if shared.is_none() {
                        c.err(
                            "SPEC016",
                            format!("{mp}.from"),
                            loc,
                            format!("`{name}` and `{}` share no network", mt.from),
                            "put both hosts on the storage or servers network",
                        );
                    }
                }
            }
        }

        // S000-DISPOSABLE (silent when the host's storage is incomplete: an error already names it)
        if h.disposable && !c.unsure_storage.contains(name) {
            let safe_roots: Vec<&str> = h
                .mounts
                .iter()
                .map(|m| m.at.as_str())
                .chain(
                    h.disks
                        .iter()
                        .filter(|d| d.disposable)
                        .filter_map(|d| d.mountpoint.as_deref()),
                )
                .collect();
            for (i, pp) in h.persistent_paths.iter().enumerate() {
                if !safe_roots.iter().any(|r| path_under(pp, r)) {
                    let loc = rh.persistent_paths.get(i).map(|x| Loc::new(f, x.span()));
                    c.find("S000-DISPOSABLE", &[name], format!("{p}.persistent_paths[{i}]"), loc, format!("`{pp}` would be lost on rebuild: it is on no remote mount or disposable disk"), "move it under a remote mount from the storage host (NFS), or drop it");
                }
            }
            for dk in &h.disks {
                if dk.purpose == DiskPurpose::Data && !dk.disposable {
                    let loc = rh
                        .disks
                        .iter()
                        .find(|(k, _)| k.get_ref() == &dk.name)
                        .map(|(k, _)| Loc::new(f, k.span()));
                    c.find("S000-DISPOSABLE", &[name], format!("{p}.disks.{}", dk.name), loc, format!("disposable host keeps a persistent data disk `{}`", dk.name), "keep data on the storage host; mark the disk disposable = true or purpose = \"scratch\"");
                }
            }
            for sn in &h.stacks {
                let Some(st) = stacks.get(sn) else { continue };
                for svc in st.services.values() {
                    for v in &svc.volumes {
                        let (what, src) = match v {
                            VolumeMount::Named { name, .. } => ("named volume", name.as_str()),
                            VolumeMount::Bind { source, .. } => ("bind mount", source.as_str()),
                        };
                        let ok = matches!(v, VolumeMount::Bind { .. })
                            && safe_roots.iter().any(|r| path_under(src, r));
                        if !ok {
                            let sd = &m.stacks[sn];
                            c.find("S000-DISPOSABLE", &[name], format!("stacks.{sn}.services.{}.volumes", svc.name), at(sd.file, &sd.key), format!("{what} `{src}` of stack `{sn}` would live on disposable host `{name}`'s own disk"), "bind-mount a path under one of the host's remote mounts instead");
                        }
                    }
                }
            }
        }
    }

    // Stacks per host: external networks, bind networks, port conflicts, pinning.
    for (sn, st) in stacks {
        let sd = &m.stacks[sn];
        let f = sd.file;
        let rs = sd.value.get_ref();
        for (nn, dn) in &st.networks {
            let Some((os, on)) = &dn.external else {
                continue;
            };
            let loc = rs
                .networks
                .iter()
                .find(|(k, _)| k.get_ref() == nn)
                .and_then(|(_, v)| v.get_ref().external.as_ref())
                .map(|e| Loc::new(f, e.span()));
            let np = format!("stacks.{sn}.networks.{nn}.external");
            match stacks.get(os) {
                None => dangling(c, np, loc, "stack", os, stacks.keys()),
                Some(other) => {
                    if other.networks.get(on).is_none_or(|x| x.external.is_some()) {
                        c.err(
                            "SPEC016",
                            np,
                            loc,
                            format!("stack `{os}` defines no network `{on}`"),
                            format!("define [stacks.{os}.networks.{on}]"),
                        );
                    } else if let Some(hn) = st.hosts.iter().find(|h| !other.hosts.contains(h)) {
                        c.err(
                            "SPEC016",
                            np,
                            loc,
                            format!(
                                "host `{hn}` runs `{sn}` but not `{os}`, whose network it joins"
                            ),
                            format!("run both stacks on `{hn}`"),
                        );
                    }
                }
            }
        }
        for (svn, svc) in &st.services {
            let rsv = rs
                .services
                .iter()
                .find(|(k, _)| k.get_ref() == svn)
                .map(|(_, v)| v.get_ref());
            let sp = format!("stacks.{sn}.services.{svn}");
            let hosts_of: Vec<&str> = st.hosts.iter().map(|s| s.as_str()).collect();
            for (i, pt) in svc.ports.iter().enumerate() {
                let loc = rsv
                    .and_then(|r| r.ports.get(i))
                    .map(|x| Loc::new(f, x.span()));
                match networks.get(&pt.network).map(|n| n.role) {
                    Some(NetRole::Servers) | None => {}
                    Some(r) => c.find(
                        "S000-SVC-BIND",
                        &hosts_of,
                        format!("{sp}.ports[{i}]"),
                        loc,
                        format!(
                            "port {} binds to `{}`, a {} network",
                            pt.host,
                            pt.network,
                            r.as_str()
                        ),
                        "bind service ports only to a servers network",
                    ),
                }
                // A port on a USER/GUEST network is refused above; where it would bind is moot.
                let refused = matches!(
                    networks.get(&pt.network).map(|n| n.role),
                    Some(NetRole::User | NetRole::Guest)
                );
                for hn in &st.hosts {
                    if let Some(h) = hosts.get(hn) {
                        if h.address_on(&pt.network).is_none()
                            && networks.contains_key(&pt.network)
                            && !refused
                            && !c.unsure_interfaces.contains(hn)
                        {
                            c.err(
                                "SPEC016",
                                format!("{sp}.ports[{i}].network"),
                                loc,
                                format!(
                                    "host `{hn}` runs this stack but has no static address on `{}`",
                                    pt.network
                                ),
                                format!("add an interface on `{}` to hosts.{hn}", pt.network),
                            );
                        }
                    }
                }
            }
            let img_loc = rsv.map(|r| Loc::new(f, r.image.span()));
            if svc.image.digest.is_none() {
                c.find(
                    "S001-IMAGE-PINNED",
                    &hosts_of,
                    format!("{sp}.image"),
                    img_loc,
                    format!("image `{}` is not pinned by digest", svc.image),
                    "append @sha256:<digest> of the (multi-arch) image index",
                );
            }
            for hn in &st.hosts {
                if let Some(h) = hosts.get(hn) {
                    if !svc.platforms.iter().any(|p| p == h.arch.oci_platform()) {
                        c.find(
                            "S001-IMAGE-PINNED",
                            &[hn],
                            format!("{sp}.platforms"),
                            img_loc,
                            format!(
                                "`{hn}` is {} but the service lists no {} image",
                                h.arch.as_str(),
                                h.arch.oci_platform()
                            ),
                            format!(
                                "use a multi-arch image and add \"{}\" to platforms",
                                h.arch.oci_platform()
                            ),
                        );
                    }
                }
            }
        }
    }
    // One finding per conflicting port, naming every host where it conflicts.
    type Conflict = (Option<Loc>, Vec<(String, String)>);
    let mut conflicts: BTreeMap<(String, Proto, u16), Conflict> = BTreeMap::new();
    for (hn, h) in hosts {
        let mut claimed: BTreeMap<(IpAddr, Proto, u16), String> = BTreeMap::new();
        if h.os.has_ssh() {
            if let Some(a) = h.management_address_in(networks) {
                claimed.insert((a, Proto::Tcp, h.hardening.ssh_port), "sshd".into());
            }
        }
        for sn in &h.stacks {
            let Some(st) = stacks.get(sn) else { continue };
            let sd = &m.stacks[sn];
            for (svn, svc) in &st.services {
                let rsv = sd
                    .value
                    .get_ref()
                    .services
                    .iter()
                    .find(|(k, _)| k.get_ref() == svn)
                    .map(|(_, v)| v.get_ref());
                for (i, pt) in svc.ports.iter().enumerate() {
                    let Some(addr) = h.address_on(&pt.network) else {
                        continue;
                    };
                    let who = format!("{sn}/{svn}");
                    if let Some(prev) = claimed.get(&(addr, pt.protocol, pt.host)) {
                        let loc = rsv
                            .and_then(|r| r.ports.get(i))
                            .map(|x| Loc::new(sd.file, x.span()));
                        conflicts
                            .entry((
                                format!("stacks.{sn}.services.{svn}.ports[{i}]"),
                                pt.protocol,
                                pt.host,
                            ))
                            .or_insert((loc, Vec::new()))
                            .1
                            .push((hn.clone(), format!("{addr}:{} on `{hn}` ({prev})", pt.host)));
                    } else {
                        claimed.insert((addr, pt.protocol, pt.host), who);
                    }
                }
            }
        }
    }
    for ((subject, proto, port), (loc, at_hosts)) in conflicts {
        let hs: Vec<&str> = at_hosts.iter().map(|(h, _)| h.as_str()).collect();
        let taken: Vec<&str> = at_hosts.iter().map(|(_, t)| t.as_str()).collect();
        c.find(
            "S001-PORT-CONFLICT",
            &hs,
            subject,
            loc,
            format!(
                "{}/{port} is already claimed at {}",
                proto.as_str(),
                taken.join(", ")
            ),
            "pick another host port",
        );
    }
}

impl Host {
    fn management_address_in(&self, networks: &BTreeMap<String, Network>) -> Option<IpAddr> {
        self.interfaces
            .iter()
            .find(|i| networks.get(&i.network).map(|n| n.role) == Some(NetRole::Management))
            .and_then(|i| i.address)
    }
}

fn apply_exceptions(
    c: &mut Ctx,
    m: &Merged,
    hosts: &BTreeMap<String, Host>,
    stacks: &BTreeMap<String, Stack>,
) {
    let mut used: BTreeSet<(String, usize)> = BTreeSet::new();
    let findings = std::mem::take(&mut c.findings);
    for mut fd in findings {
        // A finding about a stack may be excepted by any host that runs the stack.
        if fd.hosts.is_empty() {
            if let Some(st) = fd
                .subject
                .strip_prefix("stacks.")
                .and_then(|r| r.split('.').next())
                .and_then(|n| stacks.get(n))
            {
                fd.hosts = st.hosts.clone();
            }
        }
        let mut allowed = None;
        for hn in &fd.hosts {
            if let Some(h) = hosts.get(hn) {
                if let Some((i, e)) = h
                    .exceptions
                    .iter()
                    .enumerate()
                    .find(|(_, e)| e.rule == fd.rule && e.subject == fd.subject)
                {
                    used.insert((hn.clone(), i));
                    allowed = Some((hn.clone(), e.reason.clone()));
                    break;
                }
            }
        }
        match allowed {
            Some((hn, reason)) => c.warn(
                fd.rule,
                fd.subject,
                fd.loc,
                format!(
                    "{} — allowed by an exception on `{hn}`: {reason}",
                    fd.message
                ),
                "documented exception; review it when the reason no longer holds",
            ),
            None => c.err(fd.rule, fd.subject, fd.loc, fd.message, fd.help),
        }
    }
    for (hn, h) in hosts {
        let d = &m.hosts[hn];
        for (i, e) in h.exceptions.iter().enumerate() {
            if !used.contains(&(hn.clone(), i)) && super::rules::find(&e.rule).is_some() {
                let loc = d
                    .value
                    .get_ref()
                    .exceptions
                    .get(i)
                    .map(|x| Loc::new(d.file, x.span()));
                c.warn(
                    "SPEC022",
                    format!("hosts.{hn}.exceptions[{i}]"),
                    loc,
                    format!(
                        "exception for {} on `{}` matches no finding",
                        e.rule, e.subject
                    ),
                    "remove the stale exception, or fix its subject to the path the finding names",
                );
            }
        }
    }
}

/// Each mount's server address: the storage host's address on a network both hosts share, preferring a
/// storage-role network, then servers, then any other.
fn resolve_mount_servers(hosts: &mut BTreeMap<String, Host>, networks: &BTreeMap<String, Network>) {
    let rank = |n: &str| match networks.get(n).map(|n| n.role) {
        Some(NetRole::Storage) => 0,
        Some(NetRole::Servers) => 1,
        _ => 2,
    };
    let addrs: BTreeMap<String, Vec<(String, IpAddr)>> = hosts
        .iter()
        .map(|(n, h)| {
            (
                n.clone(),
                h.interfaces
                    .iter()
                    .filter_map(|i| i.address.map(|a| (i.network.clone(), a)))
                    .collect(),
            )
        })
        .collect();
    for h in hosts.values_mut() {
        let mine: BTreeSet<String> = h.interfaces.iter().map(|i| i.network.clone()).collect();
        for mt in &mut h.mounts {
            if let Some(best) = addrs.get(&mt.from).and_then(|v| {
                v.iter()
                    .filter(|(n, _)| mine.contains(n))
                    .min_by_key(|(n, _)| rank(n))
            }) {
                mt.server = best.1;
            }
        }
    }
}

/// Fields of the `v1alpha1` document that carry cluster secrets or identity: labforge owns them, a patch may not.
const TALOS_OWNED: &[&str] = &[
    "version",
    "machine.type",
    "machine.token",
    "machine.ca",
    "machine.acceptedCAs",
    "cluster.id",
    "cluster.secret",
    "cluster.token",
    "cluster.secretboxEncryptionSecret",
    "cluster.aescbcEncryptionSecret",
    "cluster.ca",
    "cluster.acceptedCAs",
    "cluster.aggregatorCA",
    "cluster.serviceAccount",
    "cluster.etcd.ca",
    "cluster.controlPlane.endpoint",
    "cluster.clusterName",
    "machine.network",
];

fn talos_patches(
    c: &mut Ctx,
    f: FileId,
    patches: &[S<toml::Table>],
    path: &str,
) -> Vec<serde_json::Value> {
    fn owned(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        if let serde_json::Value::Object(m) = v {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if TALOS_OWNED.contains(&p.as_str()) {
                    out.push(p);
                } else {
                    owned(&p, x, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    for (i, p) in patches.iter().enumerate() {
        let v = match serde_json::to_value(p.get_ref()) {
            Ok(v) => v,
            Err(e) => {
                c.err(
                    "SPEC003",
                    format!("{path}[{i}]"),
                    at(f, p),
                    format!("the patch cannot be converted: {e}"),
                    "use plain tables, arrays, strings, numbers and booleans (no dates)",
                );
                continue;
            }
        };
        let mut bad = false;
        for k in p.get_ref().keys() {
            if !["machine", "cluster", "debug"].contains(&k.as_str()) {
                bad = true;
                c.err("SPEC003", format!("{path}[{i}].{k}"), at(f, p), format!("`{k}` is not a section of the Talos v1alpha1 config"), "patches start at `machine`, `cluster` or `debug` (network settings belong in the spec's interfaces)");
            }
        }
        let mut hit = Vec::new();
        owned("", &v, &mut hit);
        for h in hit {
            bad = true;
            c.err(
                "SPEC003",
                format!("{path}[{i}].{h}"),
                at(f, p),
                format!("`{h}` is set by labforge (cluster identity, secrets or network)"),
                "remove it from the patch; secrets live in the store, addresses in the spec",
            );
        }
        if !bad {
            out.push(v);
        }
    }
    out
}
