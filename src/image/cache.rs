//! Verified-base cache: a raw base already hashed against its pin is not hashed again while the file is
//! provably unchanged.
//!
//! An entry is `out/cache/verified-bases/<device>-<inode>.json` (beside the download cache
//! `out/cache/images/`) recording the file's identity — device, inode, size, mtime and ctime in
//! nanoseconds — and the SHA-256 labforge *computed* for it. It is used only when all of these match the
//! file as opened now **and** the recorded SHA-256 equals the declaration's pin, so:
//!
//! * a changed file changes its ctime (which no user can set back) and usually its mtime and size: it is
//!   re-verified; a file replaced by another (rename over it, copy) has another inode;
//! * a changed pin (or another declaration naming the same file) finds a recorded hash that differs from
//!   the pin: the file is hashed again and the mismatch is reported as always — an entry can only ever
//!   confirm the hash it recorded, never make a mismatched base pass;
//! * an entry is written only for a file whose mtime and ctime were at least [`SETTLE`] old when hashing
//!   began and that did not change while it was hashed (same identity before and after). A change in the
//!   same clock tick as the previous one could keep the ctime (file systems stamp with a coarse clock);
//!   the margin rules that out, as git does for racily clean index entries.
//!
//! Trust: the cache directory is the operator's, like `images/*.toml` that holds the pins; whoever can
//! write there can also change a pin. Entries are small JSON files; deleting the directory is always safe.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How old a file's last change must be before its hash is cached (covers coarse and 2 s FAT clocks).
pub const SETTLE: Duration = Duration::from_secs(2);

const VERSION: u32 = 1;

/// A file's identity: what changes when its contents can have changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    format_version: u32,
    /// For humans: the path it was verified under.
    file: String,
    key: Key,
    /// The SHA-256 labforge computed over the whole file.
    sha256: String,
}

impl Key {
    pub fn of(f: &File) -> std::io::Result<Key> {
        let m = f.metadata()?;
        Ok(Key {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        })
    }
    /// Whether the last change is at least [`SETTLE`] before `now` (and not in the future).
    pub fn settled(&self, now: SystemTime) -> bool {
        let now_ns = match now.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(_) => return false,
        };
        let limit = now_ns - SETTLE.as_nanos() as i128;
        self.mtime_ns <= limit && self.ctime_ns <= limit
    }
}

/// The cache directory for bases declared under `root` (the repository root).
pub fn dir(root: &Path) -> PathBuf {
    root.join("out/cache/verified-bases")
}

fn entry_path(dir: &Path, k: &Key) -> PathBuf {
    dir.join(format!("{:x}-{}.json", k.dev, k.ino))
}

/// Whether `dir` holds an entry for exactly this file identity whose computed hash is `pinned`.
pub fn confirms(dir: &Path, k: &Key, pinned: &str) -> bool {
    let Ok(text) = std::fs::read(entry_path(dir, k)) else {
        return false;
    };
    let Ok(e) = serde_json::from_slice::<Entry>(&text) else {
        return false;
    };
    e.format_version == VERSION && &e.key == k && e.sha256 == pinned
}

/// Record that the file with identity `k` hashed to `sha256` (replacing an older entry for its inode).
pub fn record(dir: &Path, k: &Key, sha256: &str, file: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let e = Entry {
        format_version: VERSION,
        file: file.display().to_string(),
        key: k.clone(),
        sha256: sha256.to_string(),
    };
    let mut json = serde_json::to_vec_pretty(&e)?;
    json.push(b'\n');
    crate::render::write_atomic(&entry_path(dir, k), &json, 0o644)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_needs_both_times_old_enough() {
        let k = Key {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 10_000_000_000,
            ctime_ns: 10_000_000_000,
        };
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        assert!(k.settled(at(12)));
        assert!(!k.settled(at(11)));
        let k2 = Key {
            ctime_ns: 11_500_000_000,
            ..k.clone()
        };
        assert!(!k2.settled(at(13)));
        assert!(k2.settled(at(14)));
    }

    #[test]
    fn an_entry_confirms_only_its_own_identity_and_hash() {
        let t = tempfile::tempdir().unwrap();
        let f = File::create(t.path().join("b")).unwrap();
        let k = Key::of(&f).unwrap();
        let d = t.path().join("c");
        assert!(!confirms(&d, &k, "aa"));
        record(&d, &k, "aa", &t.path().join("b")).unwrap();
        assert!(confirms(&d, &k, "aa"));
        assert!(!confirms(&d, &k, "bb"), "another pin is not confirmed");
        let other = Key {
            ctime_ns: k.ctime_ns + 1,
            ..k.clone()
        };
        assert!(!confirms(&d, &other, "aa"), "a changed ctime is a miss");
        let other = Key {
            size: k.size + 1,
            ..k.clone()
        };
        assert!(!confirms(&d, &other, "aa"));
        // A damaged entry is a miss, not an error.
        std::fs::write(entry_path(&d, &k), b"{").unwrap();
        assert!(!confirms(&d, &k, "aa"));
    }
}
