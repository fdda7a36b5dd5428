//! Diagnostics: every problem found in the spec, with where it is, which rule it breaks and how to fix it.
//!
//! Validation gathers all of them (talhelper-style) and sorts them: errors first, then by file, line, column.

use crate::spec::source::{Loc, SourceMap};
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Stable rule id, e.g. `SPEC012` or `S000-SSH-MGMT` (see docs/rules.md).
    pub rule: &'static str,
    /// Dotted field path inside the spec, e.g. `hosts.prometheus.interfaces.nic2.address`.
    pub path: String,
    pub message: String,
    pub help: String,
    #[serde(skip)]
    pub loc: Option<Loc>,
    /// Resolved location (filled by [`Diagnostics::resolve`]).
    pub file: Option<String>,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

impl Diagnostic {
    pub fn error(rule: &'static str, path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            rule,
            path: path.into(),
            message: message.into(),
            help: String::new(),
            loc: None,
            file: None,
            line: None,
            column: None,
        }
    }
    pub fn warning(
        rule: &'static str,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Self::error(rule, path, message)
        }
    }
    pub fn at(mut self, loc: Option<Loc>) -> Self {
        self.loc = loc;
        self
    }
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = help.into();
        self
    }
}

/// A sorted, located set of diagnostics.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Diagnostics {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn from_list(list: Vec<Diagnostic>, sources: &SourceMap) -> Self {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        for mut d in list {
            if let Some(loc) = d.loc {
                let (file, line, col) = sources.line_col(loc);
                d.file = Some(file.to_string());
                d.line = Some(line);
                d.column = Some(col);
            }
            match d.severity {
                Severity::Error => errors.push(d),
                Severity::Warning => warnings.push(d),
            }
        }
        let key = |d: &Diagnostic| {
            (
                d.file.clone().unwrap_or_default(),
                d.line.unwrap_or(0),
                d.column.unwrap_or(0),
                d.rule,
                d.path.clone(),
                d.message.clone(),
            )
        };
        errors.sort_by_key(key);
        errors.dedup_by(|a, b| key(a) == key(b));
        warnings.sort_by_key(key);
        warnings.dedup_by(|a, b| key(a) == key(b));
        Diagnostics { errors, warnings }
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// Human rendering: `file:line:col: error[RULE] path: message`, the source line with a caret, and the fix.
    pub fn render(&self, sources: &SourceMap) -> String {
        let mut out = String::new();
        for d in self.errors.iter().chain(self.warnings.iter()) {
            render_one(&mut out, d, sources);
        }
        let _ = writeln!(
            out,
            "{} error(s), {} warning(s)",
            self.errors.len(),
            self.warnings.len()
        );
        out
    }
}

fn render_one(out: &mut String, d: &Diagnostic, sources: &SourceMap) {
    let sev = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    if let (Some(f), Some(l), Some(c)) = (&d.file, d.line, d.column) {
        let _ = write!(out, "{f}:{l}:{c}: ");
    }
    let _ = writeln!(out, "{sev}[{}] {}: {}", d.rule, d.path, d.message);
    if let Some(loc) = d.loc {
        if let Some((lineno, text, col, width)) = sources.snippet(loc) {
            let gutter = lineno.to_string().len();
            let _ = writeln!(out, "{:gutter$} |", "");
            let _ = writeln!(out, "{lineno} | {text}");
            let _ = writeln!(
                out,
                "{:gutter$} | {}{}",
                "",
                " ".repeat(col.saturating_sub(1)),
                "^".repeat(width.max(1))
            );
        }
    }
    if !d.help.is_empty() {
        let _ = writeln!(out, "  = help: {}", d.help);
    }
    out.push('\n');
}
