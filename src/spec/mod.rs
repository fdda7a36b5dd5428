//! The spec: loading `hosts/*.toml`, merging the files, and validating into [`model::Spec`].

pub(crate) mod convert;
pub mod deps;
pub mod model;
pub mod raw;
pub mod rules;
pub mod services;
pub mod source;
pub mod ssh_algos;
pub mod strings;
mod validate;

use crate::diag::{Diagnostic, Diagnostics};
use raw::{RawFile, S};
use source::{FileId, Loc, SourceMap};
use std::collections::BTreeMap;
use std::path::Path;

pub use model::Spec;

/// A definition together with the file it came from.
pub struct Def<T> {
    pub file: FileId,
    pub key: S<String>,
    pub value: S<T>,
}

/// All spec files merged: one namespace per table, each entry remembering its file.
#[derive(Default)]
pub struct Merged {
    pub site: Option<(FileId, S<raw::RawSite>)>,
    pub networks: BTreeMap<String, Def<raw::RawNetwork>>,
    pub roles: BTreeMap<String, Def<raw::RawLayer>>,
    pub tags: BTreeMap<String, Def<raw::RawLayer>>,
    pub hosts: BTreeMap<String, Def<raw::RawHost>>,
    pub stacks: BTreeMap<String, Def<raw::RawStack>>,
    pub clusters: BTreeMap<String, Def<raw::RawCluster>>,
    pub secrets: BTreeMap<String, Def<raw::RawSecret>>,
    pub gates: BTreeMap<String, Def<raw::RawGate>>,
    /// Field paths whose value was missing or failed to convert (already reported; see [`convert`]).
    pub broken: convert::Broken,
}

/// The outcome of loading: the model if there were no errors, and every diagnostic either way.
pub struct Loaded {
    pub spec: Option<Spec>,
    pub diagnostics: Diagnostics,
    pub sources: SourceMap,
}

/// Load and validate the spec in `dir`: every `*.toml` below it, in sorted path order.
pub fn load_dir(dir: &Path) -> anyhow::Result<Loaded> {
    use anyhow::Context;
    let mut files = Vec::new();
    collect_toml(dir, &mut files)
        .with_context(|| format!("reading spec directory {}", dir.display()))?;
    if files.is_empty() {
        anyhow::bail!(
            "no spec files (*.toml) in {} — create {}/site.toml or pass --spec DIR",
            dir.display(),
            dir.display()
        );
    }
    files.sort();
    let mut inputs = Vec::new();
    for f in files {
        let text =
            std::fs::read(&f).with_context(|| format!("reading spec file {}", f.display()))?;
        inputs.push((f, text));
    }
    Ok(load_bytes(
        inputs.iter().map(|(p, t)| (p.as_path(), t.as_slice())),
    ))
}

fn collect_toml(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        let ft = e.file_type()?;
        if ft.is_dir() {
            collect_toml(&p, out)?;
        } else if p.extension().and_then(|x| x.to_str()) == Some("toml") {
            out.push(p);
        }
    }
    Ok(())
}

