//! The option manifest (tests/nixos-options.toml) and its small type language (nixpkgs' lib.types names).
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone)]
pub enum Lit {
    Str(String),
    Int(i64),
    Bool(bool),
}

#[derive(Debug, Clone)]
pub enum Ty {
    Bool,
    Int,
    Float,
    Str,
    Lines,
    Path,
    Package,
    Attrs,
    Anything,
    UnitOption,
    IntRange(i64, i64),
    NonEmptyStr,
    SingleLineStr,
    PasswdEntry(Box<Ty>),
    StrMatching(regex::Regex, String),
    Enum(Vec<Lit>),
    ListOf(Box<Ty>),
    NonEmptyListOf(Box<Ty>),
    NullOr(Box<Ty>),
    OneOf(Vec<Ty>),
    AttrsOf(Box<Ty>),
    Submodule,
    UnitSection,
}

impl Ty {
    /// Submodules (and sections) are walked field by field instead of checked as one value.
    pub fn is_container(&self) -> bool {
        matches!(self, Ty::Submodule | Ty::UnitSection)
            || matches!(self, Ty::AttrsOf(t) | Ty::ListOf(t) if t.is_container())
    }
}

#[derive(Debug, Clone)]
enum Tok {
    Word(String),
    Str(String),
    Open,
    Close,
    LBrack,
    RBrack,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let cs: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        match c {
            ' ' | '\t' | '\n' => i += 1,
            '(' => {
                out.push(Tok::Open);
                i += 1
            }
            ')' => {
                out.push(Tok::Close);
                i += 1
            }
            '[' => {
                out.push(Tok::LBrack);
                i += 1
            }
            ']' => {
                out.push(Tok::RBrack);
                i += 1
            }
            '"' => {
                let mut j = i + 1;
                let mut v = String::new();
                while j < cs.len() && cs[j] != '"' {
                    if cs[j] == '\\' && j + 1 < cs.len() {
                        j += 1;
                    }
                    v.push(cs[j]);
                    j += 1;
                }
                if j >= cs.len() {
                    return Err(format!("unterminated string in type {s:?}"));
                }
                out.push(Tok::Str(v));
                i = j + 1;
            }
            _ => {
                let mut j = i;
                while j < cs.len() && !" \t\n()[]\"".contains(cs[j]) {
                    j += 1;
                }
                out.push(Tok::Word(cs[i..j].iter().collect()));
                i = j;
            }
        }
    }
    Ok(out)
}

struct P {
    toks: Vec<Tok>,
    pos: usize,
    src: String,
}

