use super::{Cli, Command, Exit};
use crate::spec::{self, Loaded};
use anyhow::Result;
use std::io::Write;

fn load(cli: &Cli) -> Result<Loaded> {
    spec::load_dir(&cli.spec)
}

/// Load the spec; on errors print them and return `Err(Exit::Input)`.
pub(super) fn load_valid(cli: &Cli) -> Result<std::result::Result<spec::Spec, Exit>> {
    let l = load(cli)?;
    if !l.diagnostics.warnings.is_empty() && cli.verbose > 0 {
        eprint!(
            "{}",
            crate::diag::Diagnostics {
                errors: vec![],
                warnings: l.diagnostics.warnings.clone()
            }
            .render(&l.sources)
        );
    }
    match l.spec {
        Some(s) => Ok(Ok(s)),
        None => {
            eprint!("{}", l.diagnostics.render(&l.sources));
            eprintln!("the spec has errors: run `labforge check` for the full list");
            Ok(Err(Exit::Input))
        }
    }
}

pub(super) fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

pub fn dispatch(cli: Cli) -> Result<Exit> {
    match &cli.command {
        Command::Check { json } => {
            let l = load(&cli)?;
            if json.json {
                print_json(&serde_json::json!({
                    "ok": !l.diagnostics.has_errors(),
                    "revision": l.sources.revision(),
                    "errors": l.diagnostics.errors,
                    "warnings": l.diagnostics.warnings,
                }))?;
            } else {
                if !l.diagnostics.errors.is_empty() || !l.diagnostics.warnings.is_empty() {
                    eprint!("{}", l.diagnostics.render(&l.sources));
                }
                if let Some(s) = &l.spec {
                    println!(
                        "ok: {} hosts, {} networks, {} stacks, {} clusters (spec revision {})",
                        s.hosts.len(),
                        s.networks.len(),
                        s.stacks.len(),
                        s.clusters.len(),
                        s.revision
                    );
                }
            }
            Ok(if l.diagnostics.has_errors() {
                Exit::Input
            } else {
                Exit::Ok
            })
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "labforge", &mut std::io::stdout());
            Ok(Exit::Ok)
        }
        Command::Man { dir } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(dir)?;
            clap_mangen::generate_to(Cli::command(), dir)?;
            Ok(Exit::Ok)
        }
        Command::Plan { json, hosts } => {
            let spec = match load_valid(&cli)? {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let sel = match crate::plan::select(&spec, hosts) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(Exit::Input);
                }
            };
            let plan = crate::plan::plan(&spec, &sel);
            if json.json {
                print_json(&plan)?;
            } else {
                print!("{}", human_plan(&plan));
            }
            Ok(Exit::Ok)
        }
        Command::Render {
            check,
            out,
            json,
            hosts,
        } => {
            let spec = match load_valid(&cli)? {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let sel = match crate::plan::select(&spec, hosts) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(Exit::Input);
                }
            };
            let root = out.clone().unwrap_or_else(|| repo_root(&cli.spec));
            let plan = crate::plan::plan(&spec, &sel);
            let artifacts = all_artifacts(&plan);
            let store = if *check {
                None
            } else {
                Some(crate::secrets::Store::open(&root, &spec)?)
            };
            let report = crate::render::run(&spec, store.as_ref(), &artifacts, &root, *check)?;
            if json.json {
                print_json(&report)?;
            } else if *check {
                for f in &report.changed {
                    println!("changed: {f}");
                }
                for f in &report.missing {
                    println!("missing: {f}");
                }
                for f in &report.stale {
                    println!("stale (no longer rendered): {f}");
                }
                if report.drift() {
                    eprintln!("render drift: run `labforge render` and commit the result");
                } else {
                    println!(
                        "ok: {} rendered files match the spec",
                        report.unchanged.len()
                    );
                }
            } else {
                for f in &report.written {
                    println!("wrote {f}");
                }
                println!(
                    "{} written, {} unchanged",
                    report.written.len(),
                    report.unchanged.len()
                );
            }
            Ok(if *check && report.drift() {
                Exit::Failed
            } else {
                Exit::Ok
            })
        }
        Command::Graph => {
            let spec = match load_valid(&cli)? {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            print!("{}", crate::graph::dot(&spec));
            Ok(Exit::Ok)
        }
        Command::Secrets { action } => secrets_cmd(&cli, action),
        Command::Gate { action } => gate_cmd(&cli, action),
        Command::Image { action } => image_cmd(&cli, action),
        Command::Flash {
            image,
            to,
            yes,
            allow_file,
            bmap,
            json,
        } => flash_cmd(image, to, *yes, *allow_file, bmap.as_deref(), json.json),
        Command::Deploy { .. } | Command::Verify { .. } => super::remote::run(&cli),
        Command::Rebuild { .. } => super::rebuild::run(&cli),
    }
}