/// Load from in-memory files (used by the fuzzer and tests). Never panics on any input.
pub fn load_bytes<'a>(inputs: impl IntoIterator<Item = (&'a Path, &'a [u8])>) -> Loaded {
    let mut sources = SourceMap::default();
    let mut diags = Vec::new();
    let mut merged = Merged::default();
    let cwd = std::env::current_dir().ok();
    for (path, bytes) in inputs {
        // Show paths relative to the working directory when they are below it.
        let display = cwd
            .as_ref()
            .and_then(|c| path.strip_prefix(c).ok())
            .unwrap_or(path)
            .display()
            .to_string();
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t.to_string(),
            Err(e) => {
                let valid = e.valid_up_to();
                let id = sources.add(path, display, String::from_utf8_lossy(bytes).into_owned());
                diags.push(
                    Diagnostic::error(
                        "SPEC001",
                        "",
                        format!("file is not valid UTF-8 (at byte {valid})"),
                    )
                    .at(Some(Loc::new(id, valid..valid + 1)))
                    .help("save the file as UTF-8"),
                );
                continue;
            }
        };
        let id = sources.add(path, display, text);
        let text = &sources.files[id].text;
        strings::check_file(id, text, &mut diags);
        match toml::de::DeTable::parse(text) {
            Ok(root) => {
                let mut cx = convert::Cx {
                    file: id,
                    text,
                    diags: &mut diags,
                    broken: &mut merged.broken,
                };
                let file: RawFile = convert::file(&mut cx, root);
                merge_file(&mut merged, id, file, &mut diags, &sources);
            }
            Err(e) => diags.push(parse_error(id, text, &e)),
        }
    }
    headless_hosts(&mut merged, &mut diags);
    if merged.site.is_none()
        && !merged.broken.covers("site")
        && !diags
            .iter()
            .any(|d| d.rule == "SPEC001" || d.rule == "SPEC002" || d.rule == "SPEC003")
    {
        diags.push(
            Diagnostic::error("SPEC005", "site", "no [site] table in any spec file")
                .help("add a [site] table with name, domain, timezone and admins (see README: spec reference)"),
        );
    }
    // Validation sees stand-ins for broken values: whatever it says at or below a broken path is a
    // follow-on error of a mistake already reported.
    let mut checked = Vec::new();
    let spec = validate::validate(&merged, &sources, &mut checked);
    diags.extend(
        checked
            .into_iter()
            .filter(|d| d.path.is_empty() || !merged.broken.covers(&d.path)),
    );
    if let Some(s) = &spec {
        // The same rule for the rules over the validated model: silent at or below a broken path.
        diags.extend(
            deps::diagnostics(s)
                .into_iter()
                .chain(services::diagnostics(s))
                .filter(|d| d.path.is_empty() || !merged.broken.covers(&d.path)),
        );
    }
    strings::dedupe(&mut diags);
    let diagnostics = Diagnostics::from_list(diags, &sources);
    let spec = if diagnostics.has_errors() { None } else { spec };
    Loaded {
        spec,
        diagnostics,
        sources,
    }
}

fn merge_file(
    m: &mut Merged,
    file: FileId,
    f: RawFile,
    diags: &mut Vec<Diagnostic>,
    sources: &SourceMap,
) {
    let where_ = |fid: FileId, span: std::ops::Range<usize>| {
        let (name, line, col) = sources.line_col(Loc::new(fid, span));
        format!("{name}:{line}:{col}")
    };
    if let Some(site) = f.site {
        if let Some((prev, ps)) = &m.site {
            diags.push(
                Diagnostic::error("SPEC004", "site", "[site] is defined in more than one file")
                    .at(Some(Loc::new(file, site.span())))
                    .help(format!(
                        "keep one [site] table; the first one is at {}",
                        where_(*prev, ps.span())
                    )),
            );
        } else {
            m.site = Some((file, site));
        }
    }
    fn put_table<T>(
        table: &str,
        dst: &mut BTreeMap<String, Def<T>>,
        file: FileId,
        src: raw::Map<T>,
        diags: &mut Vec<Diagnostic>,
        where_: &dyn Fn(FileId, std::ops::Range<usize>) -> String,
    ) {
        for (k, v) in src {
            let name = k.get_ref().clone();
            if let Some(prev) = dst.get(&name) {
                // Hostnames get their own rule: two machines claiming one name is an inventory error.
                let (rule, what) = if table == "hosts" {
                    ("SPEC014", format!("duplicate hostname `{name}`"))
                } else {
                    (
                        "SPEC004",
                        format!("{table}.{name} is defined more than once"),
                    )
                };
                diags.push(
                    Diagnostic::error(rule, format!("{table}.{name}"), what)
                        .at(Some(Loc::new(file, k.span())))
                        .help(format!(
                            "first defined at {}; rename one or merge the two definitions",
                            where_(prev.file, prev.key.span())
                        )),
                );
                continue;
            }
            dst.insert(
                name,
                Def {
                    file,
                    key: k,
                    value: v,
                },
            );
        }
    }
    put_table(
        "networks",
        &mut m.networks,
        file,
        f.networks,
        diags,
        &where_,
    );
    put_table("roles", &mut m.roles, file, f.roles, diags, &where_);
    put_table("tags", &mut m.tags, file, f.tags, diags, &where_);
    put_table("hosts", &mut m.hosts, file, f.hosts, diags, &where_);
    put_table("stacks", &mut m.stacks, file, f.stacks, diags, &where_);
    put_table(
        "clusters",
        &mut m.clusters,
        file,
        f.clusters,
        diags,
        &where_,
    );
    put_table("secrets", &mut m.secrets, file, f.secrets, diags, &where_);
    put_table("gates", &mut m.gates, file, f.gates, diags, &where_);
}

