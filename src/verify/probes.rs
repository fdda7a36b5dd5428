//! What a check runs ([`Probe`]) and how it is judged ([`Pass`]): the data of the check catalog.

use serde::Serialize;

/// What to run. Remote probes run as root on the host (`sudo -n` when labforge logs in as the admin);
/// `tool` is checked with `command -v` first so a missing tool is an error, never a silent pass.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Probe {
    Remote {
        key: String,
        tool: String,
        command: String,
    },
    /// The server's KEXINIT, read from the raw TCP stream (no login).
    Kexinit { address: String, port: u16 },
    /// `none` auth → offered methods; a wrong password must be refused.
    Auth {
        address: String,
        port: u16,
        user: String,
    },
    /// The key the server presented matched labforge's known_hosts (from the secrets store).
    HostKeyPinned { address: String, port: u16 },
    /// A TCP connect from the controller.
    Tcp { address: String, port: u16 },
    /// Whether the remote probes' output was accepted (framing, nonce, host-key signature).
    Integrity,
    /// Every account sshd would admit, from every address that matters (phase 1 + phase 2 probes).
    Accounts { ctx: Box<super::accounts::Ctx> },
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Pass {
    /// `sshd -T` keyword equals one of the values.
    SshdEquals {
        keyword: String,
        any_of: Vec<String>,
    },
    /// `sshd -T` keyword is a number ≤ max.
    SshdAtMost {
        keyword: String,
        max: u64,
    },
    /// `sshd -T` comma list is a non-empty subset of `allowed`.
    SshdSubset {
        keyword: String,
        allowed: Vec<String>,
    },
    /// Every `sshd -T listenaddress` is one of these addresses.
    SshdListenOn {
        addresses: Vec<String>,
    },
    /// Offered auth methods are exactly `publickey`.
    OnlyPublickey,
    PasswordRefused,
    /// A KEXINIT list (kex, host_key, ciphers, macs) is a subset of `allowed`.
    WireSubset {
        list: String,
        allowed: Vec<String>,
    },
    /// KEXINIT kex list and labforge's client share `must_share`.
    WireShares {
        must_share: String,
    },
    WireHasStrictKex,
    Pinned,
    /// Served host keys are of allowed algorithms; RSA at least `min_rsa_bits`.
    HostKeyTypes {
        algorithms: Vec<String>,
        min_rsa_bits: u32,
    },
    /// Listeners on `port` are only on these addresses.
    ListenPortOnly {
        port: u16,
        addresses: Vec<String>,
    },
    /// Every listener is on one of these addresses (or loopback); no wildcard.
    ListenAddressesAllowed {
        addresses: Vec<String>,
    },
    ListenNoWildcard,
    PortsNotListening {
        ports: Vec<u16>,
    },
    NftTable {
        family: String,
        name: String,
    },
    NftInputPolicyDrop,
    /// Every input-hook rule that accepts tcp `port` is restricted to the management interface/address/net.
    NftSshOnlyMgmt {
        port: u16,
        interface: Option<String>,
        address: String,
        cidr: String,
    },
    DockerNoTcpSocket,
    DockerSocketMode,
    /// No container mounts the Docker socket, except services that declare `docker_socket = true`.
    DockerNoSocketMounts {
        allowed_services: Vec<String>,
    },
    DockerPublishedOn {
        addresses: Vec<String>,
    },
    DockerMetricsUnpublished {
        ports: Vec<u16>,
    },
    DockerImagesByDigest,
    AccountExists {
        user: String,
    },
    RootLocked,
    SingleUid0,
    AuthorizedKeys {
        keys: Vec<String>,
    },
    NoPackagesMatching {
        prefixes: Vec<String>,
    },
    /// Each persistent path is on a network filesystem.
    PathsRemote {
        paths: Vec<String>,
    },
    TcpClosed,
    /// The port answers the controller (an allowed flow of the exposure policy: replies pass).
    TcpOpen,
    /// The remote output parsed exactly and its signature verified.
    Authentic,
    /// Every listed `sshd -T` keyword has one of its accepted values.
    SshdAll {
        want: Vec<(String, Vec<String>)>,
    },
    /// The host key algorithms a client is offered are the spec's; a wider configured list that no host
    /// key backs is a warning.
    SshdHostKeyAlgorithms {
        allowed: Vec<String>,
    },
    /// sshd admits exactly the spec's admins (AllowUsers/AllowGroups/DenyUsers/DenyGroups, PermitRootLogin).
    AdmitsExactly,
    /// The rows of `scope` have the hardened values of `group`.
    AccountRows {
        scope: super::accounts::Scope,
        group: super::accounts::Group,
    },
    /// Every key file sshd would read for an admitted account holds exactly that admin's spec keys.
    KeyFiles,
}