impl P {
    fn next(&mut self) -> Result<Tok, String> {
        let t = self
            .toks
            .get(self.pos)
            .cloned()
            .ok_or_else(|| format!("type {:?} ends early", self.src))?;
        self.pos += 1;
        Ok(t)
    }
    fn int(&mut self) -> Result<i64, String> {
        match self.next()? {
            Tok::Word(w) => w.parse().map_err(|_| format!("{w} is not an integer")),
            t => Err(format!("expected an integer, got {t:?}")),
        }
    }
    fn ty(&mut self) -> Result<Ty, String> {
        let t = self.next()?;
        let w = match t {
            Tok::Open => {
                let inner = self.ty()?;
                match self.next()? {
                    Tok::Close => return Ok(inner),
                    t => return Err(format!("expected ) in {:?}, got {t:?}", self.src)),
                }
            }
            Tok::Word(w) => w,
            t => return Err(format!("unexpected {t:?} in type {:?}", self.src)),
        };
        Ok(match w.as_str() {
            "bool" => Ty::Bool,
            "int" => Ty::Int,
            "float" => Ty::Float,
            "str" => Ty::Str,
            "lines" => Ty::Lines,
            "path" => Ty::Path,
            "package" => Ty::Package,
            "attrs" => Ty::Attrs,
            "anything" | "unspecified" => Ty::Anything,
            "unitOption" => Ty::UnitOption,
            "port" => Ty::IntRange(0, 65535),
            "ints.unsigned" => Ty::IntRange(0, i64::MAX),
            "ints.positive" => Ty::IntRange(1, i64::MAX),
            "ints.between" => {
                let a = self.int()?;
                let b = self.int()?;
                Ty::IntRange(a, b)
            }
            "nonEmptyStr" => Ty::NonEmptyStr,
            "singleLineStr" => Ty::SingleLineStr,
            "submodule" => Ty::Submodule,
            "unitSection" => Ty::UnitSection,
            "passwdEntry" => Ty::PasswdEntry(Box::new(self.ty()?)),
            "listOf" => Ty::ListOf(Box::new(self.ty()?)),
            "nonEmptyListOf" => Ty::NonEmptyListOf(Box::new(self.ty()?)),
            "nullOr" => Ty::NullOr(Box::new(self.ty()?)),
            "attrsOf" => Ty::AttrsOf(Box::new(self.ty()?)),
            "either" => {
                let a = self.ty()?;
                let b = self.ty()?;
                Ty::OneOf(vec![a, b])
            }
            "strMatching" => match self.next()? {
                Tok::Str(re) => {
                    // builtins.match matches the whole string (POSIX ERE); the regex crate knows [[:alnum:]].
                    let r = regex::Regex::new(&format!("^(?:{re})$"))
                        .map_err(|e| format!("bad regex {re:?}: {e}"))?;
                    Ty::StrMatching(r, re)
                }
                t => return Err(format!("strMatching needs a string, got {t:?}")),
            },
            "oneOf" | "enum" => {
                match self.next()? {
                    Tok::LBrack => {}
                    t => return Err(format!("{w} needs [ ... ], got {t:?}")),
                }
                let mut tys = Vec::new();
                let mut lits = Vec::new();
                loop {
                    if matches!(self.toks.get(self.pos), Some(Tok::RBrack)) {
                        self.pos += 1;
                        break;
                    }
                    if w == "oneOf" {
                        tys.push(self.ty()?);
                    } else {
                        lits.push(match self.next()? {
                            Tok::Str(s) => Lit::Str(s),
                            Tok::Word(x) if x == "true" => Lit::Bool(true),
                            Tok::Word(x) if x == "false" => Lit::Bool(false),
                            Tok::Word(x) => Lit::Int(
                                x.parse()
                                    .map_err(|_| format!("bad enum value {x} in {:?}", self.src))?,
                            ),
                            t => return Err(format!("bad enum value {t:?}")),
                        });
                    }
                }
                if w == "oneOf" {
                    Ty::OneOf(tys)
                } else {
                    Ty::Enum(lits)
                }
            }
            other => return Err(format!("unknown type name {other:?} in {:?}", self.src)),
        })
    }
}

pub fn parse_ty(s: &str) -> Result<Ty, String> {
    let mut p = P {
        toks: tokenize(s)?,
        pos: 0,
        src: s.to_string(),
    };
    let t = p.ty()?;
    if p.pos != p.toks.len() {
        return Err(format!("trailing tokens in type {s:?}"));
    }
    Ok(t)
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub ty: Ty,
    pub ty_text: String,
    pub freeform: Option<String>,
    pub name: Option<Ty>,
    pub src: String,
}

#[derive(Debug, Clone)]
pub struct Freeform {
    pub value: Ty,
    pub value_text: String,
    pub daemon: String,
}

pub struct Manifest {
    /// Option path (segments, `<name>` / `*` wildcards) to its declaration.
    pub options: BTreeMap<Vec<String>, Entry>,
    pub freeform: BTreeMap<String, Freeform>,
    pub sshd_defaults: toml::Table,
    pub sshd_newer: BTreeMap<String, Vec<String>>,
    pub sshd_comma_keys: Vec<String>,
    pub sshd_list_keys: Vec<String>,
    pub flake_top: Vec<String>,
    pub flake_input_keys: Vec<String>,
}