/// The repository root: the spec directory's parent.
pub fn repo_root(spec_dir: &std::path::Path) -> std::path::PathBuf {
    let abs = if spec_dir.is_absolute() {
        spec_dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(spec_dir))
            .unwrap_or_else(|_| spec_dir.to_path_buf())
    };
    abs.parent().map(|p| p.to_path_buf()).unwrap_or(abs)
}

fn all_artifacts(plan: &crate::plan::Plan) -> Vec<crate::render::Artifact> {
    let mut v: Vec<crate::render::Artifact> = plan
        .hosts
        .iter()
        .flat_map(|h| h.artifacts.iter().cloned())
        .chain(
            plan.clusters
                .iter()
                .flat_map(|c| c.artifacts.iter().cloned()),
        )
        .collect();
    v.sort_by(|a, b| a.path.cmp(&b.path));
    v.dedup_by(|a, b| a.path == b.path);
    v
}

/// The exposure policy as a table: one row per allowed flow, then what is denied.
fn human_exposure(o: &mut String, x: &crate::plan::exposure::Exposure) {
    use std::fmt::Write as _;
    let _ = writeln!(
        o,
        "  exposure ({} allowed flows; everything else: {}):",
        x.flows.len(),
        x.default
    );
    let _ = writeln!(
        o,
        "    {:<32} {:<18} {:<10} {:<8} from",
        "flow", "address", "port", "via"
    );
    for f in &x.flows {
        let addr = match (&f.address, &f.network) {
            (Some(a), _) => a.to_string(),
            (None, _) => f.interface.clone(),
        };
        let mut from = f.from.describe();
        if f.local_containers {
            from.push_str(" + this host's containers");
        }
        let _ = writeln!(
            o,
            "    {:<32} {:<18} {:<10} {:<8} {}",
            f.id,
            addr,
            format!("{}/{}", f.port, f.protocol.as_str()),
            f.interface,
            from
        );
    }
}

fn human_plan(plan: &crate::plan::Plan) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "plan for site {} (spec revision {})",
        plan.site, plan.spec_revision
    );
    for h in &plan.hosts {
        let _ = writeln!(
            o,
            "\nhost {} — {} {} {} ({}{})",
            h.name,
            h.os.as_str(),
            h.arch.as_str(),
            h.board.as_str(),
            h.role,
            if h.disposable { ", disposable" } else { "" }
        );
        if let Some(c) = &h.connect {
            let _ = writeln!(o, "  connect: {c}");
        }
        let _ = writeln!(
            o,
            "  image:   {}",
            serde_json::to_string(&h.image).unwrap_or_default()
        );
        let _ = writeln!(o, "  artifacts ({}):", h.artifacts.len());
        for a in &h.artifacts {
            let _ = writeln!(
                o,
                "    {:<8} {}{}",
                a.backend,
                a.path,
                if a.sensitive { "  (secret, 0600)" } else { "" }
            );
        }
        let _ = writeln!(o, "  deploy ({} steps):", h.deploy.len());
        for s in &h.deploy {
            let _ = writeln!(o, "    {:<40} {}", s.id, s.description);
        }
        if let Some(x) = &h.exposure {
            human_exposure(&mut o, x);
        }
    }
    for c in &plan.clusters {
        let _ = writeln!(
            o,
            "\ncluster {} — Talos {}, Kubernetes {}, endpoint {}",
            c.name, c.talos_version, c.kubernetes_version, c.endpoint
        );
        for cmd in &c.commands {
            let _ = writeln!(o, "    $ {cmd}");
        }
    }
    if !plan.dependencies.waves.is_empty() {
        let _ = writeln!(o, "\ndeploy waves (a host after every host it needs):");
        for (i, w) in plan.dependencies.waves.iter().enumerate() {
            let _ = writeln!(o, "  wave {}: {}", i + 1, w.join(", "));
        }
        for e in &plan.dependencies.edges {
            let kind = serde_json::to_value(e.kind)
                .ok()
                .and_then(|v| v.as_str().map(|s| s.to_string()))
                .unwrap_or_default();
            let _ = writeln!(o, "    {} → {} ({kind}: {})", e.from, e.to, e.why);
        }
    }
    for g in &plan.gates {
        let _ = writeln!(
            o,
            "\ngate {} ({:?} stack {} on {}): operator-validated, seed {}",
            g.id,
            g.when,
            g.stack,
            g.hosts.join(", "),
            g.seed
        );
    }
    o
}

