//! The secrets store: values live age-encrypted in `secrets/` beside the spec, never in the spec, a render
//! bound for git or the Nix store, a log, or `--json` output.
//!
//! * The operator's age identity lives outside the repo: `$LABFORGE_AGE_IDENTITY`, else
//!   `$XDG_CONFIG_HOME/labforge/identity.txt` (`~/.config/labforge/identity.txt`). `labforge secrets init`
//!   creates it.
//! * Each value is one armored age file `secrets/<name>.age`, encrypted to the identity's public key plus every
//!   `site.age_recipients` entry (other operators, a CI key). Ciphertext is safe to commit (agenix-style).
//! * Generated values: `secrets generate` fills `store` secrets that declare a generator; SSH host keys
//!   (`ssh-host-keys/<host>`) and Talos cluster secrets (`talos/<cluster>`) are generated on first render
//!   and reused afterwards. Public halves of host keys sit beside them as plain `.pub` files.
//! * `env:VAR` and `file:PATH` secrets are read at deploy time only.

use crate::spec::model::{SecretRef, SecretSource, Spec};
use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A secret value. Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(v: Vec<u8>) -> Self {
        Secret(v)
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    pub fn expose_str(&self) -> Result<&str> {
        std::str::from_utf8(&self.0).map_err(|_| anyhow!("secret value is not UTF-8"))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // Volatile so the wipe is not optimised away.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// An SSH host key pair from the store.
pub struct HostKey {
    /// OpenSSH private key (the PEM-like armoured `openssh-key-v1` format).
    pub private: Secret,
    /// `ssh-ed25519 AAAA… host`.
    pub public: String,
}

pub fn default_identity_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LABFORGE_AGE_IDENTITY") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("labforge").join("identity.txt"))
}

pub struct Store {
    /// Set when a value was generated and written without fsync (see [`Store::sync`]).
    generated: std::sync::atomic::AtomicBool,
    dir: PathBuf,
    identity: Option<age::x25519::Identity>,
    recipients: Vec<age::x25519::Recipient>,
}

impl Store {
    /// Open the store in `<root>/secrets` with the operator's identity (if it exists) and the spec's recipients.
    pub fn open(root: &Path, spec: &Spec) -> Result<Store> {
        let identity = match default_identity_path() {
            Some(p) if p.exists() => Some(read_identity(&p)?),
            _ => None,
        };
        let mut recipients: Vec<age::x25519::Recipient> = spec
            .site
            .age_recipients
            .iter()
            .map(|r| {
                age::x25519::Recipient::from_str(r).map_err(|e| anyhow!("site.age_recipients: {e}"))
            })
            .collect::<Result<_>>()?;
        if let Some(id) = &identity {
            let own = id.to_public();
            if !recipients.iter().any(|r| r.to_string() == own.to_string()) {
                recipients.push(own);
            }
        }
        Ok(Store {
            generated: std::sync::atomic::AtomicBool::new(false),
            dir: root.join("secrets"),
            identity,
            recipients,
        })
    }

    /// Make generated values durable: one file-system flush for everything generated since the last one.
    pub fn sync(&self) -> Result<()> {
        if self
            .generated
            .swap(false, std::sync::atomic::Ordering::Relaxed)
            && self.dir.exists()
        {
            crate::render::sync_filesystem(&self.dir)?;
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> Result<PathBuf> {
        if name.is_empty()
            || name.split('/').any(|c| {
                c.is_empty()
                    || c == "."
                    || c == ".."
                    || !c
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            })
        {
            bail!("internal error: invalid secret name `{name}`");
        }
        Ok(self.dir.join(format!("{name}.age")))
    }

    fn need_identity(&self) -> Result<&age::x25519::Identity> {
        self.identity.as_ref().ok_or_else(|| {
            anyhow!(
                "no age identity at {}: run `labforge secrets init` (or set LABFORGE_AGE_IDENTITY)",
                default_identity_path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "~/.config/labforge/identity.txt".into())
            )
        })
    }

    pub fn has(&self, name: &str) -> Result<bool> {
        Ok(self.file(name)?.exists())
    }

    pub fn get(&self, name: &str) -> Result<Option<Secret>> {
        let path = self.file(name)?;
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let id = self.need_identity()?;
        let dec = age::Decryptor::new_buffered(age::armor::ArmoredReader::new(&data[..]))
            .with_context(|| format!("{} is not an age file", path.display()))?;
        let mut r = dec
            .decrypt(std::iter::once(id as &dyn age::Identity))
            .with_context(|| {
                format!(
                    "decrypting {} (is it encrypted to your identity? see site.age_recipients)",
                    path.display()
                )
            })?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)
            .with_context(|| format!("decrypting {}", path.display()))?;
        Ok(Some(Secret(out)))
    }

    /// Encrypt and store a value durably (fsync before rename).
    pub fn put(&self, name: &str, value: &[u8]) -> Result<()> {
        self.put_with(name, value, true)
    }

    /// [`Self::put`]; `durable = false` skips the per-file fsync for values generated during a render, which
    /// flushes the file system once before it returns (`render::run`).
    fn put_with(&self, name: &str, value: &[u8], durable: bool) -> Result<()> {
        self.need_identity()?;
        let path = self.file(name)?;
        let enc = age::Encryptor::with_recipients(
            self.recipients.iter().map(|r| r as &dyn age::Recipient),
        )
        .map_err(|e| anyhow!("age: {e}"))?;
        let mut ct = Vec::new();
        {
            let armor =
                age::armor::ArmoredWriter::wrap_output(&mut ct, age::armor::Format::AsciiArmor)?;
            let mut w = enc.wrap_output(armor)?;
            w.write_all(value)?;
            w.finish()?.finish()?;
        }
        crate::render::write_atomic_with(&path, &ct, 0o600, durable)
    }

    /// The stored value, or a freshly generated one that is stored first.
    pub fn get_or_generate(
        &self,
        name: &str,
        generate: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<Secret> {
        if let Some(v) = self.get(name)? {
            return Ok(v);
        }
        let v = generate()?;
        self.put_with(name, &v, false)?;
        self.generated
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(Secret(v))
    }

    /// The host's SSH host key (ed25519), generated on first use. The public half is also written in clear
    /// beside it so pinning works without the identity.
    pub fn ssh_host_key(&self, host: &str) -> Result<HostKey> {
        let name = format!("ssh-host-keys/{host}");
        let private = self.get_or_generate(&name, || {
            let k = ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519)
                .map_err(|e| anyhow!("generating an SSH host key: {e}"))?;
            let mut k = k;
            k.set_comment(format!("root@{host}"));
            Ok(k.to_openssh(ssh_key::LineEnding::LF)
                .map_err(|e| anyhow!("encoding an SSH host key: {e}"))?
                .as_bytes()
                .to_vec())
        })?;
        let key = ssh_key::PrivateKey::from_openssh(private.expose())
            .map_err(|e| anyhow!("secrets/{name}.age does not hold an OpenSSH private key: {e}"))?;
        let public = key
            .public_key()
            .to_openssh()
            .map_err(|e| anyhow!("encoding a public key: {e}"))?;
        let pub_path = self.dir.join(format!("{name}.pub"));
        if std::fs::read_to_string(&pub_path).ok().as_deref() != Some(&format!("{public}\n")) {
            crate::render::write_atomic_with(
                &pub_path,
                format!("{public}\n").as_bytes(),
                0o644,
                false,
            )?;
            self.generated
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(HostKey { private, public })
    }

    /// The public half of a host key, if one was generated (no identity needed).
    pub fn ssh_host_public_key(&self, host: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(format!("ssh-host-keys/{host}.pub")))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Resolve a spec secret reference to its value, wherever it lives.
    pub fn resolve(&self, s: &SecretRef) -> Result<Secret> {
        match &s.source {
            SecretSource::Store => self.get(&s.name)?.ok_or_else(|| anyhow!("secret `{}` has no value in the store: run `labforge secrets set {}` or `labforge secrets generate`", s.name, s.name)),
            SecretSource::Env(v) => std::env::var(v).map(|x| Secret(x.into_bytes())).map_err(|_| anyhow!("secret `{}` reads ${v}, which is not set", s.name)),
            SecretSource::File(p) => {
                let path = match p.strip_prefix("~/") {
                    Some(rest) => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(rest)).unwrap_or_else(|| PathBuf::from(p)),
                    None => PathBuf::from(p),
                };
                let mut v = std::fs::read(&path).with_context(|| format!("reading secret `{}` from {}", s.name, path.display()))?;
                while v.last() == Some(&b'\n') {
                    v.pop();
                }
                Ok(Secret(v))
            }
        }
    }
}

fn read_identity(p: &Path) -> Result<age::x25519::Identity> {
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("reading age identity {}", p.display()))?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .ok_or_else(|| anyhow!("{} holds no AGE-SECRET-KEY line", p.display()))?;
    age::x25519::Identity::from_str(line)
        .map_err(|e| anyhow!("{}: not an age identity: {e}", p.display()))
}

