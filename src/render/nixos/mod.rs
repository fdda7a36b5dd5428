//! The nixos backend: one module tree per `os = "nixos"` host (`nixos/hosts/<host>/*.nix`), the standard
//! service template's `services/<stack>/service.nix` (seed 001) for every stack a NixOS host runs, and the
//! repository's `flake.nix` listing every NixOS host.
//!
//! Everything rendered here goes to git and the world-readable Nix store, so no secret value is ever read:
//! the backend never touches the secrets store. Stacks read their secrets at run time from
//! `/run/secrets/labforge/<stack>.env`; the SSH host key is provisioned out of band at
//! `/etc/ssh/ssh_host_ed25519_key`. Templates live in `templates/nixos/` and are compiled into the binary.

mod context;

pub use context::{NIXOS_HARDWARE_REV, NIXOS_RELEASE};

use crate::render::{Artifact, Backend, Kind, RenderCtx};
use crate::spec::model::{Os, Spec};
use anyhow::{anyhow, Context as _, Result};
use std::collections::BTreeMap;

pub struct Nixos;

/// The modules of one host, in import order (`default.nix` imports the others).
pub const HOST_MODULES: &[&str] = &[
    "default.nix",
    "hardware.nix",
    "networking.nix",
    "firewall.nix",
    "ssh.nix",
    "users.nix",
    "storage.nix",
    "services.nix",
];

const TEMPLATES: &[(&str, &str)] = &[
    (
        "default.nix",
        include_str!("../../../templates/nixos/default.nix.tera"),
    ),
    (
        "hardware.nix",
        include_str!("../../../templates/nixos/hardware.nix.tera"),
    ),
    (
        "networking.nix",
        include_str!("../../../templates/nixos/networking.nix.tera"),
    ),
    (
        "firewall.nix",
        include_str!("../../../templates/nixos/firewall.nix.tera"),
    ),
    (
        "ssh.nix",
        include_str!("../../../templates/nixos/ssh.nix.tera"),
    ),
    (
        "users.nix",
        include_str!("../../../templates/nixos/users.nix.tera"),
    ),
    (
        "storage.nix",
        include_str!("../../../templates/nixos/storage.nix.tera"),
    ),
    (
        "services.nix",
        include_str!("../../../templates/nixos/services.nix.tera"),
    ),
    (
        "service.nix",
        include_str!("../../../templates/nixos/service.nix.tera"),
    ),
    (
        "flake.nix",
        include_str!("../../../templates/nixos/flake.nix.tera"),
    ),
];

/// NixOS hosts of the spec, in name order.
pub fn nixos_hosts(spec: &Spec) -> Vec<&crate::spec::model::Host> {
    spec.hosts.values().filter(|h| h.os == Os::Nixos).collect()
}

/// Stacks run by at least one NixOS host → those hosts.
pub fn nixos_stacks(spec: &Spec) -> BTreeMap<&str, Vec<String>> {
    let mut out: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for h in nixos_hosts(spec) {
        for s in &h.stacks {
            if let Some((name, _)) = spec.stacks.get_key_value(s) {
                out.entry(name.as_str()).or_default().push(h.name.clone());
            }
        }
    }
    out
}

fn engine() -> Result<tera::Tera> {
    let mut t = tera::Tera::default();
    t.autoescape_on(vec![]);
    t.add_raw_templates(TEMPLATES.iter().copied())
        .map_err(|e| anyhow!("internal error: a nixos template does not compile: {e:?}"))?;
    t.register_filter("nix", nix_filter);
    Ok(t)
}

/// `{{ value | nix }}`: a Nix literal for a JSON value (strings quoted and escaped, lists, attrsets).
fn nix_filter(
    v: &tera::Value,
    _args: &std::collections::HashMap<String, tera::Value>,
) -> tera::Result<tera::Value> {
    Ok(tera::Value::String(nix_literal(v)))
}

/// A Nix string literal: `"` and `\` escaped, `${` defused, so no spec value can inject Nix code.
pub fn nix_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' if chars.peek() == Some(&'{') => out.push_str("\\$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A Nix attribute name: bare when it is a plain identifier, quoted otherwise.
pub fn nix_attr(s: &str) -> String {
    let ident = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '\'')
        && !matches!(
            s,
            "if" | "then"
                | "else"
                | "assert"
                | "with"
                | "let"
                | "in"
                | "rec"
                | "inherit"
                | "or"
                | "true"
                | "false"
                | "null"
        );
    if ident {
        s.to_string()
    } else {
        nix_string(s)
    }
}

