//! The spec's source files and byte-offset → line:column mapping.

use std::ops::Range;
use std::path::{Path, PathBuf};

/// Index of a file in a [`SourceMap`].
pub type FileId = usize;

/// A location in the spec: a file and a byte range in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Loc {
    pub file: FileId,
    pub start: usize,
    pub end: usize,
}

impl Loc {
    pub fn new(file: FileId, span: Range<usize>) -> Self {
        Loc {
            file,
            start: span.start,
            end: span.end,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path as shown to the user (relative to the current directory where possible).
    pub display: String,
    pub path: PathBuf,
    pub text: String,
    line_starts: Vec<usize>,
}

#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    pub files: Vec<SourceFile>,
}

impl SourceMap {
    pub fn add(&mut self, path: &Path, display: String, text: String) -> FileId {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        self.files.push(SourceFile {
            display,
            path: path.to_path_buf(),
            text,
            line_starts,
        });
        self.files.len() - 1
    }

    pub fn name(&self, file: FileId) -> &str {
        &self.files[file].display
    }

    /// 1-based line and column (in characters) of `loc.start`.
    pub fn line_col(&self, loc: Loc) -> (&str, usize, usize) {
        let f = &self.files[loc.file];
        let start = loc.start.min(f.text.len());
        let line = match f.line_starts.binary_search(&start) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let ls = f.line_starts[line];
        let col = char_count(&f.text, ls, start) + 1;
        (&f.display, line + 1, col)
    }

    /// The source line of `loc` with its 1-based number, the 1-based column and the width to underline.
    pub fn snippet(&self, loc: Loc) -> Option<(usize, String, usize, usize)> {
        let f = self.files.get(loc.file)?;
        let (_, line, col) = self.line_col(loc);
        let ls = f.line_starts[line - 1];
        let le = f.text[ls..]
            .find('\n')
            .map(|i| ls + i)
            .unwrap_or(f.text.len());
        let text = f.text[ls..le].trim_end_matches('\r').to_string();
        let end = loc.end.clamp(loc.start.min(le), le);
        let width = char_count(&f.text, loc.start.min(le), end);
        Some((line, text, col, width))
    }

    /// A file's name for generated-file headers: `<spec dir>/<path below it>` (e.g. `hosts/stacks/dns.toml`),
    /// independent of the working directory, so renders are byte-identical wherever labforge runs.
    pub fn spec_name(&self, file: FileId) -> String {
        let mut common: Option<PathBuf> = None;
        for f in &self.files {
            let dir = f.path.parent().unwrap_or(Path::new("")).to_path_buf();
            common = Some(match common {
                None => dir,
                Some(c) => c
                    .components()
                    .zip(dir.components())
                    .take_while(|(a, b)| a == b)
                    .map(|(a, _)| a)
                    .collect(),
            });
        }
        let common = common.unwrap_or_default();
        let base = std::fs::canonicalize(&common)
            .ok()
            .and_then(|c| c.file_name().map(|n| n.to_string_lossy().into_owned()))
            .or_else(|| common.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "spec".into());
        let p = &self.files[file].path;
        let rel = p.strip_prefix(&common).unwrap_or(p);
        format!("{base}/{}", rel.to_string_lossy().replace('\\', "/"))
    }

    /// Sorted, de-duplicated [`Self::spec_name`]s of some files.
    pub fn spec_names(&self, files: impl IntoIterator<Item = FileId>) -> Vec<String> {
        let set: std::collections::BTreeSet<FileId> = files
            .into_iter()
            .filter(|f| *f < self.files.len())
            .collect();
        let mut v: Vec<String> = set.into_iter().map(|f| self.spec_name(f)).collect();
        v.sort();
        v.dedup();
        v
    }

    /// The spec revision: a hash over every file's name and contents, in load order.
    pub fn revision(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for f in &self.files {
            h.update(f.display.as_bytes());
            h.update([0]);
            h.update(f.text.as_bytes());
            h.update([0]);
        }
        hex::encode(&h.finalize()[..8])
    }
}

fn char_count(text: &str, from: usize, to: usize) -> usize {
    let mut from = from.min(text.len());
    let mut to = to.min(text.len());
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    while !text.is_char_boundary(to) {
        to -= 1;
    }
    text[from..to.max(from)].chars().count()
}
