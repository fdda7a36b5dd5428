//! The compose backend.

use crate::render::{Artifact, Backend, RenderCtx};
use crate::spec::Spec;
use anyhow::Result;

pub struct Compose;

impl Backend for Compose {
    fn name(&self) -> &'static str {
        "compose"
    }
    fn plan(&self, _spec: &Spec) -> Vec<Artifact> {
        Vec::new()
    }
    fn render(&self, _ctx: &RenderCtx, _artifacts: &[&Artifact]) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(Vec::new())
    }
}
