//! Fuzz the spec loader: any bytes, split into up to three files, must give diagnostics or a model — never a
//! panic. Seeds: the example lab files (`fuzz/seed-corpus.sh`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    // A 0xFF byte separates files so the fuzzer also explores cross-file merging (duplicates, references).
    let parts: Vec<&[u8]> = data.splitn(3, |b| *b == 0xFF).collect();
    let names = ["hosts/site.toml", "hosts/a.toml", "hosts/b.toml"];
    let inputs: Vec<(&Path, &[u8])> = parts.iter().enumerate().map(|(i, p)| (Path::new(names[i]), *p)).collect();
    let loaded = labforge::spec::load_bytes(inputs);
    // Rendering diagnostics walks every location: must not panic either.
    let _ = loaded.diagnostics.render(&loaded.sources);
    if let Some(spec) = loaded.spec {
        let hosts: Vec<_> = spec.hosts.values().collect();
        let _ = serde_json::to_string(&labforge::plan::plan(&spec, &hosts));
    }
});
