//! A fresh GPT for an image assembled from partition contents (images built from source): protective MBR,
//! primary header + 128 entries, backup entries + header at the end, CRCs. Partitions are 1 MiB aligned.
//! Read back by `part::read` and judged by `sfdisk` in the tests.

use super::part::{guid_bytes, SECTOR};
use anyhow::{bail, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;

const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
const ENTRY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR; // 32
const MIB: u64 = 1 << 20;

/// Linux filesystem data.
pub const LINUX_FS: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";
/// Linux root (x86-64), Discoverable Partitions Specification.
pub const ROOT_X86_64: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
/// Linux root (arm64).
pub const ROOT_ARM64: &str = "b921b045-1df0-41c3-af44-4c6f280d3fae";

#[derive(Debug, Clone)]
pub struct PartSpec {
    pub name: String,
    /// Type GUID, text form.
    pub type_guid: String,
    /// Unique GUID, text form.
    pub unique: String,
    pub size: u64,
}

/// Where each partition landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub start_lba: u64,
    pub sectors: u64,
}

impl Placed {
    pub fn offset(&self) -> u64 {
        self.start_lba * SECTOR
    }
    pub fn len(&self) -> u64 {
        self.sectors * SECTOR
    }
    pub fn is_empty(&self) -> bool {
        self.sectors == 0
    }
}

/// The image size and partition places for `parts` (sizes rounded up to whole MiB, first at 1 MiB).
pub fn layout(parts: &[PartSpec]) -> (u64, Vec<Placed>) {
    let mut at = MIB;
    let mut placed = Vec::new();
    for p in parts {
        let size = p.size.div_ceil(MIB) * MIB;
        placed.push(Placed {
            start_lba: at / SECTOR,
            sectors: size / SECTOR,
        });
        at += size;
    }
    // Room for the backup entries and header, then whole MiB.
    let total = (at + (ENTRY_SECTORS + 1) * SECTOR).div_ceil(MIB) * MIB;
    (total, placed)
}

/// Write the partition table for `parts` at `placed` into `f` (already `total` bytes long).
pub fn write(
    f: &File,
    total: u64,
    parts: &[PartSpec],
    placed: &[Placed],
    disk_guid: &str,
) -> Result<()> {
    if parts.len() as u64 > ENTRIES || parts.len() != placed.len() {
        bail!("too many partitions for one GPT");
    }
    let last_lba = total / SECTOR - 1;
    let first_usable = 2 + ENTRY_SECTORS;
    let last_usable = last_lba - ENTRY_SECTORS - 1;
    let mut entries = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    for (i, (p, at)) in parts.iter().zip(placed).enumerate() {
        if at.start_lba < first_usable || at.start_lba + at.sectors - 1 > last_usable {
            bail!("partition {} does not fit the disk", p.name);
        }
        let e = &mut entries[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&guid_bytes(&p.type_guid));
        e[16..32].copy_from_slice(&guid_bytes(&p.unique));
        e[32..40].copy_from_slice(&at.start_lba.to_le_bytes());
        e[40..48].copy_from_slice(&(at.start_lba + at.sectors - 1).to_le_bytes());
        for (j, c) in p.name.encode_utf16().take(36).enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&c.to_le_bytes());
        }
    }
    let entries_crc = crc32fast::hash(&entries);
    let header = |my: u64, alt: u64, entries_lba: u64| {
        let mut h = vec![0u8; 92];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my.to_le_bytes());
        h[32..40].copy_from_slice(&alt.to_le_bytes());
        h[40..48].copy_from_slice(&first_usable.to_le_bytes());
        h[48..56].copy_from_slice(&last_usable.to_le_bytes());
        h[56..72].copy_from_slice(&guid_bytes(disk_guid));
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let c = crc32fast::hash(&h);
        h[16..20].copy_from_slice(&c.to_le_bytes());
        let mut s = vec![0u8; SECTOR as usize];
        s[..92].copy_from_slice(&h);
        s
    };
    // Protective MBR.
    let mut mbr = vec![0u8; SECTOR as usize];
    let e = &mut mbr[446..462];
    e[1] = 0x00;
    e[2] = 0x02;
    e[4] = 0xee;
    e[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    e[12..16].copy_from_slice(&(last_lba.min(u32::MAX as u64) as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    f.write_all_at(&mbr, 0)?;
    f.write_all_at(&header(1, last_lba, 2), SECTOR)?;
    f.write_all_at(&entries, 2 * SECTOR)?;
    let backup_entries = last_lba - ENTRY_SECTORS;
    f.write_all_at(&entries, backup_entries * SECTOR)?;
    f.write_all_at(&header(last_lba, 1, backup_entries), last_lba * SECTOR)?;
    Ok(())
}

/// A version-4-shaped GUID derived from `seed` (reproducible builds), text form.
pub fn derived_guid(seed: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(seed.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_aligns_and_reserves_backup() {
        let parts = vec![
            PartSpec {
                name: "a".into(),
                type_guid: LINUX_FS.into(),
                unique: derived_guid("a"),
                size: 3,
            },
            PartSpec {
                name: "b".into(),
                type_guid: LINUX_FS.into(),
                unique: derived_guid("b"),
                size: MIB + 1,
            },
        ];
        let (total, placed) = layout(&parts);
        assert_eq!(
            placed[0],
            Placed {
                start_lba: 2048,
                sectors: 2048
            }
        );
        assert_eq!(
            placed[1],
            Placed {
                start_lba: 4096,
                sectors: 4096
            }
        );
        assert_eq!(total, 5 * MIB);
        let f = tempfile::tempfile().unwrap();
        f.set_len(total).unwrap();
        write(&f, total, &parts, &placed, &derived_guid("disk")).unwrap();
        let t = super::super::part::read(&f).unwrap();
        assert_eq!(t.parts.len(), 2);
        assert_eq!(t.parts[1].start_lba, 4096);
        assert_eq!(t.parts[1].name, "b");
    }
}