fn secrets_cmd(cli: &Cli, action: &super::SecretsAction) -> Result<Exit> {
    use super::SecretsAction::*;
    if let Init = action {
        let (p, public, created) = crate::secrets::init_identity()?;
        if created {
            eprintln!("created age identity {}", p.display());
        } else {
            eprintln!("age identity {} already exists", p.display());
        }
        println!("{public}");
        eprintln!("add it to site.age_recipients to let other operators' stores include you");
        return Ok(Exit::Ok);
    }
    let spec = match load_valid(cli)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let root = repo_root(&cli.spec);
    let store = crate::secrets::Store::open(&root, &spec)?;
    match action {
        Init => unreachable!(),
        List { json } => {
            let mut rows = Vec::new();
            for s in spec.secrets.values() {
                let present = match &s.source {
                    crate::spec::model::SecretSource::Store => store.has(&s.name)?,
                    crate::spec::model::SecretSource::Env(v) => std::env::var_os(v).is_some(),
                    crate::spec::model::SecretSource::File(p) => std::path::Path::new(p).exists(),
                };
                rows.push(serde_json::json!({"name": s.name, "source": s.source, "generate": s.generate, "present": present}));
            }
            if json.json {
                print_json(&rows)?;
            } else {
                for r in &rows {
                    println!(
                        "{:<32} {:<28} {}",
                        r["name"].as_str().unwrap_or(""),
                        serde_json::to_string(&r["source"]).unwrap_or_default(),
                        if r["present"] == true {
                            "present"
                        } else {
                            "MISSING"
                        }
                    );
                }
            }
            Ok(Exit::Ok)
        }
        Set { name } => {
            let Some(s) = spec.secrets.get(name) else {
                eprintln!("error: no secret `{name}` in the spec (declare [secrets.{name}] first)");
                return Ok(Exit::Input);
            };
            if s.source != crate::spec::model::SecretSource::Store {
                eprintln!(
                    "error: secret `{name}` does not live in the store (source = {:?})",
                    s.source
                );
                return Ok(Exit::Input);
            }
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)?;
            while v.last() == Some(&b'\n') {
                v.pop();
            }
            store.put(name, &v)?;
            eprintln!("stored {name} ({} bytes, encrypted)", v.len());
            Ok(Exit::Ok)
        }
        Generate => {
            let mut n = 0;
            for s in spec.secrets.values() {
                if let (crate::spec::model::SecretSource::Store, Some(g)) = (&s.source, &s.generate)
                {
                    if !store.has(&s.name)? {
                        store.put(&s.name, &crate::secrets::generate_value(g)?)?;
                        eprintln!("generated {}", s.name);
                        n += 1;
                    }
                }
            }
            eprintln!("{n} secret(s) generated");
            Ok(Exit::Ok)
        }
    }
}