pub fn nix_literal(v: &tera::Value) -> String {
    match v {
        tera::Value::Null => "null".into(),
        tera::Value::Bool(b) => b.to_string(),
        tera::Value::Number(n) => n.to_string(),
        tera::Value::String(s) => nix_string(s),
        tera::Value::Array(a) if a.is_empty() => "[ ]".into(),
        tera::Value::Array(a) => {
            let items: Vec<String> = a.iter().map(nix_literal).collect();
            format!("[ {} ]", items.join(" "))
        }
        tera::Value::Object(o) if o.is_empty() => "{ }".into(),
        tera::Value::Object(o) => {
            let items: Vec<String> = o
                .iter()
                .map(|(k, v)| format!("{} = {};", nix_attr(k), nix_literal(v)))
                .collect();
            format!("{{ {} }}", items.join(" "))
        }
    }
}

fn render_one(t: &tera::Tera, template: &str, ctx: &serde_json::Value) -> Result<Vec<u8>> {
    let c = tera::Context::from_value(ctx.clone())
        .map_err(|e| anyhow!("internal error: nixos template context: {e}"))?;
    let mut s = t.render(template, &c).map_err(|e| {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        anyhow!("internal error: rendering {template}: {msg}")
    })?;
    // Collapse the blank-line runs that template conditionals leave behind; end with exactly one newline.
    let mut out = String::with_capacity(s.len());
    let mut blank = 0;
    for line in s.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    s = out.trim_end().to_string();
    s.push('\n');
    Ok(s.into_bytes())
}

impl Backend for Nixos {
    fn name(&self) -> &'static str {
        "nixos"
    }

    fn plan(&self, spec: &Spec) -> Vec<Artifact> {
        let hosts = nixos_hosts(spec);
        let mut out = Vec::new();
        if hosts.is_empty() {
            return out;
        }
        for h in &hosts {
            for m in HOST_MODULES {
                out.push(Artifact::new(
                    format!("nixos/hosts/{}/{m}", h.name),
                    Kind::NixosModule,
                    "nixos",
                    vec![h.name.clone()],
                ));
            }
        }
        for (stack, on) in nixos_stacks(spec) {
            out.push(
                Artifact::new(
                    format!("services/{stack}/service.nix"),
                    Kind::ServiceNix,
                    "nixos",
                    on,
                )
                .stack(stack),
            );
        }
        out.push(Artifact::new(
            "flake.nix",
            Kind::Flake,
            "nixos",
            hosts.iter().map(|h| h.name.clone()).collect(),
        ));
        out
    }

    fn render(&self, ctx: &RenderCtx, artifacts: &[&Artifact]) -> Result<Vec<(String, Vec<u8>)>> {
        let spec = ctx.spec;
        let t = engine()?;
        let mut host_ctx: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        let mut out = Vec::new();
        for a in artifacts {
            let bytes = match a.kind {
                Kind::NixosModule => {
                    let rest = a.path.strip_prefix("nixos/hosts/").ok_or_else(|| {
                        anyhow!("internal error: unexpected nixos path {}", a.path)
                    })?;
                    let (host, module) = rest.split_once('/').ok_or_else(|| {
                        anyhow!("internal error: unexpected nixos path {}", a.path)
                    })?;
                    let h = spec
                        .hosts
                        .get(host)
                        .ok_or_else(|| anyhow!("internal error: no host {host}"))?;
                    if !host_ctx.contains_key(host) {
                        let c = context::host(spec, h).with_context(|| format!("host `{host}`"))?;
                        host_ctx.insert(host.to_string(), c);
                    }
                    render_one(&t, module, &host_ctx[host])?
                }
                Kind::ServiceNix => {
                    let stack = a.stack.as_deref().unwrap_or_default();
                    let st = spec
                        .stacks
                        .get(stack)
                        .ok_or_else(|| anyhow!("internal error: no stack {stack}"))?;
                    render_one(&t, "service.nix", &context::service(spec, st, &a.hosts)?)?
                }
                Kind::Flake => render_one(&t, "flake.nix", &context::flake(spec)?)?,
                other => {
                    return Err(anyhow!(
                        "internal error: the nixos backend was asked for a {other:?} artifact"
                    ))
                }
            };
            out.push((a.path.clone(), bytes));
        }
        Ok(out)
    }

    fn owned_dirs(&self) -> Vec<&'static str> {
        vec!["nixos/hosts"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_strings_cannot_inject() {
        assert_eq!(nix_string("a\"b"), r#""a\"b""#);
        assert_eq!(nix_string("${x}"), r#""\${x}""#);
        assert_eq!(nix_string("$x"), r#""$x""#);
        assert_eq!(nix_string("a\\"), r#""a\\""#);
        assert_eq!(nix_attr("eno1"), "eno1");
        assert_eq!(nix_attr("10-eno1"), "\"10-eno1\"");
        assert_eq!(nix_attr("/export"), "\"/export\"");
        assert_eq!(nix_attr("in"), "\"in\"");
    }
}