/// Create the operator's identity if missing; returns (path, public key, created).
pub fn init_identity() -> Result<(PathBuf, String, bool)> {
    use age::secrecy::ExposeSecret;
    let p = default_identity_path()
        .ok_or_else(|| anyhow!("neither LABFORGE_AGE_IDENTITY nor HOME is set"))?;
    if p.exists() {
        let id = read_identity(&p)?;
        return Ok((p, id.to_public().to_string(), false));
    }
    let id = age::x25519::Identity::generate();
    let public = id.to_public().to_string();
    let body = format!(
        "# labforge operator identity — keep private, back it up\n# public key: {public}\n{}\n",
        id.to_string().expose_secret()
    );
    crate::render::write_atomic(&p, body.as_bytes(), 0o600)?;
    Ok((p, public, true))
}

/// Generate a value for a generator name from the spec (`password`, `token`, `base64-32`, `hex-32`).
pub fn generate_value(kind: &str) -> Result<Vec<u8>> {
    use rand_core::RngCore;
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    Ok(match kind {
        "password" => {
            const ALPHA: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
            bytes
                .iter()
                .take(24)
                .map(|b| ALPHA[*b as usize % ALPHA.len()])
                .collect()
        }
        "token" | "base64-32" => {
            const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = Vec::new();
            for chunk in bytes.chunks(3) {
                let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | *b as u32)
                    << (8 * (3 - chunk.len()));
                for i in 0..(chunk.len() + 1) {
                    out.push(B64[((n >> (18 - 6 * i)) & 63) as usize]);
                }
            }
            out
        }
        "hex-32" => hex::encode(bytes).into_bytes(),
        other => bail!("unknown generator `{other}`"),
    })
}