fn strs(v: Option<&toml::Value>) -> Vec<String> {
    v.and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

pub fn split_path(p: &str) -> Vec<String> {
    p.split('.').map(String::from).collect()
}

impl Manifest {
    pub fn load(file: &Path) -> Manifest {
        let text = std::fs::read_to_string(file).expect("reading the option manifest");
        Manifest::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
    }

    pub fn parse(text: &str) -> Result<Manifest, String> {
        let t: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut options = BTreeMap::new();
        let opts = t
            .get("options")
            .and_then(|o| o.as_table())
            .ok_or("no [options] table")?;
        for (path, e) in opts {
            let ty_text = e
                .get("type")
                .and_then(|x| x.as_str())
                .ok_or(format!("{path}: no type"))?
                .to_string();
            let ty = parse_ty(&ty_text).map_err(|err| format!("{path}: {err}"))?;
            let name = match e.get("name").and_then(|x| x.as_str()) {
                Some(n) => Some(parse_ty(n).map_err(|err| format!("{path}: name: {err}"))?),
                None => None,
            };
            let src = e
                .get("src")
                .and_then(|x| x.as_str())
                .ok_or(format!("{path}: no src"))?
                .to_string();
            if e.get("read").is_none() && e.get("known").is_none() {
                return Err(format!("{path}: say read = true or known = true"));
            }
            options.insert(
                split_path(path),
                Entry {
                    ty,
                    ty_text,
                    freeform: e.get("freeform").and_then(|x| x.as_str()).map(String::from),
                    name,
                    src,
                },
            );
        }
        let mut freeform = BTreeMap::new();
        let mut sshd_comma_keys = Vec::new();
        let mut sshd_list_keys = Vec::new();
        for (n, f) in t
            .get("freeform")
            .and_then(|x| x.as_table())
            .ok_or("no [freeform]")?
        {
            let value_text = f
                .get("value")
                .and_then(|x| x.as_str())
                .ok_or("freeform without value")?
                .to_string();
            let value = parse_ty(&value_text)?;
            if n == "sshd" {
                sshd_comma_keys = strs(f.get("comma_keys"));
                sshd_list_keys = strs(f.get("list_keys"));
            }
            freeform.insert(
                n.clone(),
                Freeform {
                    value,
                    value_text,
                    daemon: f
                        .get("daemon")
                        .and_then(|x| x.as_str())
                        .unwrap_or("")
                        .to_string(),
                },
            );
        }
        for (p, e) in &options {
            if let Some(f) = &e.freeform {
                if !freeform.contains_key(f) {
                    return Err(format!("{}: unknown freeform {f}", p.join(".")));
                }
            }
        }
        let newer = t
            .get("sshd_newer_than_9_2")
            .and_then(|x| x.as_table())
            .ok_or("no [sshd_newer_than_9_2]")?;
        let sshd_newer = newer
            .iter()
            .map(|(k, v)| (k.clone(), strs(Some(v))))
            .collect();
        let flake = t.get("flake").ok_or("no [flake]")?;
        Ok(Manifest {
            options,
            freeform,
            sshd_defaults: t
                .get("sshd_defaults")
                .and_then(|x| x.as_table())
                .cloned()
                .ok_or("no [sshd_defaults]")?,
            sshd_newer,
            sshd_comma_keys,
            sshd_list_keys,
            flake_top: strs(flake.get("top")),
            flake_input_keys: strs(flake.get("input_keys")),
        })
    }

    fn seg_match(pat: &str, seg: &str) -> bool {
        pat == seg || ((pat == "<name>" || pat == "*") && seg.starts_with('\u{1}'))
    }

    /// The declaration of `key` (its segments already mapped to `<name>`/`*` where a submodule was entered).
    pub fn get(&self, key: &[String]) -> Option<&Entry> {
        self.options.get(key)
    }

    /// Whether `key` is a strict prefix of a declared option (an option namespace such as `services`).
    pub fn is_namespace(&self, key: &[String]) -> bool {
        self.options
            .keys()
            .any(|k| k.len() > key.len() && k[..key.len()] == *key)
    }

    /// For a `config.a.b.c` reference: is it an option, a namespace or inside a submodule of one?
    pub fn resolves(&self, path: &[String]) -> bool {
        self.options.iter().any(|(k, e)| {
            let n = k.len().min(path.len());
            let prefix_ok = (0..n).all(|i| {
                k[i] == path[i]
                    || k[i] == "<name>"
                    || k[i] == "*"
                    || Self::seg_match(&k[i], &path[i])
            });
            prefix_ok
                && (path.len() <= k.len()
                    || matches!(e.ty, Ty::Attrs | Ty::Anything | Ty::AttrsOf(_)))
        })
    }
}