/// A host only named by its sub-tables' headers (`[hosts.pi1.interfaces.eth0]` without `[hosts.pi1]`, most
/// often after renaming the host's header) gets one error, not one per setting it lacks.
fn headless_hosts(m: &mut Merged, diags: &mut Vec<Diagnostic>) {
    let explicit: Vec<String> = m
        .hosts
        .iter()
        .filter(|(n, _)| !m.broken.headless.contains_key(&format!("hosts.{n}")))
        .map(|(n, _)| n.clone())
        .collect();
    for (name, d) in &m.hosts {
        let p = format!("hosts.{name}");
        if m.broken.headless.get(&p) != Some(&(d.file, d.value.span())) {
            continue;
        }
        let names: Vec<&str> = explicit.iter().map(|s| s.as_str()).collect();
        let renamed = match closest(name, &names) {
            Some(n) => format!("; if it is [hosts.{n}], rename these tables to [hosts.{n}.…]"),
            None => String::new(),
        };
        diags.push(
            Diagnostic::error(
                "SPEC005",
                &p,
                format!("there is no [hosts.{name}] table, only tables below it"),
            )
            .at(Some(Loc::new(d.file, d.value.span())))
            .help(format!(
                "add [hosts.{name}] with os, arch, board and role{renamed}"
            )),
        );
    }
    let mut marks: Vec<String> = Vec::new();
    for (n, d) in &m.hosts {
        if m.broken.headless.get(&format!("hosts.{n}")) != Some(&(d.file, d.value.span())) {
            continue;
        }
        marks.push(format!("hosts.{n}"));
        // The renamed header's host lacks what stayed below the old name: that is this same mistake.
        let names: Vec<&str> = explicit.iter().map(|s| s.as_str()).collect();
        if let Some(other) = closest(n, &names).and_then(|o| m.hosts.get(o).map(|od| (o, od))) {
            let (o, od) = other;
            if od.value.get_ref().interfaces.is_empty() && !d.value.get_ref().interfaces.is_empty()
            {
                marks.push(format!("hosts.{o}.interfaces"));
            }
        }
    }
    for p in marks {
        m.broken.mark(&p);
    }
}

/// Turn a TOML syntax error (the document does not parse) into a located diagnostic with a fix. Type and
/// key errors never get here: [`convert`] reports those field by field.
fn parse_error(file: FileId, text: &str, e: &toml::de::Error) -> Diagnostic {
    let msg = e.message().trim().to_string();
    let span = e.span().unwrap_or(0..0);
    let path = field_path_at(text, span.start);
    let (rule, help) = if msg.contains("duplicate key") {
        (
            "SPEC004",
            "a key may appear once per table; remove or rename the repeated one",
        )
    } else {
        (
            "SPEC001",
            "fix the TOML syntax at this position (see https://toml.io)",
        )
    };
    let mut d = Diagnostic::error(rule, path, msg).help(help);
    d.loc = Some(Loc::new(file, span));
    d
}

/// Best effort dotted key path at a byte offset: the nearest `[table]` header above plus the key on the line.
fn field_path_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let mut table = String::new();
    let before = text.get(..offset).unwrap_or("");
    for line in before.lines() {
        let t = line.trim();
        if let Some(h) = t.strip_prefix("[[").and_then(|s| s.split("]]").next()) {
            table = h.trim().to_string();
        } else if let Some(h) = t.strip_prefix('[').and_then(|s| s.split(']').next()) {
            table = h.trim().to_string();
        }
    }
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.starts_with('['))
        .unwrap_or_default();
    match (table.is_empty(), key.is_empty()) {
        (true, _) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

/// The closest candidate by edit distance, if close enough to be a typo.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min()
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