fn gate_cmd(cli: &Cli, action: &super::GateAction) -> Result<Exit> {
    use super::GateAction::*;
    let spec = match load_valid(cli)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let root = repo_root(&cli.spec);
    let find = |id: &str| -> Option<&crate::spec::model::Gate> { spec.gates.get(id) };
    match action {
        List { json } => {
            let mut rows = Vec::new();
            for g in spec.gates.values() {
                let (st, s) = crate::gate::status(&spec, &root, g)?;
                rows.push(serde_json::json!({"id": g.id, "seed": g.seed, "title": g.title, "when": g.when, "stack": g.stack, "status": st, "confirmed_by": s.as_ref().map(|s| s.confirmed_by.clone())}));
            }
            if json.json {
                print_json(&rows)?;
            } else {
                for r in &rows {
                    println!(
                        "{:<24} {:<10} {}",
                        r["id"].as_str().unwrap_or(""),
                        r["status"].as_str().unwrap_or(""),
                        r["title"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(Exit::Ok)
        }
        Show { id } => {
            let Some(g) = find(id) else {
                eprintln!("error: no gate `{id}` in the spec");
                return Ok(Exit::Input);
            };
            let (st, s) = crate::gate::status(&spec, &root, g)?;
            println!(
                "gate {} — {} (seed {}, {:?} stack {})",
                g.id, g.title, g.seed, g.when, g.stack
            );
            println!(
                "status: {st:?}{}",
                s.map(|s| format!(" (signed off by {})", s.confirmed_by))
                    .unwrap_or_default()
            );
            println!("\nThe operator validates, by hand:");
            for c in &g.checklist {
                println!("  [ ] {c}");
            }
            if !g.evidence.is_empty() {
                println!("\nEvidence labforge shows on the stack's hosts during deploy (information, never a verdict):");
                for e in &g.evidence {
                    println!("  $ {e}");
                }
            }
            Ok(Exit::Ok)
        }
        Confirm { id, by, note } => {
            let Some(g) = find(id) else {
                eprintln!("error: no gate `{id}` in the spec");
                return Ok(Exit::Input);
            };
            use std::io::IsTerminal;
            if !std::io::stdin().is_terminal() {
                eprintln!("error: gate confirmation is the operator's, typed at a terminal; labforge never confirms a gate by itself (seed {})", g.seed);
                return Ok(Exit::Input);
            }
            eprintln!(
                "{} — seed {}\nConfirm you validated each item yourself:",
                g.title, g.seed
            );
            for c in &g.checklist {
                eprintln!("  [x] {c}");
            }
            eprint!("Type the gate id ({}) to sign off: ", g.id);
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            if line.trim() != g.id {
                eprintln!("not confirmed");
                return Ok(Exit::Failed);
            }
            let who = by
                .clone()
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "operator".into());
            let s = crate::gate::record(&spec, &root, g, &who, note.as_deref().unwrap_or(""))?;
            println!(
                "signed off {} by {} ({})",
                s.gate,
                s.confirmed_by,
                crate::gate::path(&root, &g.id).display()
            );
            Ok(Exit::Ok)
        }
    }
}

fn image_cmd(cli: &Cli, action: &super::ImageAction) -> Result<Exit> {
    let super::ImageAction::Build {
        host,
        base,
        out,
        seed_dir,
        builders,
        flake,
        json,
    } = action;
    let spec = match load_valid(cli)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let sel = match crate::plan::select(&spec, std::slice::from_ref(host)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(Exit::Input);
        }
    };
    let root = repo_root(&cli.spec);
    let plan = crate::plan::plan(&spec, &sel);
    let hp = &plan.hosts[0];
    if base.is_none() {
        let o = crate::rebuild::image::Options {
            out: out.clone(),
            seed_dir: seed_dir.clone(),
            builders: builders.clone(),
            flake: flake.clone(),
            progress: true,
        };
        if let Some(done) =
            crate::rebuild::image::build_from_source(&spec, &root, host, &hp.image, &o)?
        {
            let built = done.built;
            if json.json {
                print_json(&built.manifest)?;
            } else {
                println!(
                    "built {} ({}, sha256 {}) by {}\n  block map {}\n  manifest  {}",
                    built.image.display(),
                    crate::io::human(built.manifest.image.size),
                    built.manifest.image.sha256,
                    done.how,
                    built.bmap.display(),
                    built.manifest_path.display()
                );
            }
            return Ok(Exit::Ok);
        }
    }
    let (base_name, seed_in, output) = match &hp.image {
        crate::plan::ImagePlan::BasePlusSeed {
            base: Some(b),
            seed_in,
            output,
        } => (b.clone(), seed_in.clone(), output.clone()),
        crate::plan::ImagePlan::BasePlusSeed { base: None, .. } => {
            eprintln!("error: host `{host}` has no base image: set `image = \"<name>\"` on it (a file images/<name>.toml)");
            return Ok(Exit::Input);
        }
        other => {
            eprintln!(
                "error: host `{host}` is not built from a vendor base plus seed (its image plan is {}); `labforge image build` handles base+seed hosts",
                serde_json::to_string(other).unwrap_or_default()
            );
            return Ok(Exit::Input);
        }
    };
    let decl = crate::image::decl::load(&root, &base_name)?;
    if decl.decl.seed.as_str() != seed_in {
        eprintln!(
            "error: host `{host}` needs its seed in `{seed_in}` (board {}), but base `{base_name}` declares seed = \"{}\" ({})",
            hp.board.as_str(),
            decl.decl.seed.as_str(),
            decl.file.display()
        );
        return Ok(Exit::Input);
    }
    if decl.decl.arch != hp.arch.as_str() {
        eprintln!(
            "error: host `{host}` is {} but base `{base_name}` is {} ({})",
            hp.arch.as_str(),
            decl.decl.arch,
            decl.file.display()
        );
        return Ok(Exit::Input);
    }
    decl.pinned()?;
    let seed = match seed_dir {
        Some(d) => crate::image::seed_from_dir(d)?,
        None => crate::image::host_seed(&spec, &root, host)?,
    };
    let out = out.clone().unwrap_or_else(|| root.join(output));
    let base_path = base.clone().unwrap_or_else(|| decl.local_path(&root));
    let built = crate::image::build(&crate::image::BuildInput {
        host,
        spec_revision: &spec.revision,
        base: &decl,
        base_path,
        seed,
        out,
        progress: true,
    })?;
    if json.json {
        print_json(&built.manifest)?;
    } else {
        println!(
            "built {} ({}, sha256 {})\n  block map {}\n  manifest  {}",
            built.image.display(),
            crate::io::human(built.manifest.image.size),
            built.manifest.image.sha256,
            built.bmap.display(),
            built.manifest_path.display()
        );
    }
    Ok(Exit::Ok)
}

fn flash_cmd(
    image: &std::path::Path,
    to: &std::path::Path,
    yes: bool,
    allow_file: bool,
    bmap: Option<&std::path::Path>,
    json: bool,
) -> Result<Exit> {
    let r = crate::flash::flash(crate::flash::Options {
        image: image.to_path_buf(),
        bmap: bmap.map(|p| p.to_path_buf()),
        target: to.to_path_buf(),
        yes,
        allow_file,
        progress: true,
        after_write: None,
    });
    match r {
        Ok(rep) => {
            if json {
                print_json(&rep)?;
            } else {
                println!(
                    "flashed {} to {}: {} written, {} zeroed, {} read back and verified{}",
                    image.display(),
                    rep.target,
                    crate::io::human(rep.written),
                    crate::io::human(rep.zeroed),
                    crate::io::human(rep.verified),
                    if rep.direct {
                        " (O_DIRECT)"
                    } else {
                        " (buffered: O_DIRECT not supported here)"
                    }
                );
            }
            Ok(Exit::Ok)
        }
        Err(e @ crate::flash::Error::Refused(_)) => {
            eprintln!("error: {e}");
            Ok(Exit::Input)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(Exit::Failed)
        }
    }
}
