//! MBR and GPT reading, and adding a partition to a GPT (growing the image and moving the backup GPT when
//! needed). 512-byte logical sectors, like every distributed disk image.
//!
//! GPT facts (UEFI spec ch. 5): header at LBA 1 (`EFI PART`, rev 1.0, 92 bytes, CRC32 over the header with
//! its CRC field zeroed), entry array (usually 128 × 128 bytes) with its own CRC32, backup entries right
//! before the backup header in the last LBA, protective MBR entry of type 0xEE covering the disk.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;

pub const SECTOR: u64 = 512;
const MIB_SECTORS: u64 = 2048;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// 1-based partition number (as Linux names it: sda1…).
    pub number: u32,
    pub start_lba: u64,
    pub sectors: u64,
    /// MBR type byte, or GPT type GUID as text.
    pub kind: String,
    /// Whether the type says FAT (MBR 0x01/04/06/0b/0c/0e/ef, GPT ESP or basic data).
    pub maybe_fat: bool,
    /// GPT partition name.
    pub name: String,
}

impl Part {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Mbr,
    Gpt,
}

#[derive(Debug)]
pub struct Table {
    pub scheme: Scheme,
    pub parts: Vec<Part>,
    gpt: Option<Gpt>,
}

#[derive(Debug, Clone)]
struct Gpt {
    header: Vec<u8>,
    entries: Vec<u8>,
    entry_size: usize,
    num_entries: usize,
    entries_lba: u64,
    first_usable: u64,
    last_usable: u64,
    alternate_lba: u64,
}

pub const BASIC_DATA: &str = "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7";
pub const ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";

pub fn guid_text(b: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{}-{}",
        u32::from_le_bytes(b[0..4].try_into().unwrap()),
        u16::from_le_bytes(b[4..6].try_into().unwrap()),
        u16::from_le_bytes(b[6..8].try_into().unwrap()),
        hex::encode(&b[8..10]),
        hex::encode(&b[10..16])
    )
}

pub fn guid_bytes(s: &str) -> [u8; 16] {
    let h: String = s.chars().filter(|c| *c != '-').collect();
    let raw = hex::decode(h).expect("valid GUID literal");
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&[raw[3], raw[2], raw[1], raw[0]]);
    b[4..6].copy_from_slice(&[raw[5], raw[4]]);
    b[6..8].copy_from_slice(&[raw[7], raw[6]]);
    b[8..16].copy_from_slice(&raw[8..16]);
    b
}

fn u64at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}
fn u32at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn read_at(f: &File, off: u64, len: usize) -> Result<Vec<u8>> {
    let mut b = vec![0u8; len];
    let n = crate::io::read_full_at(f, &mut b, off)?;
    if n < len {
        bail!(
            "the image ends before byte {} (it is truncated or not a disk image)",
            off + len as u64
        );
    }
    Ok(b)
}

