//! The cloud-init backend.

use crate::render::{Artifact, Backend, RenderCtx};
use crate::spec::Spec;
use anyhow::Result;

pub struct CloudInit;

impl Backend for CloudInit {
    fn name(&self) -> &'static str {
        "cloud-init"
    }
    fn plan(&self, _spec: &Spec) -> Vec<Artifact> {
        Vec::new()
    }
    fn render(&self, _ctx: &RenderCtx, _artifacts: &[&Artifact]) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(Vec::new())
    }
}
