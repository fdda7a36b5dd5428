//! Talos cluster secrets: generated once per cluster, kept in the age store as `talos/<cluster>`.
//!
//! The stored form is the YAML of `talosctl gen secrets` (field names and encodings as Talos'
//! `secrets.Bundle`: PEM blocks base64-encoded), so an operator can also feed it to
//! `talosctl gen config --with-secrets`. Key types follow Talos' generator (pkg/machinery/config/generate/secrets):
//! Ed25519 for the Talos API (OS) CA, ECDSA P-256 for the etcd, Kubernetes and aggregator CAs, RSA-4096 for
//! the service-account key (Talos ≥ 1.7), 10-year CA validity. PEM labels match Talos' crypto library:
//! `EC PRIVATE KEY` (SEC1), `ED25519 PRIVATE KEY` (PKCS#8 v1 body), `RSA PRIVATE KEY` (PKCS#1).

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine;
use rand_core::{OsRng, RngCore};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber, PKCS_ECDSA_P256_SHA256, PKCS_ED25519,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// CA lifetime Talos uses (87600h).
const CA_VALIDITY: Duration = Duration::hours(87_600);
/// Lifetime of the operator's talosconfig client certificate (Talos' default: one year).
const CLIENT_VALIDITY: Duration = Duration::days(365);
/// Renew the stored client certificate when less than this is left.
const CLIENT_RENEW_BEFORE: Duration = Duration::days(30);

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub cluster: ClusterIds,
    pub secrets: Secrets,
    pub trustdinfo: TrustdInfo,
    pub certs: Certs,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterIds {
    pub id: String,
    pub secret: String,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    pub bootstraptoken: String,
    pub secretboxencryptionsecret: String,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustdInfo {
    pub token: String,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certs {
    pub etcd: CertAndKey,
    pub k8s: CertAndKey,
    pub k8saggregator: CertAndKey,
    pub k8sserviceaccount: KeyOnly,
    pub os: CertAndKey,
}

/// Base64 of a PEM certificate and base64 of its PEM private key (Talos' `PEMEncodedCertificateAndKey`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertAndKey {
    pub crt: String,
    pub key: String,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyOnly {
    pub key: String,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bundle(<redacted>)")
    }
}

impl Bundle {
    /// A fresh bundle, as `talosctl gen secrets` makes one.
    pub fn generate() -> Result<Bundle> {
        let now = now();
        let ca = |org: Option<&str>, cn: Option<&str>, ed: bool| -> Result<CertAndKey> {
            let (crt, key) = self_signed_ca(org, cn, ed, now)?;
            Ok(CertAndKey {
                crt: STANDARD.encode(crt),
                key: STANDARD.encode(key),
            })
        };
        Ok(Bundle {
            cluster: ClusterIds {
                id: URL_SAFE.encode(random_bytes(32)),
                secret: STANDARD.encode(random_bytes(32)),
            },
            secrets: Secrets {
                bootstraptoken: token(6, 16),
                secretboxencryptionsecret: STANDARD.encode(random_bytes(32)),
            },
            trustdinfo: TrustdInfo {
                token: token(6, 16),
            },
            certs: Certs {
                etcd: ca(Some("etcd"), None, false)?,
                k8s: ca(Some("kubernetes"), None, false)?,
                k8saggregator: ca(None, Some("front-proxy"), false)?,
                k8sserviceaccount: KeyOnly {
                    key: STANDARD.encode(rsa_key_pem()?),
                },
                os: ca(Some("talos"), None, true)?,
            },
        })
    }

    pub fn to_yaml(&self) -> Result<Vec<u8>> {
        Ok(serde_yaml_ng::to_string(self)
            .context("encoding the Talos secrets bundle")?
            .into_bytes())
    }

    /// Parse and check a stored bundle; `name` is the store entry (for messages).
    pub fn parse(bytes: &[u8], name: &str) -> Result<Bundle> {
        let fix = format!(
            "restore secrets/{name}.age from a backup, or delete it to generate new cluster secrets (a running cluster then needs a rebuild)"
        );
        let b: Bundle = serde_yaml_ng::from_slice(bytes)
            .map_err(|e| anyhow!("secrets/{name}.age is not a Talos secrets bundle: {e}; {fix}"))?;
        let tok = |v: &str| {
            let mut p = v.split('.');
            let ok = |s: Option<&str>, n: usize| {
                s.is_some_and(|s| {
                    s.len() == n
                        && s.bytes()
                            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
                })
            };
            ok(p.next(), 6) && ok(p.next(), 16) && p.next().is_none()
        };
        if !tok(&b.secrets.bootstraptoken) {
            bail!("secrets/{name}.age: secrets.bootstraptoken is not a token of the form [a-z0-9]{{6}}.[a-z0-9]{{16}}; {fix}");
        }
        if !tok(&b.trustdinfo.token) {
            bail!("secrets/{name}.age: trustdinfo.token is not a token of the form [a-z0-9]{{6}}.[a-z0-9]{{16}}; {fix}");
        }
        if STANDARD
            .decode(&b.secrets.secretboxencryptionsecret)
            .map(|v| v.len())
            .ok()
            != Some(32)
        {
            bail!("secrets/{name}.age: secrets.secretboxencryptionsecret is not 32 bytes of base64; {fix}");
        }
        for (field, v) in [
            ("cluster.id", URL_SAFE.decode(&b.cluster.id)),
            ("cluster.secret", STANDARD.decode(&b.cluster.secret)),
        ] {
            if v.map(|v| v.len()).ok() != Some(32) {
                bail!("secrets/{name}.age: {field} is not 32 bytes of base64; {fix}");
            }
        }
        for (field, ck) in [
            ("certs.etcd", &b.certs.etcd),
            ("certs.k8s", &b.certs.k8s),
            ("certs.k8saggregator", &b.certs.k8saggregator),
            ("certs.os", &b.certs.os),
        ] {
            pem_of(&ck.crt, "CERTIFICATE")
                .with_context(|| format!("secrets/{name}.age: {field}.crt; {fix}"))?;
            pem_of(&ck.key, "PRIVATE KEY")
                .with_context(|| format!("secrets/{name}.age: {field}.key; {fix}"))?;
        }
        pem_of(&b.certs.k8sserviceaccount.key, "PRIVATE KEY")
            .with_context(|| format!("secrets/{name}.age: certs.k8sserviceaccount.key; {fix}"))?;
        Ok(b)
    }
}

/// The operator's talosconfig client certificate (role `os:admin`, signed by the Talos API CA), stored next
/// to the bundle so re-renders are byte-identical; renewed when it nears expiry.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminCert {
    /// Base64 of the PEM certificate / key (talosconfig's encoding).
    pub crt: String,
    pub key: String,
    /// Unix seconds.
    pub not_after: i64,
    /// Base64 of the issuing CA certificate (to notice a replaced CA).
    pub ca: String,
}

