//! Spanned TOML values → raw spec types, field by field.
//!
//! Each file is first parsed into toml's spanned value tree ([`DeTable`]); the raw types of [`super::raw`] are
//! then filled one field at a time. A mistake in one field gives exactly one diagnostic — with the full field
//! path, the location of the offending value and a fix — and never drops its table, its file or its siblings:
//! the field is treated as absent (optional fields) or given a stand-in value (required fields), and its path
//! is recorded in [`Broken`] so that nothing downstream reports the same mistake again.
//!
//! This replaces a serde derive (`deny_unknown_fields`): serde stops at the first error of a file, names Rust
//! types (`i64`, `map`) and points at table headers.

use super::source::{FileId, Loc};
use super::validate::elide;
use crate::diag::Diagnostic;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Field paths whose value failed to convert (or is missing). Diagnostics at or below them are follow-on
/// errors of one already reported mistake.
#[derive(Debug, Default, Clone)]
pub struct Broken {
    paths: BTreeSet<String>,
    /// Tables never written themselves, only named by their sub-tables' headers (`[hosts.x.interfaces.eth0]`
    /// without `[hosts.x]`): usually a renamed or mistyped header.
    pub headless: BTreeMap<String, (FileId, Range<usize>)>,
}

impl Broken {
    pub fn mark(&mut self, path: &str) {
        self.paths.insert(path.to_string());
    }

    /// True when `path` is a broken value or lies inside one.
    pub fn covers(&self, path: &str) -> bool {
        self.paths.iter().any(|b| is_within(path, b))
    }

    /// True when some broken value lies at or below `prefix` (the thing at `prefix` is incomplete).
    pub fn under(&self, prefix: &str) -> bool {
        self.paths.iter().any(|b| is_within(b, prefix))
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
}

/// `path` equals `base` or is a field/element below it.
fn is_within(path: &str, base: &str) -> bool {
    path == base
        || (path.starts_with(base)
            && matches!(path.as_bytes().get(base.len()), Some(b'.') | Some(b'[')))
}

/// The conversion context of one file.
pub struct Cx<'a> {
    pub file: FileId,
    pub text: &'a str,
    pub diags: &'a mut Vec<Diagnostic>,
    pub broken: &'a mut Broken,
}

