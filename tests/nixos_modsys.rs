//! The typed module-system oracle (issue 18, point 5): every rendered NixOS module evaluated by
//! tests/nixos_modsys.nix with the option declarations of tests/nixopts/declarations.nix (copies of nixpkgs'
//! declarations at the pinned release, typed with tests/nixopts/types.nix), the way `lib.evalModules`
//! judges a configuration: an option nobody declares "does not exist", a value not of its option's type is
//! rejected, a failed `assertions` entry fails. Unlike the rnix walk of tests/nixos_options.rs it sees
//! evaluated values (through `let`, functions, `mkIf`/`mkForce`, interpolations and imports).
//!
//! * every `.nix` module of every rendered tree (committed example lab, a fresh render, golden
//!   nixos-compute) is evaluated with the oracle, image/board module copies included, and passes;
//! * a misspelt option, wrong types (a literal, an evaluated value), an unknown unit-section field and a
//!   failed assertion in a rendered module are each rejected with exactly one message naming the option;
//! * the declarations cover every option path of tests/nixos-options.toml, and each names its source file.
//!
//! The sshd settings are judged by the real `sshd -t` in tests/nixos_eval.rs and tests/nixos_options.rs.
mod common;

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const MODSYS: &str = include_str!("nixos_modsys.nix");
const COPIES: &str = include_str!("nixopts/image-modules.nix");

const STUB_INPUTS: &str = r#"{ nixos-hardware.nixosModules = {
    raspberry-pi-4 = { _external = "nixos-hardware:raspberry-pi-4"; };
    raspberry-pi-5 = { _external = "nixos-hardware:raspberry-pi-5"; };
  }; }"#;

fn nix_str(s: &str) -> String {
    labforge::render::nixos::nix_string(s)
}

fn nix_eval(expr: &str) -> Result<Value, String> {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("modsys.nix"), MODSYS).unwrap();
    std::fs::write(t.path().join("image-modules.nix"), COPIES).unwrap();
    let file = t.path().join("eval.nix");
    std::fs::write(&file, expr).unwrap();
    let o = Command::new(common::oracle("nix-instantiate"))
        .args(["--eval", "--strict", "--json"])
        .arg(&file)
        .output()
        .expect("running nix-instantiate");
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&o.stdout).expect("nix-instantiate printed JSON"))
}

/// A golden tree (tests/golden/*/out) holds the NixOS backend's files only: the compose side the stack
/// template's assertions look for (docker-compose.yml, hosts/<host>.env) is not in it.
fn check_assertions(root: &Path) -> &'static str {
    if root.starts_with(common::repo().join("tests/golden")) {
        "false"
    } else {
        "true"
    }
}

fn oracle() -> String {
    format!(
        "(/. + {})",
        nix_str(&common::repo().join("tests/nixopts").to_string_lossy())
    )
}

/// `{ errors; files; }` of one host under `root`, with the upstream image/board module copies evaluated.
fn check_host(root: &Path, host: &str) -> Value {
    let host_path = nix_str(&root.join("nixos/hosts").join(host).to_string_lossy());
    let expr = format!(
        "let r = import ./modsys.nix {{ modules = [ (/. + {host_path}) {{ virtualisation.docker.package = \"/stub/docker\"; }} ]; \
         specialArgs = {{ inputs = {STUB_INPUTS}; }}; pkgNames = [ \"htop\" \"tmux\" \"curl\" \"git\" ]; \
         copies = import ./image-modules.nix; oracle = {}; checkAssertions = {}; }}; in {{ inherit (r) errors files; }}",
        oracle(),
        check_assertions(root)
    );
    nix_eval(&expr).unwrap_or_else(|e| panic!("evaluating {host} under {}:\n{e}", root.display()))
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| {
            x.as_str()
                .map(String::from)
                .unwrap_or_else(|| x.to_string())
        })
        .collect()
}

