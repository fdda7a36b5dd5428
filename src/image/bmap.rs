//! Block maps in bmaptool's XML format, version 2.0 (what `bmaptool copy --bmap` reads).
//!
//! Facts from bmap-tools: `ImageSize`, `BlockSize`, `BlocksCount` (= ceil(size / block)), `MappedBlocksCount`,
//! `ChecksumType` (`sha256`), `BmapFileChecksum` = SHA-256 of the whole bmap file with that field's value
//! replaced by 64 ASCII `0`, and `<Range chksum="…"> first-last </Range>` (or a single block number), where a
//! range's checksum covers bytes `first*block .. min((last+1)*block, size)`.

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

pub const BLOCK: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub first: u64,
    pub last: u64,
    /// SHA-256 hex of the range's bytes.
    pub sha256: String,
}

impl Range {
    /// Byte range `[start, end)` of this block range inside an image of `size` bytes.
    pub fn bytes(&self, block: u64, size: u64) -> (u64, u64) {
        (self.first * block, ((self.last + 1) * block).min(size))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    pub image_size: u64,
    pub block_size: u64,
    pub ranges: Vec<Range>,
}

impl Bmap {
    pub fn blocks_count(&self) -> u64 {
        self.image_size.div_ceil(self.block_size)
    }
    pub fn mapped_blocks(&self) -> u64 {
        self.ranges.iter().map(|r| r.last - r.first + 1).sum()
    }
    /// Mapped bytes (clipped to the image size).
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .map(|r| {
                let (a, b) = r.bytes(self.block_size, self.image_size);
                b - a
            })
            .sum()
    }
    /// The unmapped byte ranges `[start, end)` of the image, in order.
    pub fn unmapped(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut pos = 0;
        for r in &self.ranges {
            let (a, b) = r.bytes(self.block_size, self.image_size);
            if a > pos {
                out.push((pos, a));
            }
            pos = b;
        }
        if pos < self.image_size {
            out.push((pos, self.image_size));
        }
        out
    }

    /// The XML text, byte-for-byte in bmaptool's layout, with the file checksum filled in.
    pub fn to_xml(&self) -> String {
        let size_h = human_size(self.image_size);
        let mapped = self.mapped_blocks();
        let mapped_size = mapped * self.block_size;
        let pct = if self.blocks_count() == 0 {
            0.0
        } else {
            mapped as f64 * 100.0 / self.blocks_count() as f64
        };
        let mut x = String::new();
        x.push_str("<?xml version=\"1.0\" ?>\n");
        x.push_str("<!-- Block map written by labforge (bmaptool format 2.0): the image's mapped blocks,\n");
        x.push_str(
            "     each range with its SHA-256. Blocks not listed read as zeros in the image;\n",
        );
        x.push_str(
            "     `labforge flash` zeroes them on the target, `bmaptool copy` skips them. -->\n\n",
        );
        let _ = writeln!(x, "<bmap version=\"2.0\">");
        let _ = writeln!(x, "    <!-- Image size in bytes: {size_h} -->");
        let _ = writeln!(x, "    <ImageSize> {} </ImageSize>\n", self.image_size);
        let _ = writeln!(x, "    <!-- Size of a block in bytes -->");
        let _ = writeln!(x, "    <BlockSize> {} </BlockSize>\n", self.block_size);
        let _ = writeln!(x, "    <!-- Count of blocks in the image file -->");
        let _ = writeln!(
            x,
            "    <BlocksCount> {} </BlocksCount>\n",
            self.blocks_count()
        );
        let _ = writeln!(
            x,
            "    <!-- Count of mapped blocks: {} or {pct:.1}% -->",
            human_size(mapped_size)
        );
        let _ = writeln!(x, "    <MappedBlocksCount> {mapped} </MappedBlocksCount>\n");
        let _ = writeln!(x, "    <!-- Type of checksum used in this file -->");
        let _ = writeln!(x, "    <ChecksumType> sha256 </ChecksumType>\n");
        let _ = writeln!(
            x,
            "    <!-- The checksum of this bmap file. When it is calculated, the value of"
        );
        let _ = writeln!(
            x,
            "         the checksum has be zero (all ASCII \"0\" symbols).  -->"
        );
        let _ = writeln!(
            x,
            "    <BmapFileChecksum> {} </BmapFileChecksum>\n",
            "0".repeat(64)
        );
        let _ = writeln!(
            x,
            "    <!-- The block map which consists of elements which may either be a"
        );
        let _ = writeln!(
            x,
            "         range of blocks or a single block. The 'chksum' attribute"
        );
        let _ = writeln!(
            x,
            "         (if present) is the checksum of this blocks range. -->"
        );
        let _ = writeln!(x, "    <BlockMap>");
        for r in &self.ranges {
            if r.first == r.last {
                let _ = writeln!(
                    x,
                    "        <Range chksum=\"{}\"> {} </Range>",
                    r.sha256, r.first
                );
            } else {
                let _ = writeln!(
                    x,
                    "        <Range chksum=\"{}\"> {}-{} </Range>",
                    r.sha256, r.first, r.last
                );
            }
        }
        x.push_str("    </BlockMap>\n</bmap>\n");
        let sum = hex::encode(Sha256::digest(x.as_bytes()));
        x.replacen(&"0".repeat(64), &sum, 1)
    }