impl Cx<'_> {
    fn loc(&self, span: Range<usize>) -> Option<Loc> {
        Some(Loc::new(self.file, span))
    }

    /// The source text of a value, shortened for a message.
    fn shown(&self, v: &Spanned<DeValue>) -> String {
        let raw = self.text.get(v.span()).unwrap_or("").trim();
        printable(&elide(&raw.replace(['\n', '\r', '\t'], " ")))
    }

    /// Report a value of the wrong kind.
    pub fn wrong_type(&mut self, path: &str, v: &Spanned<DeValue>, want: &Want) {
        let found = match v.get_ref() {
            DeValue::String(_) => format!("a string ({})", self.shown(v)),
            DeValue::Integer(_) => format!("an integer ({})", self.shown(v)),
            DeValue::Float(_) => format!("a decimal number ({})", self.shown(v)),
            DeValue::Boolean(b) => format!("`{b}`"),
            DeValue::Datetime(_) => format!("a date-time ({})", self.shown(v)),
            DeValue::Array(_) => "a list".to_string(),
            DeValue::Table(_) => "a table".to_string(),
        };
        // `key = ` for a field, nothing for a list element (the fix is the element itself).
        let key = if path.ends_with(']') {
            String::new()
        } else {
            format!("{} = ", last_key(path))
        };
        let help = match (want, v.get_ref()) {
            (Want::Str, DeValue::Datetime(_)) => format!(
                "TOML reads an unquoted date as a date-time; quote it: {key}\"{}\"",
                self.shown(v)
            ),
            (Want::Str, DeValue::Integer(_) | DeValue::Float(_) | DeValue::Boolean(_)) => {
                format!("quote it: {key}\"{}\"", self.shown(v))
            }
            (Want::Str, _) => format!("write a string in double quotes: {key}\"…\""),
            (Want::Int, DeValue::Float(f)) => {
                let whole = f
                    .as_str()
                    .replace('_', "")
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && x.abs() < 1e15)
                    .map(|x| x.trunc() as i64)
                    .unwrap_or(1);
                format!("write a whole number without a decimal point, e.g. {key}{whole}")
            }
            (Want::Int, DeValue::String(s)) if s.trim().parse::<i64>().is_ok() => {
                format!("drop the quotes: {key}{}", s.trim())
            }
            (Want::Int, _) => format!("write a whole number without quotes, e.g. {key}22"),
            (Want::Bool, DeValue::String(s)) if matches!(s.as_ref(), "true" | "false") => {
                format!("drop the quotes: {key}{s}")
            }
            (Want::Bool, _) => format!("write true or false, without quotes: {key}true"),
            (Want::List(inner), DeValue::String(_)) if **inner == Want::Str => {
                format!("wrap it in a list: {key}[{}]", self.shown(v))
            }
            (Want::List(inner), DeValue::Table(_)) if **inner == Want::Table => {
                format!("put the table in a list: {key}[{{ … }}], or write it as [[{path}]]")
            }
            (Want::List(_), _) => format!("write a list in brackets: {key}[ … ]"),
            (Want::Table, _) if key.is_empty() => {
                "write a table in braces: { key = … }".to_string()
            }
            (Want::Table, _) => {
                format!("write a table: a [{path}] section with its keys below it, or {key}{{ … }}")
            }
        };
        self.diags.push(
            Diagnostic::error(
                "SPEC003",
                path,
                format!("expected {}, found {found}", want.describe()),
            )
            .at(self.loc(v.span()))
            .help(help),
        );
        self.broken.mark(path);
    }

    /// Report a value of the right kind that cannot be used (e.g. an integer too large).
    fn bad_value(&mut self, path: &str, v: &Spanned<DeValue>, msg: String, help: &str) {
        self.diags.push(
            Diagnostic::error("SPEC003", path, msg)
                .at(self.loc(v.span()))
                .help(help),
        );
        self.broken.mark(path);
    }

    /// Report every key of `t` that is not in `keys` (each one, with a did-you-mean or the allowed keys).
    pub fn unknown_keys(&mut self, path: &str, t: &DeTable, keys: &[&str]) {
        for (k, _) in t.iter() {
            let name: &str = k.get_ref();
            if keys.contains(&name) {
                continue;
            }
            let p = join(path, name);
            let help = match super::closest(name, keys) {
                Some(s) => format!("did you mean `{s}`? unknown keys are errors in the spec"),
                None => format!("remove it; allowed keys here: {}", keys.join(", ")),
            };
            let what = if path.is_empty() {
                format!("unknown table `{}`", printable(&elide(name)))
            } else {
                format!("unknown key `{}`", printable(&elide(name)))
            };
            self.diags.push(
                Diagnostic::error("SPEC002", p, what)
                    .at(self.loc(k.span()))
                    .help(help),
            );
        }
    }

    /// True when the table `v` is never written itself, only named by its sub-tables' headers; recorded.
    pub fn headless(&mut self, path: &str, v: &Spanned<DeValue>, t: &DeTable) -> bool {
        let span = v.span();
        let written = span.is_empty()
            || matches!(self.text.get(span.clone()), Some(s) if s.starts_with('[') || s.starts_with('{'))
            || t.iter().any(|(_, e)| match e.get_ref() {
                DeValue::Table(_) => false,
                DeValue::Array(a) => !a.iter().all(|x| x.get_ref().is_table()),
                _ => true,
            });
        if !written {
            self.broken
                .headless
                .insert(path.to_string(), (self.file, span));
        }
        !written
    }

    /// One field of a table: converted, or absent, or (required and missing/broken) a stand-in. A missing
    /// required key is reported, or only collected in `quiet` (for a headless table: one error names it).
    pub fn field<T: FromToml>(
        &mut self,
        path: &str,
        t: &DeTable,
        key: &str,
        table_span: &Range<usize>,
        quiet: &mut Option<Vec<String>>,
    ) -> T {
        let p = join(path, key);
        match t.iter().find(|(k, _)| k.get_ref().as_ref() == key) {
            None => match T::absent() {
                Some(v) => v,
                None if quiet.is_some() => {
                    if let Some(q) = quiet.as_mut() {
                        q.push(key.to_string());
                    }
                    self.broken.mark(&p);
                    T::stand_in(table_span.clone())
                }
                None => {
                    let table = if path.is_empty() {
                        "the file".to_string()
                    } else {
                        format!("[{path}]")
                    };
                    self.diags.push(
                        Diagnostic::error("SPEC005", &p, format!("`{key}` is missing"))
                            .at(self.loc(table_span.clone()))
                            .help(format!(
                                "add `{key} = …` ({}) to {table}",
                                T::want().describe()
                            )),
                    );
                    self.broken.mark(&p);
                    T::stand_in(table_span.clone())
                }
            },
            Some((_, v)) => match T::from_toml(self, &p, v) {
                Some(x) => x,
                None => {
                    self.broken.mark(&p);
                    T::absent().unwrap_or_else(|| T::stand_in(v.span()))
                }
            },
        }
    }

    /// One error for a headless table that needs keys of its own (instead of one per missing key).
    pub fn never_written(&mut self, path: &str, span: &Range<usize>, missing: &[String]) {
        self.diags.push(
            Diagnostic::error(
                "SPEC005",
                path,
                format!("there is no [{path}] table, only tables below it"),
            )
            .at(self.loc(span.clone()))
            .help(format!(
                "add [{path}] with {} — or, if it was renamed, rename the tables below it too",
                missing.join(", ")
            )),
        );
        self.broken.mark(path);
    }

    /// The table inside `v`, or a wrong-type diagnostic.
    pub fn table<'v, 'i>(
        &mut self,
        path: &str,
        v: &'v Spanned<DeValue<'i>>,
    ) -> Option<&'v DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.wrong_type(path, v, &Want::Table);
                None
            }
        }
    }
}

