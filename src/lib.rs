//! labforge: one spec for the homelab.
//!
//! Layers: [`spec`] (raw TOML → validated model), [`plan`] (model → serializable plan), `render` backends
//! consume the plan; side effects live only in image, flash and deploy.

pub mod cli;
pub mod deploy;
pub mod diag;
pub mod flash;
pub mod gate;
pub mod graph;
pub mod image;
pub mod io;
pub mod plan;
pub mod rebuild;
pub mod render;
pub mod secrets;
pub mod spec;
pub mod transport;
pub mod verify;