impl std::fmt::Debug for AdminCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminCert(<redacted>)")
    }
}

impl AdminCert {
    pub fn usable_with(&self, bundle: &Bundle) -> bool {
        self.ca == bundle.certs.os.crt
            && OffsetDateTime::from_unix_timestamp(self.not_after)
                .map(|t| t - now() > CLIENT_RENEW_BEFORE)
                .unwrap_or(false)
    }

    /// Issue a client certificate with organisation `os:admin` from the bundle's Talos API CA.
    pub fn issue(bundle: &Bundle) -> Result<AdminCert> {
        let now = now();
        let ca_key_pem = decode_b64_pem(&bundle.certs.os.key, "certs.os.key")?;
        let ca_key = ed25519_keypair_from_talos_pem(&ca_key_pem)?;
        // rcgen needs the issuer as a Certificate for its name and key identifier: rebuild it from the same
        // key and the same subject as the stored CA (the signature on this copy is never used).
        let issuer = ca_params(Some("talos"), None, now)?
            .self_signed(&ca_key)
            .map_err(|e| anyhow!("rebuilding the Talos API CA: {e}"))?;
        let key = KeyPair::generate_for(&PKCS_ED25519)
            .map_err(|e| anyhow!("generating a client key: {e}"))?;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::OrganizationName, "os:admin");
        p.serial_number = Some(serial());
        p.not_before = now;
        p.not_after = now + CLIENT_VALIDITY;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.use_authority_key_identifier_extension = true;
        let cert = p
            .signed_by(&key, &issuer, &ca_key)
            .map_err(|e| anyhow!("signing the talosconfig client certificate: {e}"))?;
        Ok(AdminCert {
            crt: STANDARD.encode(cert.pem()),
            key: STANDARD.encode(ed25519_talos_pem(&key)?),
            not_after: (now + CLIENT_VALIDITY).unix_timestamp(),
            ca: bundle.certs.os.crt.clone(),
        })
    }

    pub fn to_yaml(&self) -> Result<Vec<u8>> {
        Ok(serde_yaml_ng::to_string(self)?.into_bytes())
    }

    pub fn parse(bytes: &[u8], name: &str) -> Result<AdminCert> {
        serde_yaml_ng::from_slice(bytes).map_err(|e| {
            anyhow!("secrets/{name}.age is not a talosconfig client certificate ({e}); delete it and render again to issue a new one")
        })
    }
}

fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(0).unwrap_or(t)
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    OsRng.fill_bytes(&mut v);
    v
}