/// Control characters shown as escapes: a message never carries them to the terminal.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `a.b` + `c` → `a.b.c`.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn last_key(path: &str) -> &str {
    let tail = path.rsplit('.').next().unwrap_or(path);
    tail.split('[').next().unwrap_or(tail)
}

/// What a field takes, in the words of the README (never a Rust type name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    Str,
    Int,
    Bool,
    Table,
    List(Box<Want>),
}

impl Want {
    pub fn describe(&self) -> String {
        match self {
            Want::Str => "a string".into(),
            Want::Int => "an integer".into(),
            Want::Bool => "true or false".into(),
            Want::Table => "a table".into(),
            Want::List(inner) => match **inner {
                Want::Str => "a list of strings".into(),
                Want::Int => "a list of integers".into(),
                Want::Bool => "a list of true/false values".into(),
                Want::Table => "a list of tables".into(),
                _ => "a list".into(),
            },
        }
    }
}

/// A raw spec value that can be read from a spanned TOML value.
pub trait FromToml: Sized {
    /// What the field takes (for messages).
    fn want() -> Want;
    /// Convert `v` (at field path `path`). On failure, report exactly one diagnostic per mistake and
    /// return `None`; the caller marks `path` broken.
    fn from_toml(cx: &mut Cx, path: &str, v: &Spanned<DeValue>) -> Option<Self>;
    /// The value of a key that is not written; `None` when the key is required.
    fn absent() -> Option<Self> {
        None
    }
    /// A stand-in for a required value that is missing or failed to convert (its path is broken).
    fn stand_in(span: Range<usize>) -> Self;
}

impl FromToml for String {
    fn want() -> Want {
        Want::Str
    }
    fn from_toml(cx: &mut Cx, path: &str, v: &Spanned<DeValue>) -> Option<Self> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => {
                cx.wrong_type(path, v, &Want::Str);
                None
            }
        }
    }
    fn stand_in(_: Range<usize>) -> Self {
        String::new()
    }
}

impl FromToml for i64 {
    fn want() -> Want {
        Want::Int
    }
    fn from_toml(cx: &mut Cx, path: &str, v: &Spanned<DeValue>) -> Option<Self> {
        match v.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(n),
                Err(_) => {
                    let shown = cx.shown(v);
                    cx.bad_value(
                        path,
                        v,
                        format!("the integer {shown} is too large"),
                        "use a number the field's range allows (see the README spec reference)",
                    );
                    None
                }
            },
            _ => {
                cx.wrong_type(path, v, &Want::Int);
                None
            }
        }
    }
    fn stand_in(_: Range<usize>) -> Self {
        0
    }
}

impl FromToml for bool {
    fn want() -> Want {
        Want::Bool
    }
    fn from_toml(cx: &mut Cx, path: &str, v: &Spanned<DeValue>) -> Option<Self> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                cx.wrong_type(path, v, &Want::Bool);
                None
            }
        }
    }
    fn stand_in(_: Range<usize>) -> Self {
        false
    }
}

impl<T: FromToml> FromToml for Spanned<T> {
    fn want() -> Want {
        T::want()
    }
    fn from_toml(cx: &mut Cx, path: &str, v: &Spanned<DeValue>) -> Option<Self> {
        T::from_toml(cx, path, v).map(|x| Spanned::new(v.span(), x))
    }
    fn absent() -> Option<Self> {
        T::absent().map(|x| Spanned::new(0..0, x))
    }
    fn stand_in(span: Range<usize>) -> Self {
        Spanned::new(span.clone(), T::stand_in(span))
    }
}

