//! String hygiene of the spec, checked on the parsed TOML tree before anything is typed.
//!
//! Every string that reaches a rendered file must stay on its line: no spec string (value or key) may carry a
//! control character (C0, DEL, C1 — which includes NEL), a Unicode line or paragraph separator (YAML 1.1 and
//! JavaScript read them as line breaks) or a byte-order mark. The check walks every string of every file, so a
//! new field is covered without anyone remembering to add it; per-field grammars in [`super::validate`] then
//! narrow what each field may hold.

use super::source::{FileId, Loc};
use crate::diag::Diagnostic;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Rule id for a control character in a spec string.
pub const RULE: &str = "SPEC026";

/// The first forbidden character of `s` and its index (in characters), if any.
pub fn forbidden_char(s: &str) -> Option<(usize, char)> {
    s.chars().enumerate().find(|(_, c)| is_forbidden(*c))
}

pub fn is_forbidden(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
}

fn describe(c: char) -> String {
    let name = match c {
        '\n' => " (line feed)",
        '\r' => " (carriage return)",
        '\t' => " (tab)",
        '\0' => " (NUL)",
        '\u{1b}' => " (escape)",
        '\u{7f}' => " (delete)",
        '\u{85}' => " (next line)",
        '\u{2028}' => " (line separator)",
        '\u{2029}' => " (paragraph separator)",
        '\u{feff}' => " (byte-order mark)",
        _ => "",
    };
    format!("U+{:04X}{name}", c as u32)
}

/// Every forbidden character in the file's strings: one diagnostic per offending string, at that string.
pub fn check_file(file: FileId, text: &str, diags: &mut Vec<Diagnostic>) {
    // Syntax errors are reported by the typed parse; this pass only looks at documents that parse.
    if let Ok(doc) = DeTable::parse(text) {
        walk_table(file, doc.get_ref(), "", diags);
    }
}

fn join(prefix: &str, key: &str) -> String {
    let key = if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        key.to_string()
    } else {
        format!("{:?}", key)
    };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}

fn walk_table(file: FileId, t: &DeTable<'_>, prefix: &str, diags: &mut Vec<Diagnostic>) {
    for (k, v) in t.iter() {
        let path = join(prefix, k.get_ref());
        if let Some((i, c)) = forbidden_char(k.get_ref()) {
            diags.push(found(file, k.span(), &path, "key", i, c));
        }
        walk_value(file, v, &path, diags);
    }
}

fn walk_value(file: FileId, v: &Spanned<DeValue<'_>>, path: &str, diags: &mut Vec<Diagnostic>) {
    match v.get_ref() {
        DeValue::String(s) => {
            if let Some((i, c)) = forbidden_char(s) {
                diags.push(found(file, v.span(), path, "value", i, c));
            }
        }
        DeValue::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                walk_value(file, item, &format!("{path}[{i}]"), diags);
            }
        }
        DeValue::Table(t) => walk_table(file, t, path, diags),
        _ => {}
    }
}

fn found(
    file: FileId,
    span: std::ops::Range<usize>,
    path: &str,
    what: &str,
    index: usize,
    c: char,
) -> Diagnostic {
    Diagnostic::error(
        RULE,
        path,
        format!(
            "this {what} contains the control or line-breaking character {} (character {}): it would break the line of \
             every file it is rendered into",
            describe(c),
            index + 1
        ),
    )
    .at(Some(Loc::new(file, span)))
    .help(
        "spec strings are single-line text: remove the character (one SSH key per string, one mount option \
         per list item; put long text in a file and reference its path)",
    )
}

/// Drop every other diagnostic about a value that already has a control-character error: the value is wrong
/// once, so it is reported once.
pub fn dedupe(diags: &mut Vec<Diagnostic>) {
    let bad: Vec<Loc> = diags
        .iter()
        .filter(|d| d.rule == RULE)
        .filter_map(|d| d.loc)
        .collect();
    if bad.is_empty() {
        return;
    }
    diags.retain(|d| {
        d.rule == RULE
            || !d.loc.is_some_and(|l| {
                bad.iter().any(|b| {
                    b.file == l.file
                        && l.start < b.end.max(b.start + 1)
                        && b.start < l.end.max(l.start + 1)
                })
            })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_control_characters_in_values_and_keys_with_paths() {
        let text = "[hosts.a]\ndescription = \"x\\ny\"\n[hosts.a.env]\n\"K\\u0001\" = \"v\"\nlist = [\"ok\", \"b\\u2028\"]\n";
        let mut d = Vec::new();
        check_file(0, text, &mut d);
        let paths: Vec<&str> = d.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "hosts.a.description",
                "hosts.a.env.\"K\\u{1}\"",
                "hosts.a.env.list[1]"
            ]
        );
        assert!(d.iter().all(|d| d.rule == RULE));
    }

    #[test]
    fn plain_text_passes() {
        let mut d = Vec::new();
        check_file(0, "a = \"héllo wörld — ok\"\nb = [1, \"x\"]\n", &mut d);
        assert!(d.is_empty());
    }
}