/// `[a-z0-9]{a}.[a-z0-9]{b}`, uniform (bytes ≥ 252 are rejected so 36 divides evenly), as Talos' genToken.
fn token(a: usize, b: usize) -> String {
    const CHARS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let part = |n: usize| {
        let mut out = String::with_capacity(n);
        while out.len() < n {
            let mut byte = [0u8; 1];
            OsRng.fill_bytes(&mut byte);
            if byte[0] < 252 {
                out.push(CHARS[byte[0] as usize % CHARS.len()] as char);
            }
        }
        out
    };
    format!("{}.{}", part(a), part(b))
}

fn serial() -> SerialNumber {
    let mut s = random_bytes(16);
    s[0] &= 0x7f;
    if s[0] == 0 {
        s[0] = 1;
    }
    SerialNumber::from_slice(&s)
}

fn ca_params(
    org: Option<&str>,
    cn: Option<&str>,
    now: OffsetDateTime,
) -> Result<CertificateParams> {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    if let Some(o) = org {
        p.distinguished_name.push(DnType::OrganizationName, o);
    }
    if let Some(c) = cn {
        p.distinguished_name.push(DnType::CommonName, c);
    }
    p.serial_number = Some(serial());
    p.not_before = now;
    p.not_after = now + CA_VALIDITY;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(p)
}

/// (certificate PEM, key PEM) of a new self-signed CA.
fn self_signed_ca(
    org: Option<&str>,
    cn: Option<&str>,
    ed25519: bool,
    now: OffsetDateTime,
) -> Result<(String, String)> {
    let alg = if ed25519 {
        &PKCS_ED25519
    } else {
        &PKCS_ECDSA_P256_SHA256
    };
    let key = KeyPair::generate_for(alg).map_err(|e| anyhow!("generating a CA key: {e}"))?;
    let cert = ca_params(org, cn, now)?
        .self_signed(&key)
        .map_err(|e| anyhow!("self-signing a CA certificate: {e}"))?;
    let key_pem = if ed25519 {
        ed25519_talos_pem(&key)?
    } else {
        ec_sec1_pem(&key)?
    };
    Ok((cert.pem(), key_pem))
}

fn pem_block(label: &str, der: &[u8]) -> String {
    let mut out = format!("-----BEGIN {label}-----\n");
    let b64 = STANDARD.encode(der);
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER body of a PEM text with a label ending in `want` (e.g. "PRIVATE KEY").
fn pem_body(pem: &str, want: &str) -> Result<(String, Vec<u8>)> {
    let begin = pem
        .find("-----BEGIN ")
        .ok_or_else(|| anyhow!("no PEM block"))?;
    let rest = &pem[begin + 11..];
    let label_end = rest
        .find("-----")
        .ok_or_else(|| anyhow!("bad PEM header"))?;
    let label = rest[..label_end].to_string();
    if !label.ends_with(want) {
        bail!("PEM block is `{label}`, expected a {want}");
    }
    let body_start = label_end + 5;
    let end = rest
        .find("-----END ")
        .ok_or_else(|| anyhow!("PEM block has no END line"))?;
    let b64: String = rest[body_start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = STANDARD
        .decode(b64)
        .map_err(|e| anyhow!("PEM body is not base64: {e}"))?;
    Ok((label, der))
}

fn decode_b64_pem(v: &str, field: &str) -> Result<String> {
    let raw = STANDARD
        .decode(v)
        .map_err(|e| anyhow!("{field} is not base64: {e}"))?;
    String::from_utf8(raw).map_err(|_| anyhow!("{field} is not a PEM text"))
}

fn pem_of(v: &str, want: &str) -> Result<()> {
    let pem = decode_b64_pem(v, "value")?;
    pem_body(&pem, want)?;
    Ok(())
}

const OID_PRIME256V1: &[u64] = &[1, 2, 840, 10045, 3, 1, 7];
const OID_ED25519: &[u64] = &[1, 3, 101, 112];

/// SEC1 `EC PRIVATE KEY` (with the named-curve parameter) from rcgen's PKCS#8 P-256 key.
fn ec_sec1_pem(key: &KeyPair) -> Result<String> {
    let pkcs8 = key.serialize_der();
    let inner = yasna::parse_der(&pkcs8, |r| {
        r.read_sequence(|r| {
            r.next().read_u8()?;
            r.next().read_der()?;
            r.next().read_bytes()
        })
    })
    .map_err(|e| anyhow!("reading a PKCS#8 EC key: {e}"))?;
    let (scalar, public) = yasna::parse_der(&inner, |r| {
        r.read_sequence(|r| {
            r.next().read_u8()?;
            let scalar = r.next().read_bytes()?;
            r.read_optional(|r| r.read_tagged(yasna::Tag::context(0), |r| r.read_oid()))?;
            let public = r.read_optional(|r| {
                r.read_tagged(yasna::Tag::context(1), |r| r.read_bitvec_bytes())
            })?;
            Ok((scalar, public))
        })
    })
    .map_err(|e| anyhow!("reading an EC private key: {e}"))?;
    let (public, bits) = public.ok_or_else(|| anyhow!("EC private key has no public key"))?;
    let der = yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_u8(1);
            w.next().write_bytes(&scalar);
            w.next().write_tagged(yasna::Tag::context(0), |w| {
                w.write_oid(&yasna::models::ObjectIdentifier::from_slice(OID_PRIME256V1))
            });
            w.next().write_tagged(yasna::Tag::context(1), |w| {
                w.write_bitvec_bytes(&public, bits)
            });
        })
    });
    Ok(pem_block("EC PRIVATE KEY", &der))
}