fn hosts(root: &Path) -> Vec<String> {
    let mut h: Vec<String> = std::fs::read_dir(root.join("nixos/hosts"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    h.sort();
    h
}

/// Every rendered NixOS module of a tree: the host modules and the stacks' service.nix.
fn rendered_modules(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for h in hosts(root) {
        for e in std::fs::read_dir(root.join("nixos/hosts").join(&h))
            .unwrap()
            .flatten()
        {
            if e.path().extension().is_some_and(|x| x == "nix") {
                out.insert(e.path());
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(root.join("services")) {
        for e in rd.flatten() {
            let m = e.path().join("service.nix");
            if m.exists() {
                out.insert(m);
            }
        }
    }
    out
}

fn render_lab(t: &Path) {
    let o = common::labforge(t, &["secrets", "init"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let o = common::labforge(t, &["render"]);
    assert!(
        o.status.success(),
        "{}{}",
        common::stdout(&o),
        common::stderr(&o)
    );
}

/// Evaluate every host of `root` with the oracle; all must pass, and together they must load every
/// rendered module of the tree (so none escapes the check).
fn tree_passes(name: &str, root: &Path) {
    let mut loaded = BTreeSet::new();
    let mut failures = Vec::new();
    let hs = hosts(root);
    assert!(!hs.is_empty(), "{name}: no NixOS hosts");
    for h in &hs {
        let r = check_host(root, h);
        for e in strs(&r["errors"]) {
            failures.push(format!("{h}: {e}"));
        }
        for f in strs(&r["files"]) {
            let p = PathBuf::from(&f);
            loaded.insert(if p.is_dir() { p.join("default.nix") } else { p });
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: the module-system oracle rejects:\n{}",
        failures.join("\n")
    );
    let want = rendered_modules(root);
    let missed: Vec<_> = want.difference(&loaded).collect();
    assert!(
        missed.is_empty(),
        "{name}: rendered modules no host evaluation loads: {missed:?}"
    );
    eprintln!(
        "{name}: {} hosts, {} modules type-checked",
        hs.len(),
        want.len()
    );
}

#[test]
fn every_rendered_module_passes_the_typed_module_system_oracle() {
    let r = common::repo();
    tree_passes("committed render of the example lab", &r);
    tree_passes(
        "golden nixos-compute",
        &r.join("tests/golden/nixos-compute/out"),
    );
    let t = common::example_lab();
    render_lab(t.path());
    tree_passes("fresh render of the example lab", t.path());
}

/// A rendered lab in which `file` has `from` replaced by `to`: the oracle's errors for `host`.
fn errors_after(lab: &Path, host: &str, file: &str, from: &str, to: &str) -> Vec<String> {
    let p = lab.join(file);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{file} lacks {from:?}");
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    let r = check_host(lab, host);
    std::fs::write(&p, &text).unwrap();
    strs(&r["errors"])
}

#[test]
fn a_misspelt_option_a_wrong_type_and_a_failed_assertion_in_a_rendered_module_are_rejected() {
    let t = common::example_lab();
    render_lab(t.path());
    let lab = t.path();
    assert_eq!(
        strs(&check_host(lab, "hermes")["errors"]),
        Vec::<String>::new(),
        "the unmodified render passes"
    );
    // (host, file, from, to, messages that must appear): one error per message (a "Definition value" line
    // belongs to the message before it), except the assertion case: both of hermes's stacks need Docker.
    let cases: &[(&str, &str, &str, &str, &[&str])] = &[
        // A misspelt option.
        (
            "hermes",
            "nixos/hosts/hermes/ssh.nix",
            "openFirewall = false;",
            "openFirwall = false;",
            &["The option `services.openssh.openFirwall' does not exist."],
        ),
        // A misspelt option in a submodule.
        (
            "hermes",
            "nixos/hosts/hermes/users.nix",
            "isNormalUser = true;",
            "isNormaluser = true;",
            &["The option `users.users.ops.isNormaluser' does not exist."],
        ),
        // A wrong literal type inside a list of submodules.
        (
            "hermes",
            "nixos/hosts/hermes/ssh.nix",
            "{ addr = \"10.99.0.50\"; port = 22; }",
            "{ addr = \"10.99.0.50\"; port = \"22\"; }",
            &[
                "services.openssh.listenAddresses.\"[definition 1-entry 1]\".port' is not of type `integer between 0 and 65535",
                "Definition value: \"22\"",
            ],
        ),
        // A string where a list is declared.
        (
            "hermes",
            "nixos/hosts/hermes/users.nix",
            "extraGroups = [ \"wheel\" ];",
            "extraGroups = \"wheel\";",
            &["`users.users.ops.extraGroups' is not of type `list of string'"],
        ),
        // A misspelt field of a networkd section (nixpkgs' assertOnlyFields).
        (
            "hermes",
            "nixos/hosts/hermes/networking.nix",
            "linkConfig.Name = \"eno1\";",
            "linkConfig.Nmae = \"eno1\";",
            &["systemd.network.links.\"10-eno1\".linkConfig.Nmae' has an unknown field"],
        ),
        // A value outside an enum of the service template.
        (
            "hermes",
            "services/ingress/service.nix",
            "Type = \"oneshot\";",
            "Type = \"one-shot\";",
            &["`systemd.services.labforge-stack-ingress.serviceConfig.Type' is not of type `one of"],
        ),
        // An evaluated value: the let-bound name (a string, not a path) where a path is declared.
        (
            "hermes",
            "services/ingress/service.nix",
            ".source = source;",
            ".source = name;",
            &[
                "`environment.etc.\"labforge/stacks/ingress\".source' is not of type `path'",
                "Definition value: \"ingress\"",
            ],
        ),
        // An evaluated number where the VLAN id range is declared.
        (
            "hestia",
            "nixos/hosts/hestia/networking.nix",
            "vlanConfig.Id = 60;",
            "vlanConfig.Id = 60 * 100;",
            &["vlanConfig.Id' is not of type `integer between 0 and 4094"],
        ),
        // A misspelt field where nixpkgs also requires the field (assertOnlyFields + assertHasField).
        (
            "hestia",
            "nixos/hosts/hestia/networking.nix",
            "Kind = \"vlan\";",
            "Kidn = \"vlan\";",
            &[
                "netdevConfig.Kidn' has an unknown field",
                "netdevConfig' lacks the field Kind",
            ],
        ),
        // The stack template's own assertion (NixOS fails the build on it).
        (
            "hermes",
            "nixos/hosts/hermes/services.nix",
            "virtualisation.docker = {\n    enable = true;",
            "virtualisation.docker = {\n    enable = false;",
            &["Failed assertion: stack ingress needs virtualisation.docker.enable"],
        ),
    ];
    for (host, file, from, to, want) in cases {
        let errs = errors_after(lab, host, file, from, to);
        let n = if want[0].starts_with("Failed assertion") {
            2
        } else {
            want.iter()
                .filter(|w| !w.starts_with("Definition value"))
                .count()
        };
        assert_eq!(errs.len(), n, "{file}: {from:?} -> {to:?}: {errs:#?}");
        for w in *want {
            assert!(
                errs.iter().any(|e| e.contains(w)),
                "{file}: {from:?} -> {to:?}: no error containing {w:?} in {errs:#?}"
            );
        }
    }
}

#[test]
fn the_declarations_cover_the_option_manifest_and_name_their_source() {
    let expr = format!(
        "let tl = import ({o} + \"/types.nix\"); in tl.optionPaths [ ] (import ({o} + \"/declarations.nix\") {{ inherit (tl) types mkOption; }})",
        o = oracle()
    );
    let v = nix_eval(&expr).unwrap_or_else(|e| panic!("{e}"));
    let mut declared = BTreeSet::new();
    for d in v.as_array().unwrap() {
        let path = d["path"].as_str().unwrap().to_string();
        let src = d["src"].as_str().unwrap_or_default();
        assert!(
            !src.is_empty(),
            "{path}: a declaration without the nixpkgs file it is copied from"
        );
        declared.insert(path);
    }
    let manifest: toml::Table = toml::from_str(
        &std::fs::read_to_string(common::repo().join("tests/nixos-options.toml")).unwrap(),
    )
    .unwrap();
    let missing: Vec<&String> = manifest["options"]
        .as_table()
        .unwrap()
        .keys()
        .filter(|k| !declared.contains(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "options in tests/nixos-options.toml that tests/nixopts/declarations.nix does not declare: {missing:?}"
    );
}

/// The flake's VM test (nixos/lib/vm-test.nix, check `vm-verify-<host>`) with stub inputs: each node's
/// configuration through the oracle.
fn vm_test_nodes(root: &Path) -> Value {
    let expr = format!(
        r#"
let
  flake = import (/. + {flake});
  modsys = import ./modsys.nix;
  genAttrs = names: f: builtins.listToAttrs (map (n: {{ name = n; value = f n; }}) names);
  lib = {{
    inherit genAttrs;
    mapAttrs = builtins.mapAttrs;
    filterAttrs = pred: set: builtins.listToAttrs (builtins.filter (x: pred x.name x.value) (map (n: {{ name = n; value = set.${{n}}; }}) (builtins.attrNames set)));
    mapAttrs' = f: set: builtins.listToAttrs (map (n: f n set.${{n}}) (builtins.attrNames set));
    nameValuePair = name: value: {{ inherit name value; }};
    optionalAttrs = c: s: if c then s else {{ }};
    fileset = {{ toSource = a: a; unions = l: l; }};
    nixosSystem = args: {{ config = {{ }}; }};
  }};
  stubPkgs = system: {{
    rustPlatform.buildRustPackage = a: {{ type = "derivation"; inherit (a) pname; }};
    runCommand = name: env: script: {{ inherit name; }};
    writeText = name: text: {{ inherit name; }};
    mkShell = a: a;
    testers.runNixOSTest = t: t;
  }};
  nixpkgs = {{ inherit lib; legacyPackages = genAttrs [ "x86_64-linux" "aarch64-linux" ] stubPkgs; }};
  inputs = {STUB_INPUTS} // {{ inherit nixpkgs self; }};
  self = outputs // {{ outPath = {root}; }};
  outputs = flake.outputs inputs;
  checks = outputs.checks.x86_64-linux;
  vms = builtins.filter (n: builtins.substring 0 10 n == "vm-verify-") (builtins.attrNames checks);
  node = t: m: let r = modsys {{
    modules = [ m {{ virtualisation.docker.package = "/stub/docker"; }} ];
    specialArgs = t.node.specialArgs; oracle = {oracle};
    pkgNames = [ "htop" "tmux" "curl" "git" "openssh" "netcat-openbsd" ];
  }}; in {{ inherit (r) errors files; }};
in builtins.listToAttrs (map (vm: {{ name = vm; value = builtins.mapAttrs (_: node checks.${{vm}}) checks.${{vm}}.nodes; }}) vms)
"#,
        flake = nix_str(&root.join("flake.nix").to_string_lossy()),
        root = nix_str(&root.to_string_lossy()),
        oracle = oracle(),
    );
    nix_eval(&expr).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_vm_tests_nodes_pass_the_typed_module_system_oracle() {
    let root = common::repo();
    let v = vm_test_nodes(&root);
    let vms = v.as_object().unwrap();
    assert_eq!(vms.keys().collect::<Vec<_>>(), ["vm-verify-atlas"]);
    for (vm, nodes) in vms {
        let nodes = nodes.as_object().unwrap();
        assert_eq!(nodes.keys().collect::<Vec<_>>(), ["target", "verifier"]);
        for (n, r) in nodes {
            assert_eq!(
                r["errors"],
                serde_json::json!([]),
                "{vm}.nodes.{n}: the module-system oracle rejects it"
            );
        }
        // The target is the host's own configuration (every module of it loaded and checked).
        let files = strs(&nodes["target"]["files"]);
        assert!(
            files
                .iter()
                .any(|f| f.ends_with("nixos/hosts/atlas/ssh.nix")),
            "{files:?}"
        );
    }
    // And it bites: a test-only override of the wrong type.
    let t = tempfile::tempdir().unwrap();
    for f in ["flake.nix", "Cargo.toml"] {
        std::fs::copy(root.join(f), t.path().join(f)).unwrap();
    }
    for d in ["nixos", "services"] {
        common::copy_dir(&root.join(d), &t.path().join(d));
    }
    let vmt = t.path().join("nixos/lib/vm-test.nix");
    let text = std::fs::read_to_string(&vmt).unwrap();
    assert!(text.contains("assignIP = false;"));
    std::fs::write(
        &vmt,
        text.replacen("assignIP = false;", "assignIP = \"no\";", 1),
    )
    .unwrap();
    let v = vm_test_nodes(t.path());
    let errs = strs(&v["vm-verify-atlas"]["target"]["errors"]);
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(
        errs.iter()
            .all(|e| e.contains(".assignIP' is not of type `boolean'")),
        "{errs:#?}"
    );
}

#[test]
fn a_mount_without_options_renders_a_file_system_nixos_accepts() {
    // Defect: a `[[mounts]]` entry without `options` (the spec's default is none) was rendered as
    // `options = [ ];`, and nixpkgs declares fileSystems.<name>.options as nonEmptyListOf nonEmptyStr.
    let t = common::example_lab();
    let p = t.path().join("hosts/hermes.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    let line = "options = [\"nfsvers=4.2\", \"hard\"]\n";
    assert!(text.contains(line), "hosts/hermes.toml lacks {line:?}");
    std::fs::write(&p, text.replacen(line, "", 1)).unwrap();
    render_lab(t.path());
    let r = check_host(t.path(), "hermes");
    assert_eq!(
        strs(&r["errors"]),
        Vec::<String>::new(),
        "the module-system oracle rejects hermes's storage.nix:\n{}",
        std::fs::read_to_string(t.path().join("nixos/hosts/hermes/storage.nix")).unwrap()
    );
    let storage = std::fs::read_to_string(t.path().join("nixos/hosts/hermes/storage.nix")).unwrap();
    assert!(
        storage.contains("fileSystems.\"/srv/appdata\""),
        "{storage}"
    );
}
