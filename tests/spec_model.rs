//! Validation semantics on small specs: layered defaults, exceptions, warnings vs errors.
mod common;

use std::path::Path;

fn load(text: &str) -> labforge::spec::Loaded {
    labforge::spec::load_bytes([(Path::new("hosts/site.toml"), text.as_bytes())])
}

fn base() -> String {
    std::fs::read_to_string(common::repo().join("tests/base-spec.toml")).unwrap()
}

#[test]
fn layers_apply_site_then_role_then_tags_then_host() {
    let text = base()
        + r#"
[site.defaults]
packages = ["htop"]
[roles.compute]
packages = ["qemu-kvm"]
virtualisation = { cpu_mode = "host-passthrough" }
[tags.fast]
packages = ["tmux"]
hardening = { max_auth_tries = 2 }
"#;
    let text = text.replace(
        "role = \"compute\"\ndisposable = true",
        "role = \"compute\"\ntags = [\"fast\"]\npackages = [\"git\"]\ndisposable = true",
    );
    let l = load(&text);
    assert!(
        !l.diagnostics.has_errors(),
        "{}",
        l.diagnostics.render(&l.sources)
    );
    let spec = l.spec.unwrap();
    let h = &spec.hosts["alpha"];
    assert_eq!(h.packages, ["htop", "qemu-kvm", "tmux", "git"]);
    assert_eq!(
        h.virtualisation.as_ref().unwrap().cpu_mode,
        "host-passthrough"
    );
    assert_eq!(h.hardening.max_auth_tries, 2);
    assert_eq!(
        spec.hosts["store1"].hardening.max_auth_tries, 3,
        "layers apply only to their hosts"
    );
    assert_eq!(spec.hosts["store1"].packages, ["htop"]);
}

#[test]
fn the_example_lab_uses_layers_for_the_pis_and_compute() {
    let l = labforge::spec::load_dir(&common::repo().join("hosts")).unwrap();
    let spec = l.spec.unwrap();
    let p = &spec.hosts["prometheus"];
    assert!(p.disposable, "role compute is disposable by default");
    for pkg in [
        "qemu-kvm",
        "libvirt-daemon-system",
        "nfs-common",
        "htop",
        "docker.io",
    ] {
        assert!(p.packages.iter().any(|x| x == pkg), "{pkg}");
    }
    assert_eq!(
        spec.hosts["iris"].arch,
        labforge::spec::model::Arch::Aarch64
    );
    assert_eq!(spec.hosts["hestia"].os, labforge::spec::model::Os::Nixos);
    assert_eq!(spec.hosts["hestia"].state_version.as_deref(), Some("25.05"));
    assert_eq!(spec.clusters["domum"].control_planes.len(), 3);
    assert_eq!(p.management_address().unwrap().to_string(), "10.99.0.10");
}

#[test]
fn an_exception_turns_a_finding_into_a_warning_and_a_stale_one_is_reported() {
    let text = base().replace(
        "ports = [{ host = 8080, container = 80, network = \"servers\" }]",
        "ports = [{ host = 8080, container = 80, network = \"servers\" }, { host = 9113, network = \"servers\" }]",
    );
    let l = load(&text);
    assert!(l
        .diagnostics
        .errors
        .iter()
        .any(|d| d.rule == "S001-METRICS-INTERNAL"));
    let with_exc = text.replace(
        "persistent_paths = [\"/srv/data\"]\n",
        "persistent_paths = [\"/srv/data\"]\nexceptions = [{ rule = \"S001-METRICS-INTERNAL\", subject = \"stacks.web.services.app.metrics\", reason = \"scraped from the monitoring VLAN on purpose\" }, { rule = \"S000-SVC-BIND\", subject = \"stacks.web.services.app.ports[7]\", reason = \"left over from an old layout\" }]\n",
    );
    let l = load(&with_exc);
    assert!(
        !l.diagnostics.has_errors(),
        "{}",
        l.diagnostics.render(&l.sources)
    );
    assert!(l.diagnostics.warnings.iter().any(
        |d| d.rule == "S001-METRICS-INTERNAL" && d.message.contains("allowed by an exception")
    ));
    assert!(l
        .diagnostics
        .warnings
        .iter()
        .any(|d| d.rule == "SPEC022" && d.message.contains("matches no finding")));
}

#[test]
fn every_problem_is_reported_at_once_and_sorted() {
    let text = base()
        .replace("address = \"10.99.0.10\"", "address = \"10.98.0.10\"")
        .replace("permit_root_login = \"no\"", "permit_root_login = \"yes\"")
        .replace("from = \"store1\"", "from = \"store9\"");
    let l = load(&text);
    let rules: Vec<&str> = l.diagnostics.errors.iter().map(|d| d.rule).collect();
    for r in ["SPEC012", "S000-ROOT-LOGIN", "SPEC016"] {
        assert!(rules.contains(&r), "{r} missing from {rules:?}");
    }
    let lines: Vec<usize> = l
        .diagnostics
        .errors
        .iter()
        .map(|d| d.line.unwrap())
        .collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted, "errors are sorted by location");
}

#[test]
fn rule_ids_are_unique_and_documented() {
    let doc = std::fs::read_to_string(common::repo().join("docs/rules.md")).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for r in labforge::spec::rules::RULES {
        assert!(seen.insert(r.id), "duplicate rule id {}", r.id);
        assert!(
            doc.contains(&format!("`{}`", r.id)),
            "docs/rules.md does not document {}",
            r.id
        );
    }
}

