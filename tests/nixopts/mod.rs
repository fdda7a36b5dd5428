//! Option-path and type checks of rendered NixOS modules against tests/nixos-options.toml.
//!
//! Each `.nix` file is parsed with rnix. The module body is found under the function header
//! (`{ config, lib, ... }:`), `let … in` (its bindings are kept to resolve names) and `with`. Definitions are
//! walked through attribute-set nesting and dotted paths alike (`a.b.c = …;` is `a = { b = { c = …; }; }`),
//! `config = …`/`options = …` split full modules, `lib.mkIf`/`mkDefault`/`mkForce`/`mkOverride`/`mkMerge` are
//! unwrapped. Every option path must be declared in the manifest (or by the tree itself, `options.…`), every
//! literal value must fit its type. Values that are not literals get a type where one is known (a string
//! with interpolations is a string, `pkgs.x` a package, `config.a.b` the type of option `a.b`, a few lib
//! functions); the rest are listed as "not checked".
#![allow(dead_code)]

pub mod sshd;
pub mod types;

use rnix::ast::{self, AstToken, HasEntry};
use rowan::ast::AstNode;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use types::{Lit, Manifest, Ty};

/// A value as far as it is known without evaluating.
#[derive(Debug, Clone)]
pub enum Val {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Path(String),
    List(Vec<(Val, usize)>),
    Attrs(Vec<(String, Val, usize)>),
    /// Not a literal: what it is, and its type where that is known.
    Opaque(Kind, String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    String,
    Path,
    Package,
    Bool,
    /// A reference to another option: its manifest type text.
    Config(Vec<String>),
    Unknown,
}

impl Val {
    pub fn show(&self) -> String {
        match self {
            Val::Null => "null".into(),
            Val::Bool(b) => b.to_string(),
            Val::Int(i) => i.to_string(),
            Val::Float(f) => f.to_string(),
            Val::Str(s) => format!("{s:?}"),
            Val::Path(p) => p.clone(),
            Val::List(l) => format!(
                "[ {} ]",
                l.iter()
                    .map(|(v, _)| v.show())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Val::Attrs(a) => format!(
                "{{ {} }}",
                a.iter()
                    .map(|(k, v, _)| format!("{k} = {};", v.show()))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Val::Opaque(_, t) => t.clone(),
        }
    }
}

/// One option definition found in a file.
#[derive(Debug, Clone)]
pub struct Def {
    pub file: String,
    pub line: usize,
    pub path: Vec<String>,
    pub val: Val,
}

#[derive(Default, Debug)]
pub struct Report {
    pub errors: Vec<String>,
    pub not_checked: Vec<String>,
    pub defs: Vec<Def>,
    pub checked: usize,
}

/// Options a module of the tree declares itself (`options.labforge.stacks.x.enable = lib.mkEnableOption …`).
pub type Decls = BTreeMap<Vec<String>, Ty>;

struct Ctx<'a> {
    m: &'a Manifest,
    decls: &'a Decls,
    file: String,
    text: &'a str,
    env: Vec<BTreeMap<String, ast::Expr>>,
    params: Vec<String>,
    rep: &'a mut Report,
}

const WRAPPERS: &[&str] = &[
    "mkIf",
    "mkDefault",
    "mkForce",
    "mkOverride",
    "mkBefore",
    "mkAfter",
    "mkOrder",
    "mkOptionDefault",
];

fn dotted(e: &ast::Expr) -> Option<String> {
    match e {
        ast::Expr::Ident(i) => Some(i.ident_token()?.text().to_string()),
        ast::Expr::Select(s) => {
            let base = dotted(&s.expr()?)?;
            let mut out = base;
            for a in s.attrpath()?.attrs() {
                out.push('.');
                out.push_str(&attr_name(&a)?);
            }
            Some(out)
        }
        _ => None,
    }
}

fn attr_name(a: &ast::Attr) -> Option<String> {
    match a {
        ast::Attr::Ident(i) => Some(i.ident_token()?.text().to_string()),
        ast::Attr::Str(s) => static_str(s),
        ast::Attr::Dynamic(_) => None,
    }
}

fn static_str(s: &ast::Str) -> Option<String> {
    let mut out = String::new();
    for p in s.normalized_parts() {
        match p {
            ast::InterpolPart::Literal(l) => out.push_str(&l),
            ast::InterpolPart::Interpolation(_) => return None,
        }
    }
    Some(out)
}

/// The function at the head of an application and its arguments (`lib.mkIf c v` → ("lib.mkIf", [c, v])).
fn unapply(e: &ast::Expr) -> Option<(String, Vec<ast::Expr>)> {
    let mut args = Vec::new();
    let mut cur = e.clone();
    while let ast::Expr::Apply(a) = &cur {
        args.push(a.argument()?);
        cur = a.lambda()?;
    }
    if args.is_empty() {
        return None;
    }
    args.reverse();
    Some((dotted(&cur)?, args))
}

fn last_seg(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

fn strip_paren(e: ast::Expr) -> ast::Expr {
    let mut e = e;
    while let ast::Expr::Paren(p) = &e {
        match p.expr() {
            Some(x) => e = x,
            None => break,
        }
    }
    e
}

impl Ctx<'_> {
    fn line(&self, node: &rnix::SyntaxNode) -> usize {
        let off: usize = node.text_range().start().into();
        self.text[..off].matches('\n').count() + 1
    }
    fn at(&self, node: &rnix::SyntaxNode) -> String {
        format!("{}:{}", self.file, self.line(node))
    }
    fn lookup(&self, name: &str) -> Option<ast::Expr> {
        self.env.iter().rev().find_map(|m| m.get(name).cloned())
    }
    fn err(&mut self, node: &rnix::SyntaxNode, msg: String) {
        let at = self.at(node);
        self.rep.errors.push(format!("{at}: {msg}"));
    }
    fn note(&mut self, node: &rnix::SyntaxNode, msg: String) {
        let at = self.at(node);
        self.rep.not_checked.push(format!("{at}: {msg}"));
    }

    /// `cfg.enable` with `cfg = config.labforge.stacks.x` → ("config", [labforge, stacks, x, enable]).
    fn resolve_ref(&self, e: &ast::Expr, depth: usize) -> Option<(String, Vec<String>)> {
        if depth > 8 {
            return None;
        }
        let d = dotted(e)?;
        let mut segs: Vec<String> = d.split('.').map(String::from).collect();
        let root = segs.remove(0);
        if let Some(bound) = self.lookup(&root) {
            let (r, mut base) = self.resolve_ref(&strip_paren(bound), depth + 1)?;
            base.extend(segs);
            return Some((r, base));
        }
        Some((root, segs))
    }

    fn value_of(&mut self, e: &ast::Expr, depth: usize) -> Val {
        let e = strip_paren(e.clone());
        let text = e.syntax().text().to_string();
        let short = if text.len() > 60 {
            format!(
                "{}…",
                &text[..text.char_indices().nth(57).map(|x| x.0).unwrap_or(57)]
            )
        } else {
            text.clone()
        };
        if depth > 16 {
            return Val::Opaque(Kind::Unknown, short);
        }
        match &e {
            ast::Expr::Literal(l) => match l.kind() {
                ast::LiteralKind::Integer(i) => match i.value() {
                    Ok(v) => Val::Int(v),
                    Err(_) => Val::Opaque(Kind::Unknown, short),
                },
                ast::LiteralKind::Float(f) => Val::Float(f.value().unwrap_or(0.0)),
                ast::LiteralKind::Uri(u) => Val::Str(u.syntax().text().to_string()),
            },
            ast::Expr::UnaryOp(u) if text.starts_with('-') => {
                match u.expr().map(|x| self.value_of(&x, depth + 1)) {
                    Some(Val::Int(i)) => Val::Int(-i),
                    _ => Val::Opaque(Kind::Unknown, short),
                }
            }
            ast::Expr::Str(s) => match static_str(s) {
                Some(v) => Val::Str(v),
                None => Val::Opaque(Kind::String, short),
            },
            ast::Expr::Path(_) => Val::Path(text),
            ast::Expr::List(l) => {
                let items = l
                    .items()
                    .map(|i| {
                        let line = self.line(i.syntax());
                        (self.value_of(&i, depth + 1), line)
                    })
                    .collect();
                Val::List(items)
            }
            ast::Expr::AttrSet(s) if s.rec_token().is_none() => {
                let mut out: Vec<(String, Val, usize)> = Vec::new();
                for apv in s.attrpath_values() {
                    let Some(ap) = apv.attrpath() else { continue };
                    let names: Vec<String> = ap
                        .attrs()
                        .map(|a| attr_name(&a).unwrap_or_else(|| "\u{1}${…}".to_string()))
                        .collect();
                    let Some(v) = apv.value() else { continue };
                    let line = self.line(apv.syntax());
                    let mut val = self.value_of(&v, depth + 1);
                    for n in names[1..].iter().rev() {
                        val = Val::Attrs(vec![(n.clone(), val, line)]);
                    }
                    out.push((names[0].clone(), val, line));
                }
                if s.inherits().next().is_some() {
                    return Val::Opaque(Kind::Unknown, short);
                }
                Val::Attrs(out)
            }
            ast::Expr::Ident(i) => {
                let name = i
                    .ident_token()
                    .map(|t| t.text().to_string())
                    .unwrap_or_default();
                match name.as_str() {
                    "true" => Val::Bool(true),
                    "false" => Val::Bool(false),
                    "null" => Val::Null,
                    _ => match self.lookup(&name) {
                        Some(b) => self.value_of(&b, depth + 1),
                        None => Val::Opaque(Kind::Unknown, short),
                    },
                }
            }
            ast::Expr::Select(_) => match self.resolve_ref(&e, 0) {
                Some((root, segs)) if root == "config" => Val::Opaque(Kind::Config(segs), short),
                Some((root, _)) if root == "pkgs" => Val::Opaque(Kind::Package, short),
                _ => Val::Opaque(Kind::Unknown, short),
            },
            ast::Expr::Apply(_) => {
                if let Some((f, args)) = unapply(&e) {
                    let fname = last_seg(&f).to_string();
                    if WRAPPERS.contains(&fname.as_str()) {
                        if let Some(v) = args.last() {
                            return self.value_of(v, depth + 1);
                        }
                    }
                    let kind = match fname.as_str() {
                        "concatLines"
                        | "concatStringsSep"
                        | "concatMapStringsSep"
                        | "toString"
                        | "concatStrings"
                        | "toJSON"
                        | "replaceStrings"
                        | "readFile" => Kind::String,
                        "path" if f.starts_with("builtins") => Kind::Path,
                        "pathExists" | "elem" | "hasAttr" | "isString" => Kind::Bool,
                        _ => Kind::Unknown,
                    };
                    // Arguments that are option references are still references: check they resolve.
                    for a in &args {
                        self.value_of(a, depth + 1);
                    }
                    return Val::Opaque(kind, short);
                }
                Val::Opaque(Kind::Unknown, short)
            }
            ast::Expr::Lambda(_) => Val::Opaque(Kind::Unknown, "a function".into()),
            _ => Val::Opaque(Kind::Unknown, short),
        }
    }

    /// Walk a module expression: the function header, `let`, `with`, then the attribute set.
    fn module(&mut self, e: ast::Expr) {
        let e = strip_paren(e);
        match &e {
            ast::Expr::Lambda(l) => {
                if let Some(ast::Param::Pattern(p)) = l.param() {
                    for pe in p.pat_entries() {
                        if let Some(i) = pe.ident().and_then(|i| i.ident_token()) {
                            self.params.push(i.text().to_string());
                        }
                    }
                }
                if let Some(b) = l.body() {
                    self.module(b)
                }
            }
            ast::Expr::LetIn(li) => {
                let mut m = BTreeMap::new();
                for apv in li.attrpath_values() {
                    if let (Some(name), Some(v)) = (
                        apv.attrpath()
                            .and_then(|p| p.attrs().next())
                            .and_then(|a| attr_name(&a)),
                        apv.value(),
                    ) {
                        m.insert(name, v);
                    }
                }
                self.env.push(m);
                if let Some(b) = li.body() {
                    self.module(b)
                }
                self.env.pop();
            }
            ast::Expr::With(w) => {
                if let Some(b) = w.body() {
                    self.module(b)
                }
            }
            ast::Expr::AttrSet(s) => self.module_set(s),
            _ => self.err(
                e.syntax(),
                format!("not a NixOS module (an attribute set): {}", e.syntax()),
            ),
        }
    }

    fn module_set(&mut self, s: &ast::AttrSet) {
        let full = s.attrpath_values().any(|apv| {
            matches!(
                apv.attrpath()
                    .and_then(|p| p.attrs().next())
                    .and_then(|a| attr_name(&a))
                    .as_deref(),
                Some("config") | Some("options")
            )
        });
        for apv in s.attrpath_values() {
            let (Some(ap), Some(v)) = (apv.attrpath(), apv.value()) else {
                continue;
            };
            let segs: Vec<String> = ap
                .attrs()
                .map(|a| attr_name(&a).unwrap_or_else(|| "\u{1}${…}".to_string()))
                .collect();
            match segs[0].as_str() {
                "imports" => {
                    if let ast::Expr::List(l) = strip_paren(v.clone()) {
                        for i in l.items() {
                            let val = self.value_of(&i, 0);
                            match val {
                                Val::Path(_) | Val::Str(_) | Val::Opaque(Kind::String, _) => {}
                                other => {
                                    let at = i.syntax().clone();
                                    self.note(&at, format!("import {} (a module from a flake input or nixpkgs): its options are not checked", other.show()))
                                }
                            }
                        }
                    } else {
                        self.err(v.syntax(), "imports is not a list".into());
                    }
                }
                "options" => {
                    // Declarations are collected beforehand (collect_decls); their values are functions.
                }
                "config" => self.define(&[], &[], &segs[1..], v, apv.syntax().clone()),
                "_file" | "key" | "disabledModules" | "meta" => {}
                other if full => {
                    let at = apv.syntax().clone();
                    self.err(&at, format!("module has `config`/`options`, so `{other}` must be under `config` (NixOS: unsupported attribute)"));
                }
                _ => self.define(&[], &[], &segs, v, apv.syntax().clone()),
            }
        }
        if s.inherits().next().is_some() {
            let at = s.syntax().clone();
            self.note(&at, "`inherit` at module level is not checked".into());
        }
    }

    fn show(disp: &[String]) -> String {
        disp.iter()
            .map(|s| {
                if let Some(r) = s.strip_prefix('\u{1}') {
                    r.to_string()
                } else if s.contains('.') || s.contains('/') {
                    format!("{s:?}")
                } else {
                    s.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The declaration governing `key`: manifest, local `options`, or a free-form parent.
    fn entry_ty(&self, key: &[String]) -> Option<(Ty, String, Option<String>)> {
        if let Some(e) = self.m.get(key) {
            return Some((e.ty.clone(), e.ty_text.clone(), e.freeform.clone()));
        }
        if let Some(t) = self.decls.get(key) {
            return Some((t.clone(), "bool (declared by this tree)".into(), None));
        }
        None
    }

    fn freeform_parent(&self, key: &[String]) -> Option<(String, types::Freeform)> {
        if key.is_empty() {
            return None;
        }
        let parent = &key[..key.len() - 1];
        let e = self.m.get(parent)?;
        let f = e.freeform.as_ref()?;
        Some((f.clone(), self.m.freeform.get(f)?.clone()))
    }

    fn is_namespace(&self, key: &[String]) -> bool {
        self.m.is_namespace(key)
            || self
                .decls
                .keys()
                .any(|k| k.len() > key.len() && k[..key.len()] == *key)
    }

    /// Define `key.segs = value` (a dotted path is consumed one segment at a time).
    fn define(
        &mut self,
        key: &[String],
        disp: &[String],
        segs: &[String],
        v: ast::Expr,
        at: rnix::SyntaxNode,
    ) {
        if segs.is_empty() {
            return self.define_value(key, disp, v, at);
        }
        let seg = &segs[0];
        let mut d = disp.to_vec();
        d.push(seg.clone());
        let mut k = key.to_vec();
        match self.entry_ty(key) {
            Some((Ty::AttrsOf(inner), _, _))
                if inner.is_container() || matches!(*inner, Ty::Submodule) =>
            {
                if let Some(e) = self.m.get(key) {
                    if let (Some(nt), false) = (&e.name, seg.starts_with('\u{1}')) {
                        if let Err(why) = check(nt, &Val::Str(seg.clone())) {
                            self.err(
                                &at,
                                format!(
                                    "{}: attribute name {seg:?} does not fit: {why}",
                                    Self::show(disp)
                                ),
                            );
                        }
                    }
                }
                k.push("<name>".into());
            }
            Some((Ty::AttrsOf(_), _, _)) | Some((Ty::Attrs, _, _)) | Some((Ty::Anything, _, _)) => {
                // A dotted path into a leaf attribute set: check the built value as a whole.
                let val = self.value_of(&v, 0);
                let mut nested = val;
                for s in segs.iter().rev() {
                    nested = Val::Attrs(vec![(s.clone(), nested, 0)]);
                }
                return self.leaf(key, disp, nested, &at);
            }
            // `either (listOf str) (attrsOf bool)` (nixpkgs' coercedTo, e.g. boot.supportedFilesystems): a
            // dotted path defines the attribute-set form; the built value is checked against the whole type.
            Some((Ty::OneOf(alts), _, _))
                if alts.iter().any(|a| matches!(a, Ty::AttrsOf(_) | Ty::Attrs)) =>
            {
                let val = self.value_of(&v, 0);
                let mut nested = val;
                for s in segs.iter().rev() {
                    nested = Val::Attrs(vec![(s.clone(), nested, 0)]);
                }
                return self.leaf(key, disp, nested, &at);
            }
            Some((Ty::Submodule, _, _)) | Some((Ty::UnitSection, _, _)) => k.push(seg.clone()),
            Some((_, text, _)) => {
                return self.err(&at, format!("{}: is an option of type {text}, not an attribute set: `{}` is not an option", Self::show(disp), Self::show(&d)));
            }
            None => k.push(seg.clone()),
        }
        self.define(&k, &d, &segs[1..], v, at)
    }

    fn define_value(
        &mut self,
        key: &[String],
        disp: &[String],
        v: ast::Expr,
        at: rnix::SyntaxNode,
    ) {
        let v = strip_paren(v);
        // mkIf / mkDefault / mkForce / mkMerge wrappers.
        if let Some((f, args)) = unapply(&v) {
            let fname = last_seg(&f);
            if WRAPPERS.contains(&fname) {
                if let Some(inner) = args.last() {
                    return self.define_value(key, disp, inner.clone(), at);
                }
            }
            if fname == "mkMerge" {
                if let Some(ast::Expr::List(l)) = args.last().map(|a| strip_paren(a.clone())) {
                    for i in l.items() {
                        self.define_value(key, disp, i, at.clone());
                    }
                    return;
                }
            }
        }
        let entry = self.entry_ty(key);
        let container = match &entry {
            Some((t, _, _)) => matches!(t, Ty::Submodule | Ty::UnitSection) || t.is_container(),
            None => key.is_empty() || self.is_namespace(key),
        };
        if !container {
            let val = self.value_of(&v, 0);
            return self.leaf(key, disp, val, &at);
        }
        match (&entry, strip_paren(v.clone())) {
            (Some((Ty::ListOf(_), _, _)), ast::Expr::List(l)) => {
                for (i, item) in l.items().enumerate() {
                    let mut k = key.to_vec();
                    k.push("*".into());
                    let mut d = disp.to_vec();
                    d.push(format!("\u{1}[{i}]"));
                    let node = item.syntax().clone();
                    self.define_value(&k, &d, item, node);
                }
            }
            (_, ast::Expr::AttrSet(s)) if s.rec_token().is_none() => {
                for apv in s.attrpath_values() {
                    let (Some(ap), Some(val)) = (apv.attrpath(), apv.value()) else {
                        continue;
                    };
                    let segs: Vec<String> = ap
                        .attrs()
                        .map(|a| attr_name(&a).unwrap_or_else(|| "\u{1}${…}".to_string()))
                        .collect();
                    self.define(key, disp, &segs, val, apv.syntax().clone());
                }
                if s.inherits().next().is_some() {
                    self.note(
                        &at,
                        format!("{}: `inherit` inside is not checked", Self::show(disp)),
                    );
                }
            }
            (_, other) => {
                let what = match &entry {
                    Some((_, t, _)) => t.clone(),
                    None => "an option namespace".into(),
                };
                let val = self.value_of(&other, 0);
                match val {
                    Val::Opaque(_, text) => self.note(&at, format!("{} = {text}: not a literal attribute set; its fields ({what}) are not checked", Self::show(disp))),
                    val => self.err(&at, format!("{} = {}: expected an attribute set ({what})", Self::show(disp), val.show())),
                }
            }
        }
    }

    fn leaf(&mut self, key: &[String], disp: &[String], val: Val, at: &rnix::SyntaxNode) {
        let opt = Self::show(disp);
        let (ty, text) = match self.entry_ty(key) {
            Some((t, text, _)) => (t, text),
            None => match self.freeform_parent(key) {
                Some((name, f)) => (
                    f.value.clone(),
                    format!(
                        "{} (free-form {name}; keys checked by {})",
                        f.value_text, f.daemon
                    ),
                ),
                None => {
                    let parent = &key[..key.len().saturating_sub(1)];
                    let hint = match self.m.get(parent) {
                        Some(e) if matches!(e.ty, Ty::UnitSection) => format!(
                            " ({} is a systemd section: nixpkgs allows only listed fields; add `{}` to the manifest if its assertOnlyFields list has it)",
                            Self::show(&disp[..disp.len() - 1]),
                            key.last().unwrap()
                        ),
                        _ => String::new(),
                    };
                    return self.err(
                        at,
                        format!("{opt}: no such NixOS option in tests/nixos-options.toml{hint}"),
                    );
                }
            },
        };
        let line = self.line(at);
        self.check_refs(&val, line);
        self.rep.defs.push(Def {
            file: self.file.clone(),
            line: self.line(at),
            path: disp
                .iter()
                .map(|s| s.trim_start_matches('\u{1}').to_string())
                .collect(),
            val: val.clone(),
        });
        match check_with(&ty, &val, self.m) {
            Ok(notes) => {
                self.rep.checked += 1;
                for n in notes {
                    self.note(at, format!("{opt}: {n}"));
                }
            }
            Err(why) => self.err(
                at,
                format!("{opt} = {}: expected {text}: {why}", val.show()),
            ),
        }
    }

    /// Every `config.a.b` used in a value must name a declared option.
    fn check_refs(&mut self, val: &Val, line: usize) {
        match val {
            Val::Opaque(Kind::Config(p), text)
                if !self.m.resolves(p)
                    && !self
                        .decls
                        .keys()
                        .any(|k| k.starts_with(p) || p.starts_with(k)) =>
            {
                let f = self.file.clone();
                self.rep.errors.push(format!(
                    "{f}:{line}: {text}: config.{} is not a declared option",
                    p.join(".")
                ));
            }
            Val::List(l) => l
                .iter()
                .for_each(|(v, n)| self.check_refs(v, if *n > 0 { *n } else { line })),
            Val::Attrs(a) => a
                .iter()
                .for_each(|(_, v, n)| self.check_refs(v, if *n > 0 { *n } else { line })),
            _ => {}
        }
    }
}

fn lit_eq(l: &Lit, v: &Val) -> bool {
    match (l, v) {
        (Lit::Str(a), Val::Str(b)) => a == b,
        (Lit::Int(a), Val::Int(b)) => a == b,
        (Lit::Bool(a), Val::Bool(b)) => a == b,
        _ => false,
    }
}

fn show_ty(t: &Ty) -> String {
    let lit = |x: &Lit| match x {
        Lit::Str(s) => format!("{s:?}"),
        Lit::Int(i) => i.to_string(),
        Lit::Bool(b) => b.to_string(),
    };
    let paren = |t: &Ty| {
        let s = show_ty(t);
        if s.contains(' ') && !s.starts_with("one of") {
            format!("({s})")
        } else {
            s
        }
    };
    match t {
        Ty::Bool => "bool".into(),
        Ty::Int => "int".into(),
        Ty::Float => "float".into(),
        Ty::Str => "str".into(),
        Ty::Lines => "lines".into(),
        Ty::Path => "path".into(),
        Ty::Package => "package".into(),
        Ty::Attrs => "attrs".into(),
        Ty::Anything => "anything".into(),
        Ty::UnitOption => "unitOption".into(),
        Ty::IntRange(0, 65535) => "port (0..=65535)".into(),
        Ty::IntRange(a, b) => format!("an integer in {a}..={b}"),
        Ty::NonEmptyStr => "nonEmptyStr".into(),
        Ty::SingleLineStr => "singleLineStr".into(),
        Ty::PasswdEntry(i) => format!("passwdEntry {}", paren(i)),
        Ty::StrMatching(_, r) => format!("strMatching {r:?}"),
        Ty::Enum(l) => format!("one of {}", l.iter().map(lit).collect::<Vec<_>>().join(" ")),
        Ty::ListOf(i) => format!("listOf {}", paren(i)),
        Ty::NonEmptyListOf(i) => format!("nonEmptyListOf {}", paren(i)),
        Ty::NullOr(i) => format!("nullOr {}", paren(i)),
        Ty::OneOf(v) => format!(
            "oneOf [ {} ]",
            v.iter().map(paren).collect::<Vec<_>>().join(" ")
        ),
        Ty::AttrsOf(i) => format!("attrsOf {}", paren(i)),
        Ty::Submodule => "submodule".into(),
        Ty::UnitSection => "unitSection".into(),
    }
}

/// Check a value against a type (no manifest: `config.…` references are not resolved).
pub fn check(t: &Ty, v: &Val) -> Result<Vec<String>, String> {
    check_inner(t, v, None)
}

pub fn check_with(t: &Ty, v: &Val, m: &Manifest) -> Result<Vec<String>, String> {
    check_inner(t, v, Some(m))
}

fn opaque_kind(k: &Kind, m: Option<&Manifest>) -> Kind {
    if let (Kind::Config(p), Some(m)) = (k, m) {
        if let Some(e) = m.get(p) {
            let ty = match &e.ty {
                Ty::NullOr(i) => &**i,
                t => t,
            };
            return match ty {
                Ty::Bool => Kind::Bool,
                Ty::Str | Ty::Lines | Ty::SingleLineStr | Ty::NonEmptyStr | Ty::StrMatching(..) => {
                    Kind::String
                }
                Ty::Package => Kind::Package,
                Ty::Path => Kind::Path,
                _ => Kind::Unknown,
            };
        }
        return Kind::Unknown;
    }
    k.clone()
}

fn check_inner(t: &Ty, v: &Val, m: Option<&Manifest>) -> Result<Vec<String>, String> {
    if let Val::Opaque(k, text) = v {
        let kind = opaque_kind(k, m);
        let fits_fully = match (&kind, t) {
            (_, Ty::Anything) => return Ok(vec![]),
            (Kind::Unknown, _) => {
                return Ok(vec![format!(
                    "value `{text}` is not a literal and its type is not known: not checked"
                )])
            }
            (Kind::String, Ty::Str | Ty::Lines | Ty::UnitOption) => true,
            (
                Kind::String,
                Ty::SingleLineStr
                | Ty::NonEmptyStr
                | Ty::StrMatching(..)
                | Ty::Enum(_)
                | Ty::Path
                | Ty::PasswdEntry(_),
            ) => false,
            (Kind::Path, Ty::Path | Ty::Str | Ty::Lines | Ty::UnitOption) => true,
            (Kind::Package, Ty::Package | Ty::Path | Ty::UnitOption) => true,
            (Kind::Bool, Ty::Bool | Ty::UnitOption) => true,
            (_, Ty::NullOr(inner)) => return check_inner(inner, v, m),
            (_, Ty::OneOf(alts)) => {
                let mut errs = Vec::new();
                for a in alts {
                    match check_inner(a, v, m) {
                        Ok(n) => return Ok(n),
                        Err(e) => errs.push(e),
                    }
                }
                return Err(errs.join("; "));
            }
            (k, t) => return Err(format!("`{text}` is a {k:?} value, not {}", show_ty(t))),
        };
        return Ok(if fits_fully {
            vec![]
        } else {
            vec![format!(
                "`{text}` is a {kind:?} value (type fits); its content is not checked against {}",
                show_ty(t)
            )]
        });
    }
    let bad = |why: &str| Err(why.to_string());
    match t {
        Ty::Anything => Ok(vec![]),
        Ty::Bool => match v {
            Val::Bool(_) => Ok(vec![]),
            _ => bad("not a bool"),
        },
        Ty::Int => match v {
            Val::Int(_) => Ok(vec![]),
            _ => bad("not an integer"),
        },
        Ty::Float => match v {
            Val::Float(_) => Ok(vec![]),
            _ => bad("not a float"),
        },
        Ty::IntRange(a, b) => match v {
            Val::Int(i) if i >= a && i <= b => Ok(vec![]),
            Val::Int(i) => Err(format!("{i} is outside {a}..={b}")),
            _ => Err(format!("not an integer ({})", show_ty(t))),
        },
        Ty::Str | Ty::Lines => match v {
            Val::Str(_) => Ok(vec![]),
            _ => bad("not a string"),
        },
        Ty::SingleLineStr => match v {
            Val::Str(s) if !s.contains('\n') => Ok(vec![]),
            Val::Str(_) => bad("a string with a newline (singleLineStr)"),
            _ => bad("not a string"),
        },
        Ty::NonEmptyStr => match v {
            Val::Str(s) if !s.trim().is_empty() => Ok(vec![]),
            Val::Str(_) => bad("an empty string (nonEmptyStr)"),
            _ => bad("not a string"),
        },
        Ty::PasswdEntry(inner) => match v {
            Val::Str(s) if s.contains(':') || s.contains('\n') => {
                bad("contains ':' or a newline (passwdEntry)")
            }
            _ => check_inner(inner, v, m),
        },
        Ty::StrMatching(re, src) => match v {
            Val::Str(s) if re.is_match(s) => Ok(vec![]),
            Val::Str(s) => Err(format!("{s:?} does not match {src:?}")),
            _ => bad("not a string"),
        },
        Ty::Path => match v {
            Val::Path(_) => Ok(vec![]),
            Val::Str(s) if s.starts_with('/') => Ok(vec![]),
            _ => bad("not an absolute path"),
        },
        Ty::Package => bad("not a package"),
        Ty::Attrs | Ty::Submodule | Ty::UnitSection => match v {
            Val::Attrs(_) => Ok(vec![]),
            _ => bad("not an attribute set"),
        },
        Ty::UnitOption => match v {
            Val::Bool(_) | Val::Int(_) | Val::Float(_) | Val::Str(_) | Val::Path(_) => Ok(vec![]),
            Val::List(l) => {
                let mut notes = Vec::new();
                for (x, _) in l {
                    if matches!(x, Val::List(_) | Val::Attrs(_) | Val::Null) {
                        return bad("a list element that is not a systemd value");
                    }
                    notes.extend(check_inner(t, x, m)?);
                }
                Ok(notes)
            }
            _ => bad("not a systemd value (bool, int, string, path or a list of them)"),
        },
        Ty::Enum(ls) => {
            if ls.iter().any(|l| lit_eq(l, v)) {
                Ok(vec![])
            } else {
                Err(format!("{} is not {}", v.show(), show_ty(t)))
            }
        }
        Ty::ListOf(inner) | Ty::NonEmptyListOf(inner) => match v {
            Val::List(l) => {
                if matches!(t, Ty::NonEmptyListOf(_)) && l.is_empty() {
                    return bad("an empty list (nonEmptyListOf)");
                }
                let mut notes = Vec::new();
                for (i, (x, _)) in l.iter().enumerate() {
                    notes.extend(
                        check_inner(inner, x, m)
                            .map_err(|e| format!("element {i} ({}): {e}", x.show()))?,
                    );
                }
                Ok(notes)
            }
            _ => bad("not a list"),
        },
        Ty::NullOr(inner) => match v {
            Val::Null => Ok(vec![]),
            _ => check_inner(inner, v, m),
        },
        Ty::OneOf(alts) => {
            let mut errs = Vec::new();
            for a in alts {
                match check_inner(a, v, m) {
                    Ok(n) => return Ok(n),
                    Err(e) => errs.push(e),
                }
            }
            Err(errs.join("; and "))
        }
        Ty::AttrsOf(inner) => match v {
            Val::Attrs(a) => {
                let mut notes = Vec::new();
                for (k, x, _) in a {
                    notes.extend(check_inner(inner, x, m).map_err(|e| format!("{k}: {e}"))?);
                }
                Ok(notes)
            }
            _ => bad("not an attribute set"),
        },
    }
}

/// `options.a.b = lib.mkEnableOption …;` (and `lib.mkOption { type = lib.types.bool; }`) in a tree.
pub fn collect_decls(files: &[(String, String)]) -> Decls {
    let mut d = Decls::new();
    for (_, text) in files {
        let root = rnix::Root::parse(text).tree();
        for node in root.syntax().descendants() {
            let Some(apv) = ast::AttrpathValue::cast(node) else {
                continue;
            };
            let Some(ap) = apv.attrpath() else { continue };
            let segs: Vec<String> = ap.attrs().filter_map(|a| attr_name(&a)).collect();
            if segs.first().map(String::as_str) != Some("options") || segs.len() < 2 {
                continue;
            }
            let ty = match apv.value().and_then(|v| unapply(&v)) {
                Some((f, _)) if last_seg(&f) == "mkEnableOption" => Ty::Bool,
                _ => Ty::Anything,
            };
            d.insert(segs[1..].to_vec(), ty);
        }
    }
    d
}

/// Check one file (a NixOS module, or flake.nix) and add what it finds to `rep`.
pub fn check_file(m: &Manifest, decls: &Decls, file: &str, text: &str, rep: &mut Report) {
    let parse = rnix::Root::parse(text);
    if !parse.errors().is_empty() {
        rep.errors
            .push(format!("{file}: rnix parse errors: {:?}", parse.errors()));
        return;
    }
    let root = parse.tree();
    let Some(expr) = root.expr() else {
        rep.errors.push(format!("{file}: empty"));
        return;
    };
    let mut ctx = Ctx {
        m,
        decls,
        file: file.to_string(),
        text,
        env: Vec::new(),
        params: Vec::new(),
        rep,
    };
    if file.ends_with("flake.nix") {
        check_flake(&mut ctx, expr);
    } else {
        ctx.module(expr);
    }
}

fn check_flake(ctx: &mut Ctx, expr: ast::Expr) {
    let ast::Expr::AttrSet(top) = strip_paren(expr.clone()) else {
        return ctx.err(expr.syntax(), "flake.nix is not an attribute set".into());
    };
    for apv in top.attrpath_values() {
        let Some(ap) = apv.attrpath() else { continue };
        let segs: Vec<String> = ap.attrs().filter_map(|a| attr_name(&a)).collect();
        let at = apv.syntax().clone();
        if !ctx.m.flake_top.contains(&segs[0]) {
            ctx.err(
                &at,
                format!(
                    "flake attribute `{}` is not one of {:?}",
                    segs[0], ctx.m.flake_top
                ),
            );
            continue;
        }
        if segs[0] == "description" {
            match apv.value().map(|v| ctx.value_of(&v, 0)) {
                Some(Val::Str(_)) => ctx.rep.checked += 1,
                other => ctx.err(
                    &at,
                    format!(
                        "description = {:?}: expected a string",
                        other.map(|v| v.show())
                    ),
                ),
            }
        }
        if segs[0] == "inputs" {
            let val = apv.value().map(|v| ctx.value_of(&v, 0));
            let mut flat: Vec<(Vec<String>, Val)> = Vec::new();
            fn flatten(prefix: Vec<String>, v: Val, out: &mut Vec<(Vec<String>, Val)>) {
                match v {
                    Val::Attrs(a) => a.into_iter().for_each(|(k, x, _)| {
                        let mut p = prefix.clone();
                        p.push(k);
                        flatten(p, x, out)
                    }),
                    other => out.push((prefix, other)),
                }
            }
            if let Some(v) = val {
                flatten(segs[1..].to_vec(), v, &mut flat);
            }
            for (p, v) in flat {
                let key = p.get(1).cloned().unwrap_or_default();
                if p.len() < 2 || !ctx.m.flake_input_keys.contains(&key) {
                    ctx.err(
                        &at,
                        format!(
                            "inputs.{}: not an input attribute ({:?})",
                            p.join("."),
                            ctx.m.flake_input_keys
                        ),
                    );
                } else if key == "url" && !matches!(v, Val::Str(_)) {
                    ctx.err(&at, format!("inputs.{}: expected a string", p.join(".")));
                } else {
                    ctx.rep.checked += 1;
                }
            }
        }
    }
    // The modules handed to lib.nixosSystem: inline attribute sets are NixOS modules.
    let mut found = false;
    for node in expr.syntax().descendants() {
        let Some(e) = ast::Expr::cast(node.clone()) else {
            continue;
        };
        let Some((f, args)) = unapply(&e) else {
            continue;
        };
        if last_seg(&f) != "nixosSystem" {
            continue;
        }
        found = true;
        let Some(ast::Expr::AttrSet(a)) = args.last().map(|x| strip_paren(x.clone())) else {
            continue;
        };
        for apv in a.attrpath_values() {
            let name = apv
                .attrpath()
                .and_then(|p| p.attrs().next())
                .and_then(|x| attr_name(&x));
            if name.as_deref() != Some("modules") {
                continue;
            }
            if let Some(ast::Expr::List(l)) = apv.value().map(strip_paren) {
                for item in l.items() {
                    match strip_paren(item.clone()) {
                        ast::Expr::AttrSet(s) => ctx.module_set(&s),
                        other => {
                            let n = other.syntax().clone();
                            ctx.note(
                                &n,
                                format!(
                                    "module `{}` (the host tree, checked file by file)",
                                    other.syntax()
                                ),
                            )
                        }
                    }
                }
            }
        }
    }
    if !found {
        ctx.note(expr.syntax(), "no lib.nixosSystem call in flake.nix".into());
    }
    ctx.note(expr.syntax(), "flake outputs (functions over nixpkgs) are evaluated by tests/nixos_eval.rs with stub inputs, not checked here".into());
}

/// Every `.nix` file under the roots a render writes (`nixos/hosts`, `services`, `flake.nix`), sorted.
pub fn rendered_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().and_then(|x| x.to_str()) == Some("nix") {
                out.push(p);
            }
        }
    }
    walk(&root.join("nixos/hosts"), &mut out);
    walk(&root.join("services"), &mut out);
    if root.join("flake.nix").is_file() {
        out.push(root.join("flake.nix"));
    }
    out.sort();
    out
}

/// Check a whole render tree (the example lab's committed render, a golden tree, a temp render).
pub fn check_tree(m: &Manifest, root: &Path) -> Report {
    let files: Vec<(String, String)> = rendered_files(root)
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    let decls = collect_decls(&files);
    let mut rep = Report::default();
    for (f, text) in &files {
        check_file(m, &decls, f, text, &mut rep);
    }
    rep
}

pub fn manifest() -> Manifest {
    Manifest::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/nixos-options.toml"))
}
