use super::{Cli, Command, Exit};
use crate::spec::{self, Loaded};
use anyhow::Result;
use std::io::Write;

fn load(cli: &Cli) -> Result<Loaded> {
    spec::load_dir(&cli.spec)
}

/// Load the spec; on errors print them and return `Err(Exit::Input)`.
fn load_valid(cli: &Cli) -> Result<std::result::Result<spec::Spec, Exit>> {
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

fn print_json(v: &impl serde::Serialize) -> Result<()> {
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
        Command::Plan { .. }
        | Command::Render { .. }
        | Command::Gate { .. }
        | Command::Graph
        | Command::Secrets { .. } => {
            let _ = load_valid(&cli)?;
            not_yet(&cli)
        }
        _ => not_yet(&cli),
    }
}

fn not_yet(cli: &Cli) -> Result<Exit> {
    let name = format!("{:?}", cli.command)
        .split([' ', '{'])
        .next()
        .unwrap_or("")
        .to_lowercase();
    eprintln!("labforge {name}: not yet implemented (see the open issues)");
    Ok(Exit::Input)
}
