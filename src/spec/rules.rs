//! The rule catalog. Ids are stable API: they appear in messages, `--json`, exceptions and docs/rules.md.
//!
//! `SPECnnn` are structural rules of the spec format. `Snnn-…` rules come from the operator's documents
//! (`../shared/seeds/nnn_*.txt`): the MUST / locked decisions labforge enforces.

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Rule {
    pub id: &'static str,
    /// The operator document the rule comes from, if any.
    pub seed: Option<&'static str>,
    pub title: &'static str,
}

macro_rules! rules {
    ($($id:literal, $seed:expr, $title:literal;)*) => {
        pub const RULES: &[Rule] = &[$(Rule { id: $id, seed: $seed, title: $title }),*];
    };
}

rules! {
    "SPEC001", None, "TOML syntax error";
    "SPEC002", None, "unknown key";
    "SPEC003", None, "wrong type or invalid value";
    "SPEC004", None, "defined twice (across spec files)";
    "SPEC005", None, "required field missing";
    "SPEC010", None, "invalid name (hostname, user, stack, network)";
    "SPEC011", None, "invalid CIDR, address or gateway";
    "SPEC012", None, "address outside its network";
    "SPEC013", None, "duplicate IP address";
    "SPEC014", None, "duplicate hostname";
    "SPEC015", None, "duplicate VLAN id, MAC address or overlapping networks";
    "SPEC016", None, "reference to something that is not defined";
    "SPEC017", None, "invalid SSH public key";
    "SPEC018", None, "invalid MAC address";
    "SPEC019", None, "invalid path (must be absolute, normalised)";
    "SPEC020", None, "invalid container image reference";
    "SPEC021", None, "board and architecture do not match";
    "SPEC022", None, "invalid or unused exception";
    "SPEC023", None, "invalid port number";
    "SPEC024", None, "invalid secret reference";
    "SPEC025", None, "unused definition";
    "SPEC026", None, "control character in a spec string";
    "SPEC027", None, "invalid mount option";
    "SPEC030", None, "SSH algorithm lists labforge's own SSH client cannot connect with (lock-out guard)";
    "SPEC031", None, "dependency cycle between hosts or stacks";
    "SPEC032", None, "Pi-hole on a Docker bridge that answers only its own subnet";
    "SPEC033", None, "a first boot that could not resolve names";
    "S000-SSH-MGMT", Some("000"), "SSH only on the management network";
    "S000-ROOT-LOGIN", Some("000"), "root login disabled, non-root admin with a key required";
    "S000-KEY-AUTH", Some("000"), "SSH key authentication only";
    "S000-SVC-BIND", Some("000"), "services bind only to servers networks, never user/guest";
    "S000-NO-USER-VLAN", Some("000"), "no interface on user or guest networks for managed hosts";
    "S000-DISPOSABLE", Some("000"), "disposable nodes keep persistent data only on remote mounts or disposable disks";
    "S000-VIRT-POLICY", Some("000"), "virtualisation: host-passthrough CPU, no CPU or memory overcommit";
    "S001-METRICS-INTERNAL", Some("001"), "metrics ports internal-only, never published on the host";
    "S001-PORT-CONFLICT", Some("001"), "no two services claim the same host port";
    "S001-IMAGE-PINNED", Some("001"), "images pinned by digest, multi-arch for aarch64 hosts";
    "S001-GATE", Some("001"), "operator-validated gates are declared, never automated";
    "S002-NO-SECRETS", Some("002"), "no secret value in the spec, only references";
    "S002-FIREWALL", Some("002"), "firewall default-drop on every managed host";
    "S003-TALOS-HA", Some("003"), "a Talos cluster has at least 3 control-plane nodes and a VIP";
}

pub fn find(id: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.id == id)
}
