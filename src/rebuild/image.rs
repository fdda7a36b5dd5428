//! Build a host's image from its plan entry: `nix build` (NixOS), mmdebstrap (Debian without a base), or
//! base + seed (src/image). Shared by `labforge image build` and `labforge rebuild`.

use crate::image::Built;
use crate::plan::ImagePlan;
use crate::spec::model::Spec;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

pub struct Options {
    pub out: Option<PathBuf>,
    pub seed_dir: Option<PathBuf>,
    pub builders: Option<String>,
    pub flake: Option<PathBuf>,
    pub progress: bool,
}

/// What was built, and a line for the operator about how.
pub struct Outcome {
    pub built: Built,
    pub how: String,
}

/// Build HOST's image from source (NixOS or Debian-from-packages plans). `Ok(None)`: the plan is another
/// kind (base + seed, Talos) and the caller handles it.
pub fn build_from_source(
    spec: &Spec,
    root: &Path,
    host: &str,
    plan: &ImagePlan,
    o: &Options,
) -> Result<Option<Outcome>> {
    let h = &spec.hosts[host];
    match plan {
        ImagePlan::NixBuild {
            attr,
            build,
            output,
            variant,
        } => {
            let inp = crate::image::nix::NixInput {
                host,
                spec_revision: &spec.revision,
                flake: o.flake.clone().unwrap_or_else(|| root.to_path_buf()),
                attr: attr.clone(),
                mode: *build,
                builders: o.builders.clone(),
                nix: PathBuf::from("nix"),
                out: o.out.clone().unwrap_or_else(|| root.join(output)),
                progress: o.progress,
            };
            let strategy = crate::image::nix::strategy(*build, o.builders.as_deref());
            let built = crate::image::nix::build(&inp)?;
            Ok(Some(Outcome {
                built,
                how: format!("nix build {attr} ({variant}, {strategy} build)"),
            }))
        }
        ImagePlan::Mmdebstrap {
            suite,
            layout,
            output,
            ..
        } => {
            let seed = match &o.seed_dir {
                Some(d) => crate::image::seed_from_dir(d)?,
                None => crate::image::host_seed(spec, root, host)?,
            };
            let inp = crate::image::debian::DebianInput {
                host,
                spec_revision: &spec.revision,
                arch: h.arch,
                board: h.board,
                suite,
                packages: &h.packages,
                seed,
                out: o.out.clone().unwrap_or_else(|| root.join(output)),
                // `LABFORGE_CACHE` shares the root file system cache between checkouts (CI, tests).
                cache: std::env::var_os("LABFORGE_CACHE")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| root.join("out/cache")),
                progress: o.progress,
            };
            let (built, cached) = crate::image::debian::build(&inp)?;
            let strategy = built
                .manifest
                .build
                .as_ref()
                .and_then(|b| b.inputs.get("strategy"))
                .cloned()
                .unwrap_or_default();
            Ok(Some(Outcome {
                built,
                how: format!(
                    "mmdebstrap {suite} {} ({layout}, {strategy} build), root file system {}",
                    h.arch.as_str(),
                    if cached {
                        "from the cache"
                    } else {
                        "built and cached"
                    }
                ),
            }))
        }
        ImagePlan::TalosFactory { .. } => bail!(
            "host `{host}` runs Talos: its image comes from the Image Factory for its schematic (see `labforge plan {host}`), not from labforge"
        ),
        ImagePlan::BasePlusSeed { .. } => Ok(None),
    }
}