/// `ED25519 PRIVATE KEY` with a PKCS#8 v1 body (what Go's MarshalPKCS8PrivateKey writes).
fn ed25519_talos_pem(key: &KeyPair) -> Result<String> {
    let pkcs8 = key.serialize_der();
    let inner = yasna::parse_der(&pkcs8, |r| {
        r.read_sequence(|r| {
            r.next().read_u8()?;
            r.next().read_der()?;
            let k = r.next().read_bytes()?;
            // v2 (RFC 5958) carries the public key as [1]; v1 does not.
            r.read_optional(|r| r.read_der())?;
            Ok(k)
        })
    })
    .map_err(|e| anyhow!("reading a PKCS#8 Ed25519 key: {e}"))?;
    let der = yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_u8(0);
            w.next().write_sequence(|w| {
                w.next()
                    .write_oid(&yasna::models::ObjectIdentifier::from_slice(OID_ED25519));
            });
            w.next().write_bytes(&inner);
        })
    });
    Ok(pem_block("ED25519 PRIVATE KEY", &der))
}

fn ed25519_keypair_from_talos_pem(pem: &str) -> Result<KeyPair> {
    let (_, der) = pem_body(pem, "PRIVATE KEY").context("the Talos API CA key")?;
    KeyPair::from_pkcs8_der_and_sign_algo(&der.as_slice().into(), &PKCS_ED25519)
        .map_err(|e| anyhow!("the Talos API CA key is not an Ed25519 key: {e}"))
}

/// RSA-4096 service-account key, PKCS#1 PEM (Talos ≥ 1.7 uses RSA so OIDC consumers can verify RS256).
fn rsa_key_pem() -> Result<String> {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    let k = rsa::RsaPrivateKey::new(&mut OsRng, 4096)
        .map_err(|e| anyhow!("generating the service-account key: {e}"))?;
    Ok(k.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)
        .map_err(|e| anyhow!("encoding the service-account key: {e}"))?
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_kubeadm_shape() {
        for _ in 0..50 {
            let t = token(6, 16);
            let (a, b) = t.split_once('.').unwrap();
            assert_eq!((a.len(), b.len()), (6, 16));
            assert!(t
                .bytes()
                .all(|c| c == b'.' || c.is_ascii_digit() || c.is_ascii_lowercase()));
        }
    }

    #[test]
    fn ec_key_is_sec1_with_curve() {
        let k = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let pem = ec_sec1_pem(&k).unwrap();
        let (label, der) = pem_body(&pem, "PRIVATE KEY").unwrap();
        assert_eq!(label, "EC PRIVATE KEY");
        // SEQUENCE { INTEGER 1, OCTET STRING (32), [0] OID prime256v1, [1] BIT STRING }
        let oid = yasna::models::ObjectIdentifier::from_slice(OID_PRIME256V1);
        let got = yasna::parse_der(&der, |r| {
            r.read_sequence(|r| {
                let v = r.next().read_u8()?;
                let s = r.next().read_bytes()?;
                let o = r
                    .next()
                    .read_tagged(yasna::Tag::context(0), |r| r.read_oid())?;
                r.next()
                    .read_tagged(yasna::Tag::context(1), |r| r.read_bitvec_bytes())?;
                Ok((v, s.len(), o))
            })
        })
        .unwrap();
        assert_eq!(got, (1, 32, oid));
    }

    #[test]
    fn ed25519_key_round_trips_through_the_talos_label() {
        let k = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let pem = ed25519_talos_pem(&k).unwrap();
        assert!(pem.starts_with("-----BEGIN ED25519 PRIVATE KEY-----\n"));
        let back = ed25519_keypair_from_talos_pem(&pem).unwrap();
        assert_eq!(back.public_key_raw(), k.public_key_raw());
    }

    #[test]
    fn a_damaged_bundle_is_refused_with_the_fix() {
        let err = Bundle::parse(b"cluster: {}\n", "talos/x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("secrets/talos/x.age"), "{err}");
        assert!(err.contains("restore"), "{err}");
    }
}