/// Read the partition table of a disk image.
pub fn read(f: &File) -> Result<Table> {
    let size = f.metadata()?.len();
    if size < 2 * SECTOR {
        bail!("the image is {size} bytes: too small to hold a partition table");
    }
    let mbr = read_at(f, 0, 512)?;
    if mbr[510] != 0x55 || mbr[511] != 0xaa {
        bail!("the image has no partition table (no MBR boot signature 55 AA at byte 510)");
    }
    let mut mparts = Vec::new();
    for i in 0..4 {
        let e = &mbr[446 + i * 16..446 + (i + 1) * 16];
        let kind = e[4];
        let start = u32at(e, 8) as u64;
        let sectors = u32at(e, 12) as u64;
        if kind != 0 && sectors != 0 {
            mparts.push(Part {
                number: i as u32 + 1,
                start_lba: start,
                sectors,
                kind: format!("0x{kind:02x}"),
                maybe_fat: matches!(kind, 0x01 | 0x04 | 0x06 | 0x0b | 0x0c | 0x0e | 0xef),
                name: String::new(),
            });
        }
    }
    if !mparts.iter().any(|p| p.kind == "0xee") {
        return Ok(Table {
            scheme: Scheme::Mbr,
            parts: mparts,
            gpt: None,
        });
    }
    let header = read_at(f, SECTOR, 512)?;
    if &header[0..8] != b"EFI PART" {
        bail!("the protective MBR announces a GPT but LBA 1 has no `EFI PART` header");
    }
    let hsize = u32at(&header, 12) as usize;
    if !(92..=512).contains(&hsize) {
        bail!("the GPT header size {hsize} is invalid");
    }
    let mut h = header[..hsize].to_vec();
    let crc = u32at(&h, 16);
    h[16..20].fill(0);
    if crc32fast::hash(&h) != crc {
        bail!("the primary GPT header's CRC32 does not match: the image is damaged");
    }
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    let entries_lba = u64at(&h, 72);
    let num_entries = u32at(&h, 80) as usize;
    let entry_size = u32at(&h, 84) as usize;
    if entry_size < 128 || !entry_size.is_multiple_of(8) || num_entries == 0 || num_entries > 4096 {
        bail!("the GPT declares {num_entries} entries of {entry_size} bytes: not supported");
    }
    let entries = read_at(f, entries_lba * SECTOR, num_entries * entry_size)?;
    if crc32fast::hash(&entries) != u32at(&h, 88) {
        bail!("the GPT partition entry array's CRC32 does not match: the image is damaged");
    }
    let mut parts = Vec::new();
    for i in 0..num_entries {
        let e = &entries[i * entry_size..(i + 1) * entry_size];
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let first = u64at(e, 32);
        let last = u64at(e, 40);
        let name: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        let kind = guid_text(&e[0..16]);
        parts.push(Part {
            number: i as u32 + 1,
            start_lba: first,
            sectors: last.saturating_sub(first) + 1,
            maybe_fat: kind == BASIC_DATA || kind == ESP,
            kind,
            name: String::from_utf16_lossy(&name),
        });
    }
    Ok(Table {
        scheme: Scheme::Gpt,
        parts,
        gpt: Some(Gpt {
            first_usable: u64at(&h, 40),
            last_usable: u64at(&h, 48),
            alternate_lba: u64at(&h, 32),
            header: h,
            entries,
            entry_size,
            num_entries,
            entries_lba,
        }),
    })
}

/// What [`add_gpt_partition`] did.
#[derive(Debug, Clone)]
pub struct Added {
    pub part: Part,
    /// The image grew from → to bytes (None: it fit in free space).
    pub grew: Option<(u64, u64)>,
}