#[test]
fn loader_survives_garbage_without_panicking() {
    for input in [
        &b"\xff\xfe"[..],
        b"[[[",
        b"site = 1",
        b"[hosts.a]\ninterfaces = 3",
        b"[site]\nname=1\n[site]",
        b"",
    ] {
        let l = labforge::spec::load_bytes([(Path::new("x.toml"), input)]);
        let _ = l.diagnostics.render(&l.sources);
        assert!(l.spec.is_none() || l.diagnostics.errors.is_empty());
    }
}

#[test]
fn regression_layer_errors_name_their_layer_not_a_bare_field() {
    let text = base() + "\n[roles.compute]\npackages = [\"bad package!\"]\n";
    let l = load(&text);
    let e = l
        .diagnostics
        .errors
        .iter()
        .find(|d| d.rule == "SPEC003")
        .expect("bad package reported");
    assert_eq!(e.path, "roles.compute.packages[0]");
    assert!(e.line.is_some());
}

// ---- no spec string can add a line to a rendered file (issue 14, point 1) ----

/// The characters that break a line somewhere: C0 (with \n \r \t \v \f), DEL, C1 (with NEL), the Unicode line
/// and paragraph separators YAML 1.1 and JavaScript break on, and a BOM.
const LINE_BREAKERS: &[char] = &[
    '\n', '\r', '\t', '\0', '\u{b}', '\u{c}', '\u{1b}', '\u{7f}', '\u{85}', '\u{9b}', '\u{2028}',
    '\u{2029}', '\u{feff}',
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic, seedable (LABFORGE_FUZZ_SEED) so a failure can be replayed.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn join_path(prefix: &str, key: &str) -> String {
    let key = if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}

/// Every string leaf of a TOML value, as (field path, mutable reference).
fn string_leaves<'a>(
    v: &'a mut toml::Value,
    path: String,
    out: &mut Vec<(String, &'a mut String)>,
) {
    match v {
        toml::Value::String(s) => out.push((path, s)),
        toml::Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                string_leaves(x, format!("{path}[{i}]"), out);
            }
        }
        toml::Value::Table(t) => {
            for (k, x) in t.iter_mut() {
                let p = join_path(&path, k);
                string_leaves(x, p, out);
            }
        }
        _ => {}
    }
}

fn insert_at(s: &mut String, rng: &mut Rng, c: char) {
    let n = s.chars().count();
    let at = rng.below(n + 1);
    let byte = s.char_indices().nth(at).map(|(b, _)| b).unwrap_or(s.len());
    s.insert(byte, c);
}

/// Property: a line-breaking character inserted anywhere in any string of the example lab (every value of every
/// spec file, plus table keys) is refused by `check` with SPEC026 naming exactly that field, and nothing else
/// about that field — so it can never reach a rendered file.
#[test]
fn no_spec_string_can_add_a_line_to_a_rendered_file() {
    let seed: u64 = std::env::var("LABFORGE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x1abf_0e6e_2026);
    let mut rng = Rng(seed | 1);
    let dir = common::repo().join("hosts");
    let mut files = Vec::new();
    fn collect(d: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                collect(&p, out);
            } else if p.extension().is_some_and(|x| x == "toml") {
                out.push(p);
            }
        }
    }
    collect(&dir, &mut files);
    files.sort();
    let texts: Vec<String> = files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let clean = labforge::spec::load_bytes(
        files
            .iter()
            .zip(&texts)
            .map(|(p, t)| (p.as_path(), t.as_bytes())),
    );
    assert!(
        !clean.diagnostics.has_errors(),
        "{}",
        clean.diagnostics.render(&clean.sources)
    );
    let mut tried = 0;
    for (fi, text) in texts.iter().enumerate() {
        let doc: toml::Value = toml::from_str(text).unwrap();
        let n = {
            let mut d = doc.clone();
            let mut leaves = Vec::new();
            string_leaves(&mut d, String::new(), &mut leaves);
            leaves.len()
        };
        for li in 0..n {
            let mut d = doc.clone();
            let mut leaves = Vec::new();
            string_leaves(&mut d, String::new(), &mut leaves);
            let (path, s) = leaves.swap_remove(li);
            let c = LINE_BREAKERS[rng.below(LINE_BREAKERS.len())];
            insert_at(s, &mut rng, c);
            let bad = toml::to_string(&d).unwrap();
            let l = labforge::spec::load_bytes(files.iter().enumerate().map(|(i, p)| {
                let t = if i == fi {
                    bad.as_str()
                } else {
                    texts[i].as_str()
                };
                (p.as_path(), t.as_bytes())
            }));
            assert!(
                l.spec.is_none(),
                "seed {seed}: {c:?} in {path} ({}) was accepted",
                files[fi].display()
            );
            let errs = &l.diagnostics.errors;
            assert!(
                errs.iter().any(|e| e.rule == "SPEC026" && e.path == path),
                "seed {seed}: {c:?} in {path}: no SPEC026 naming the field:\n{}",
                l.diagnostics.render(&l.sources)
            );
            let about_it: Vec<_> = errs.iter().filter(|e| e.path == path).collect();
            assert_eq!(
                about_it.len(),
                1,
                "seed {seed}: {c:?} in {path}: one mistake, one error:\n{}",
                l.diagnostics.render(&l.sources)
            );
            tried += 1;
        }
    }
    assert!(tried > 200, "the example lab has only {tried} strings?");
}

#[test]
fn a_control_character_in_a_table_key_is_refused_at_the_key() {
    let text = base().replace(
        "APP_MODE = \"production\"",
        "\"APP\\nMODE\" = \"production\"",
    );
    let l = load(&text);
    let e: Vec<_> = l
        .diagnostics
        .errors
        .iter()
        .filter(|e| e.rule == "SPEC026")
        .collect();
    assert_eq!(e.len(), 1, "{}", l.diagnostics.render(&l.sources));
    assert_eq!(
        e[0].path,
        "stacks.web.services.app.environment.\"APP\\nMODE\""
    );
}
