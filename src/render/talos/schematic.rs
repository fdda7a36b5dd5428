//! Image Factory schematics and their IDs, computed offline.
//!
//! The factory's ID is the hex SHA-256 of the schematic marshalled by Go's yaml.v3 with its defaults
//! (4-space indent, sequences indented under their key, struct field order `overlay` then `customization`,
//! empty fields omitted, an empty `customization` written as `{}`). We write that canonical form ourselves
//! for the fields labforge uses (overlay name/image, official system extensions) and refuse values yaml.v3
//! would quote, so the bytes — and hence the ID — match the factory's exactly.

use crate::spec::model::{Arch, Board, Cluster, Host};
use anyhow::{bail, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The public Image Factory, written as Talos documents it.
pub const FACTORY: &str = "factory.talos.dev";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    pub image: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schematic {
    pub overlay: Option<Overlay>,
    /// Official system extensions, sorted and unique.
    pub extensions: Vec<String>,
}

/// Where a node's Talos image and installer come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeImages {
    pub schematic_id: String,
    /// Committed schematic file (relative to the repository root).
    pub schematic: String,
    /// `factory.talos.dev/installer/<id>:<version>` (machine.install.image).
    pub installer: String,
    /// Disk image to write to the boot medium (`metal-<arch>.raw.xz`).
    pub disk_image: String,
    /// Boot ISO (x86_64 only; Pis boot the disk image).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iso: Option<String>,
}

/// yaml.v3 writes these scalars plain; anything else might be quoted and would change the ID.
fn plain_safe(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_.-".contains(&b))
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
        )
}

impl Schematic {
    pub fn for_node(cluster: &Cluster, host: &Host) -> Schematic {
        let mut extensions: Vec<String> = cluster.extensions.clone();
        if let Some(t) = &host.talos {
            extensions.extend(t.extensions.iter().cloned());
        }
        extensions.sort();
        extensions.dedup();
        let overlay = host.board.is_rpi().then(|| Overlay {
            image: "siderolabs/sbc-raspberrypi".into(),
            name: "rpi_generic".into(),
        });
        Schematic {
            overlay,
            extensions,
        }
    }

    /// The canonical (yaml.v3) form the factory hashes.
    pub fn canonical(&self) -> Result<String> {
        let mut out = String::new();
        if let Some(o) = &self.overlay {
            for v in [&o.image, &o.name] {
                if !plain_safe(v) {
                    bail!("overlay value `{v}` cannot be written in the Image Factory's canonical form");
                }
            }
            out.push_str(&format!(
                "overlay:\n    image: {}\n    name: {}\n",
                o.image, o.name
            ));
        }
        if self.extensions.is_empty() {
            out.push_str("customization: {}\n");
        } else {
            out.push_str("customization:\n    systemExtensions:\n        officialExtensions:\n");
            for e in &self.extensions {
                if !plain_safe(e) {
                    bail!(
                        "system extension `{e}` is not an official extension name (letters, digits, `/_.-`)"
                    );
                }
                out.push_str(&format!("            - {e}\n"));
            }
        }
        Ok(out)
    }

    /// The schematic ID the Image Factory assigns.
    pub fn id(&self) -> Result<String> {
        Ok(hex::encode(Sha256::digest(self.canonical()?.as_bytes())))
    }
}

pub fn factory_arch(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "amd64",
        Arch::Aarch64 => "arm64",
    }
}

pub fn schematic_path(cluster: &str, node: &str) -> String {
    format!("talos/{cluster}/schematics/{node}.yaml")
}

/// The node's schematic and image locations (pure: from the spec alone).
pub fn node_images(cluster: &Cluster, host: &Host) -> Result<NodeImages> {
    let s = Schematic::for_node(cluster, host);
    let id = s.id()?;
    let v = &cluster.talos_version;
    let arch = factory_arch(host.arch);
    Ok(NodeImages {
        installer: format!("{FACTORY}/installer/{id}:{v}"),
        disk_image: format!("https://{FACTORY}/image/{id}/{v}/metal-{arch}.raw.xz"),
        iso: (host.arch == Arch::X86_64 && !matches!(host.board, Board::Rpi4 | Board::Rpi5))
            .then(|| format!("https://{FACTORY}/image/{id}/{v}/metal-{arch}.iso")),
        schematic: schematic_path(&cluster.name, &host.name),
        schematic_id: id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(v: &[&str]) -> Schematic {
        Schematic {
            overlay: None,
            extensions: v.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Test vectors from siderolabs/image-factory pkg/schematic/schematic_test.go and its README.
    #[test]
    fn ids_match_the_image_factory() {
        assert_eq!(
            ext(&[]).id().unwrap(),
            "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"
        );
        let rpi = Schematic {
            overlay: Some(Overlay {
                image: "siderolabs/sbc-raspberrypi".into(),
                name: "rpi_generic".into(),
            }),
            extensions: vec![],
        };
        assert_eq!(
            rpi.id().unwrap(),
            "ee21ef4a5ef808a9b7484cc0dda0f25075021691c8c09a276591eedb638ea1f9"
        );
        // The factory's schematic for the QEMU guest agent, as published in Talos' Proxmox guide.
        assert_eq!(
            ext(&["siderolabs/qemu-guest-agent"]).id().unwrap(),
            "ce4c980550dd2ab1b17bbf2b08801c7eb59418eafe8f279833297925d67c7515"
        );
    }

    #[test]
    fn names_yaml_would_quote_are_refused() {
        assert!(ext(&["siderolabs/a b"]).id().is_err());
        assert!(ext(&["yes"]).id().is_err());
    }
}