/// Add a basic-data partition of `size` bytes named `name` to a GPT image: the first 1 MiB-aligned gap that
/// fits, else after the last partition, growing the image file (and moving the backup GPT to its new end).
/// `unique` is the partition's unique GUID (16 bytes; labforge derives it so builds are reproducible).
pub fn add_gpt_partition(
    f: &File,
    table: &Table,
    size: u64,
    name: &str,
    unique: [u8; 16],
) -> Result<Added> {
    let Some(g) = table.gpt.as_ref() else {
        bail!("the image has an MBR partition table, not GPT");
    };
    let slot = (0..g.num_entries)
        .find(|&i| {
            g.entries[i * g.entry_size..i * g.entry_size + 16]
                .iter()
                .all(|&b| b == 0)
        })
        .context("the GPT has no free partition entry (all are used)")?;
    let want = size.div_ceil(SECTOR);
    let mut used: Vec<(u64, u64)> = table
        .parts
        .iter()
        .map(|p| (p.start_lba, p.start_lba + p.sectors - 1))
        .collect();
    used.sort();
    let align = |x: u64| x.div_ceil(MIB_SECTORS) * MIB_SECTORS;
    let mut start = None;
    let mut cursor = g.first_usable;
    for &(a, b) in used.iter().chain(std::iter::once(&(u64::MAX, u64::MAX))) {
        let s = align(cursor);
        let limit = a.min(g.last_usable.saturating_add(1));
        if s + want <= limit {
            start = Some(s);
            break;
        }
        if a == u64::MAX {
            break;
        }
        cursor = cursor.max(b + 1);
    }
    let old_size = f.metadata()?.len();
    let entry_sectors = ((g.num_entries * g.entry_size) as u64).div_ceil(SECTOR);
    let mut header = g.header.clone();
    let mut grew = None;
    let start = match start {
        Some(s) => s,
        None => {
            // Grow: the new partition after everything, then the backup entries and header.
            let end_used = used
                .iter()
                .map(|&(_, b)| b + 1)
                .max()
                .unwrap_or(g.first_usable);
            let s = align(end_used.max(g.first_usable));
            let total = align(s + want + entry_sectors + 1);
            let new_size = total * SECTOR;
            // The old backup GPT is now inside the disk: wipe it so no tool mistakes it for a table.
            let old_backup_start = g.alternate_lba.saturating_sub(entry_sectors);
            if g.alternate_lba * SECTOR < old_size {
                crate::io::write_zeros(f, old_backup_start * SECTOR, (entry_sectors + 1) * SECTOR)?;
            }
            f.set_len(new_size).context("growing the image file")?;
            header[32..40].copy_from_slice(&(total - 1).to_le_bytes());
            header[48..56].copy_from_slice(&(total - 2 - entry_sectors).to_le_bytes());
            grew = Some((old_size, new_size));
            // Protective MBR: the 0xEE entry covers the disk (capped at 32 bits).
            let mut mbr = read_at(f, 0, 512)?;
            for i in 0..4 {
                let o = 446 + i * 16;
                if mbr[o + 4] == 0xee {
                    let n = (total - 1).min(u32::MAX as u64) as u32;
                    mbr[o + 12..o + 16].copy_from_slice(&n.to_le_bytes());
                }
            }
            f.write_all_at(&mbr, 0)?;
            s
        }
    };
    let last = start + want - 1;
    let mut entries = g.entries.clone();
    let e = &mut entries[slot * g.entry_size..(slot + 1) * g.entry_size];
    e.fill(0);
    e[0..16].copy_from_slice(&guid_bytes(BASIC_DATA));
    e[16..32].copy_from_slice(&unique);
    e[32..40].copy_from_slice(&start.to_le_bytes());
    e[40..48].copy_from_slice(&last.to_le_bytes());
    for (i, c) in name.encode_utf16().take(36).enumerate() {
        e[56 + 2 * i..58 + 2 * i].copy_from_slice(&c.to_le_bytes());
    }
    header[88..92].copy_from_slice(&crc32fast::hash(&entries).to_le_bytes());
    let alternate = u64at(&header, 32);
    // Primary header.
    let mut primary = header.clone();
    primary[16..20].fill(0);
    let c = crc32fast::hash(&primary);
    primary[16..20].copy_from_slice(&c.to_le_bytes());
    // Backup header: my/alternate swapped, entries right before it.
    let backup_entries_lba = alternate - entry_sectors;
    let mut backup = header.clone();
    backup[24..32].copy_from_slice(&alternate.to_le_bytes());
    backup[32..40].copy_from_slice(&1u64.to_le_bytes());
    backup[72..80].copy_from_slice(&backup_entries_lba.to_le_bytes());
    backup[16..20].fill(0);
    let c = crc32fast::hash(&backup);
    backup[16..20].copy_from_slice(&c.to_le_bytes());
    f.write_all_at(&entries, g.entries_lba * SECTOR)?;
    f.write_all_at(&primary, SECTOR)?;
    f.write_all_at(&entries, backup_entries_lba * SECTOR)?;
    let mut bsec = vec![0u8; SECTOR as usize];
    bsec[..backup.len()].copy_from_slice(&backup);
    f.write_all_at(&bsec, alternate * SECTOR)?;
    Ok(Added {
        part: Part {
            number: slot as u32 + 1,
            start_lba: start,
            sectors: want,
            kind: BASIC_DATA.into(),
            maybe_fat: true,
            name: name.into(),
        },
        grew,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_round_trip() {
        assert_eq!(guid_text(&guid_bytes(BASIC_DATA)), BASIC_DATA);
        assert_eq!(guid_bytes(BASIC_DATA)[0], 0xa2);
    }
}