impl<T: FromToml> FromToml for Option<T> {
    fn want() -> Want {
        T::want()
    }
    fn from_toml(cx: &mut Cx, path: &str, v: &Spanned<DeValue>) -> Option<Self> {
        T::from_toml(cx, path, v).map(Some)
    }
    fn absent() -> Option<Self> {
        Some(None)
    }
    fn stand_in(_: Range<usize>) -> Self {
        None
    }
}

impl<T: FromToml> FromToml for Vec<T> {
    fn want() -> Want {
        Want::List(Box::new(T::want()))
    }
    fn from_toml(cx: &mut Cx, path: &str, v: &Spanned<DeValue>) -> Option<Self> {
        let DeValue::Array(a) = v.get_ref() else {
            cx.wrong_type(path, v, &Self::want());
            return None;
        };
        let mut out = Vec::new();
        for (i, e) in a.iter().enumerate() {
            let p = format!("{path}[{i}]");
            // A broken element keeps its place (later indexes stay right) as a stand-in nobody reports.
            out.push(T::from_toml(cx, &p, e).unwrap_or_else(|| {
                cx.broken.mark(&p);
                T::stand_in(e.span())
            }));
        }
        Some(out)
    }
    fn absent() -> Option<Self> {
        Some(Vec::new())
    }
    fn stand_in(_: Range<usize>) -> Self {
        Vec::new()
    }
}

/// A table of named entries (`[hosts.NAME]`, `environment = { KEY = "…" }`).
impl<T: FromToml> FromToml for BTreeMap<Spanned<String>, Spanned<T>> {
    fn want() -> Want {
        Want::Table
    }
    fn from_toml(cx: &mut Cx, path: &str, v: &Spanned<DeValue>) -> Option<Self> {
        let t = cx.table(path, v)?;
        let mut out = BTreeMap::new();
        for (k, e) in t.iter() {
            let p = join(path, k.get_ref());
            let value = Spanned::<T>::from_toml(cx, &p, e).unwrap_or_else(|| {
                cx.broken.mark(&p);
                Spanned::<T>::stand_in(e.span())
            });
            out.insert(Spanned::new(k.span(), k.get_ref().to_string()), value);
        }
        Some(out)
    }
    fn absent() -> Option<Self> {
        Some(BTreeMap::new())
    }
    fn stand_in(_: Range<usize>) -> Self {
        BTreeMap::new()
    }
}

/// Free-form tables (Talos patches): any TOML value is accepted; checked later against the schema.
impl FromToml for toml::Table {
    fn want() -> Want {
        Want::Table
    }
    fn from_toml(cx: &mut Cx, path: &str, v: &Spanned<DeValue>) -> Option<Self> {
        match to_value(cx, path, v)? {
            toml::Value::Table(t) => Some(t),
            _ => {
                cx.wrong_type(path, v, &Want::Table);
                None
            }
        }
    }
    fn stand_in(_: Range<usize>) -> Self {
        toml::Table::new()
    }
}

fn to_value(cx: &mut Cx, path: &str, v: &Spanned<DeValue>) -> Option<toml::Value> {
    Some(match v.get_ref() {
        DeValue::String(s) => toml::Value::String(s.to_string()),
        DeValue::Integer(_) => toml::Value::Integer(i64::from_toml(cx, path, v)?),
        DeValue::Float(f) => match f.as_str().replace('_', "").parse::<f64>() {
            Ok(x) => toml::Value::Float(x),
            Err(_) => {
                let shown = cx.shown(v);
                cx.bad_value(
                    path,
                    v,
                    format!("{shown} is not a number"),
                    "write a decimal number such as 1.5",
                );
                return None;
            }
        },
        DeValue::Boolean(b) => toml::Value::Boolean(*b),
        DeValue::Datetime(d) => toml::Value::Datetime(*d),
        DeValue::Array(a) => {
            let mut out = Vec::new();
            let mut ok = true;
            for (i, e) in a.iter().enumerate() {
                match to_value(cx, &format!("{path}[{i}]"), e) {
                    Some(x) => out.push(x),
                    None => ok = false,
                }
            }
            if !ok {
                return None;
            }
            toml::Value::Array(out)
        }
        DeValue::Table(t) => {
            let mut out = toml::Table::new();
            let mut ok = true;
            for (k, e) in t.iter() {
                match to_value(cx, &join(path, k.get_ref()), e) {
                    Some(x) => {
                        out.insert(k.get_ref().to_string(), x);
                    }
                    None => ok = false,
                }
            }
            if !ok {
                return None;
            }
            toml::Value::Table(out)
        }
    })
}

