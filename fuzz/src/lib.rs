//! Shared pieces of the fuzz targets (`fuzz_targets/`): the real vectors the targets verify
//! against ([`context`]), the seed corpus builder ([`seeds`]), and the agent's archive unpacking,
//! compiled in from its source so the fuzz build does not pull the agent's runtime (Tokio, axum,
//! tss-esapi) into a cold build.

pub mod context;
pub mod seeds;

/// `cvm-agent/src/archive.rs`, the agent's upload unpacking, as the agent compiles it.
#[path = "../../cvm-agent/src/archive.rs"]
pub mod archive;