    /// Parse and check a bmap: version 2.x, sha256, the file checksum, counts, ordered non-overlapping ranges.
    pub fn parse(text: &str, what: &str) -> Result<Bmap> {
        let doc = roxmltree::Document::parse(text)
            .with_context(|| format!("{what} is not a valid XML block map"))?;
        let root = doc.root_element();
        if root.tag_name().name() != "bmap" {
            bail!(
                "{what}: the root element is <{}>, not <bmap>",
                root.tag_name().name()
            );
        }
        let version = root.attribute("version").unwrap_or("");
        let major = version.split('.').next().unwrap_or("");
        if major != "2" && version != "1.4" {
            bail!("{what}: bmap format version `{version}` is not supported (labforge reads 2.x)");
        }
        let field = |name: &str| -> Result<String> {
            root.children()
                .find(|n| n.has_tag_name(name))
                .and_then(|n| n.text())
                .map(|t| t.trim().to_string())
                .ok_or_else(|| anyhow!("{what}: <{name}> is missing"))
        };
        let num = |name: &str| -> Result<u64> {
            field(name)?
                .parse()
                .map_err(|_| anyhow!("{what}: <{name}> is not a number"))
        };
        let cs_type = field("ChecksumType")?;
        if cs_type != "sha256" {
            bail!("{what}: checksum type `{cs_type}` is not supported (labforge uses sha256)");
        }
        let declared = field("BmapFileChecksum")?;
        if declared.len() != 64 {
            bail!("{what}: <BmapFileChecksum> is not a SHA-256");
        }
        let zeroed = text.replacen(&declared, &"0".repeat(64), 1);
        let actual = hex::encode(Sha256::digest(zeroed.as_bytes()));
        if actual != declared {
            bail!("{what}: the block map's own checksum does not match (declared {declared}, computed {actual}): the file was changed or damaged");
        }
        let image_size = num("ImageSize")?;
        let block_size = num("BlockSize")?;
        if block_size == 0 || block_size % 512 != 0 {
            bail!("{what}: block size {block_size} is not a multiple of 512");
        }
        let b = Bmap {
            image_size,
            block_size,
            ranges: Vec::new(),
        };
        if num("BlocksCount")? != b.blocks_count() {
            bail!("{what}: BlocksCount does not match ImageSize / BlockSize");
        }
        let map = root
            .children()
            .find(|n| n.has_tag_name("BlockMap"))
            .ok_or_else(|| anyhow!("{what}: <BlockMap> is missing"))?;
        let mut ranges = Vec::new();
        for r in map.children().filter(|n| n.has_tag_name("Range")) {
            let t = r.text().unwrap_or("").trim();
            let (first, last) = match t.split_once('-') {
                Some((a, b)) => (a.trim().parse::<u64>(), b.trim().parse::<u64>()),
                None => (t.parse::<u64>(), t.parse::<u64>()),
            };
            let (Ok(first), Ok(last)) = (first, last) else {
                bail!("{what}: range `{t}` is not `first-last`");
            };
            let sha = r.attribute("chksum").ok_or_else(|| {
                anyhow!("{what}: range {t} has no chksum (labforge verifies every range)")
            })?;
            if last < first || last >= b.blocks_count() {
                bail!(
                    "{what}: range {t} lies outside the image's {} blocks",
                    b.blocks_count()
                );
            }
            if let Some(prev) = ranges.last() {
                let prev: &Range = prev;
                if first <= prev.last {
                    bail!("{what}: range {t} overlaps or precedes the range before it");
                }
            }
            ranges.push(Range {
                first,
                last,
                sha256: sha.to_string(),
            });
        }
        let b = Bmap { ranges, ..b };
        if num("MappedBlocksCount")? != b.mapped_blocks() {
            bail!("{what}: MappedBlocksCount does not match the ranges");
        }
        Ok(b)
    }
}

/// bmaptool's human_size: `%.1f` with KiB..TiB, bytes below 512.
fn human_size(size: u64) -> String {
    if size == 1 {
        return "1 byte".into();
    }
    if size < 512 {
        return format!("{size} bytes");
    }
    let mut v = size as f64;
    for m in ["KiB", "MiB", "GiB", "TiB"] {
        v /= 1024.0;
        if v < 1024.0 {
            return format!("{v:.1} {m}");
        }
    }
    format!("{v:.1} EiB")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bmap {
        Bmap {
            image_size: 10 * 4096 + 512,
            block_size: 4096,
            ranges: vec![
                Range {
                    first: 0,
                    last: 2,
                    sha256: "a".repeat(64),
                },
                Range {
                    first: 5,
                    last: 5,
                    sha256: "b".repeat(64),
                },
                Range {
                    first: 9,
                    last: 10,
                    sha256: "c".repeat(64),
                },
            ],
        }
    }

    #[test]
    fn round_trip_and_self_checksum() {
        let b = sample();
        let x = b.to_xml();
        assert_eq!(Bmap::parse(&x, "t").unwrap(), b);
        assert_eq!(b.blocks_count(), 11);
        assert_eq!(b.mapped_bytes(), 3 * 4096 + 4096 + 4096 + 512);
        assert_eq!(
            b.unmapped(),
            vec![(3 * 4096, 5 * 4096), (6 * 4096, 9 * 4096)]
        );
        // A changed range must fail the file checksum.
        let bad = x.replacen("5 </Range>", "6 </Range>", 1);
        let e = Bmap::parse(&bad, "t").unwrap_err().to_string();
        assert!(e.contains("own checksum"), "{e}");
    }
}