/// Define a raw spec table: the struct, and its field-by-field [`FromToml`] (unknown keys are errors, each
/// field converted on its own; `Option`/`Vec`/map fields may be left out, every other field is required).
macro_rules! spec_table {
    (
        $(#[$m:meta])*
        pub struct $name:ident {
            $( $(#[$fm:meta])* pub $f:ident : $t:ty ),* $(,)?
        }
    ) => {
        $(#[$m])*
        pub struct $name {
            $( $(#[$fm])* pub $f: $t ),*
        }
        impl $crate::spec::convert::FromToml for $name {
            fn want() -> $crate::spec::convert::Want {
                $crate::spec::convert::Want::Table
            }
            fn from_toml(
                cx: &mut $crate::spec::convert::Cx,
                path: &str,
                v: &::toml::Spanned<::toml::de::DeValue>,
            ) -> Option<Self> {
                const KEYS: &[&str] = &[$(stringify!($f)),*];
                let t = cx.table(path, v)?;
                cx.unknown_keys(path, t, KEYS);
                let span = v.span();
                let mut quiet = cx.headless(path, v, t).then(Vec::new);
                let out = $name {
                    $( $f: cx.field::<$t>(path, t, stringify!($f), &span, &mut quiet) ),*
                };
                if let Some(missing) = quiet.filter(|m| !m.is_empty()) {
                    cx.never_written(path, &span, &missing);
                }
                Some(out)
            }
            fn stand_in(span: ::std::ops::Range<usize>) -> Self {
                $name {
                    $( $f: <$t as $crate::spec::convert::FromToml>::absent()
                        .unwrap_or_else(|| <$t as $crate::spec::convert::FromToml>::stand_in(span.clone())) ),*
                }
            }
        }
    };
}
pub(crate) use spec_table;

/// Convert one parsed file (its root table) into `T`, recording diagnostics and broken paths.
pub fn file<T: FromToml>(cx: &mut Cx, root: Spanned<DeTable>) -> T {
    let whole = Spanned::new(0..0, DeValue::Table(root.into_inner()));
    T::from_toml(cx, "", &whole).unwrap_or_else(|| T::stand_in(0..0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_covers_the_value_and_what_is_inside_it_only() {
        let mut b = Broken::default();
        b.mark("hosts.a.exports[1]");
        assert!(b.covers("hosts.a.exports[1]"));
        assert!(b.covers("hosts.a.exports[1].path"));
        assert!(!b.covers("hosts.a.exports[10]"));
        assert!(!b.covers("hosts.a.exports"));
        assert!(!b.covers("hosts.a"));
        assert!(b.under("hosts.a.exports"));
        assert!(b.under("hosts.a"));
        assert!(!b.under("hosts.ab"));
        assert!(!b.under("hosts.a.mounts"));
    }

    fn load(text: &str) -> Vec<(String, String, usize, usize)> {
        let l = crate::spec::load_bytes([(Path::new("s.toml"), text.as_bytes())]);
        l.diagnostics
            .errors
            .iter()
            .map(|d| {
                (
                    d.rule.to_string(),
                    d.path.clone(),
                    d.line.unwrap_or(0),
                    d.column.unwrap_or(0),
                )
            })
            .collect()
    }
    use std::path::Path;

    #[test]
    fn a_wrong_type_is_one_error_at_the_value_and_its_siblings_still_convert() {
        let e = load("[site]\nname = 5\ndomain = 7\ntimezone = \"UTC\"\nbogus = 1\n");
        let paths: Vec<&str> = e.iter().map(|x| x.1.as_str()).collect();
        // name and domain: one each, at the value; bogus: unknown; the missing admins finding stands.
        assert!(
            e.contains(&("SPEC003".into(), "site.name".into(), 2, 8)),
            "{e:?}"
        );
        assert!(
            e.contains(&("SPEC003".into(), "site.domain".into(), 3, 10)),
            "{e:?}"
        );
        assert!(
            e.contains(&("SPEC002".into(), "site.bogus".into(), 5, 1)),
            "{e:?}"
        );
        assert_eq!(
            paths.iter().filter(|p| p.starts_with("site.name")).count(),
            1
        );
    }

    #[test]
    fn wanted_kinds_use_operator_words() {
        assert_eq!(<Vec<String>>::want().describe(), "a list of strings");
        assert_eq!(<Option<i64>>::want().describe(), "an integer");
        assert_eq!(bool::want().describe(), "true or false");
        assert_eq!(
            <BTreeMap<Spanned<String>, Spanned<String>>>::want().describe(),
            "a table"
        );
    }
}
