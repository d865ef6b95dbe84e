//! Fixtures that start real components for tests: a software TPM (`swtpm`), a Docker Engine with a
//! local registry, and Podman's Docker-compatible API service.
//!
//! Every fixture runs on free loopback ports or private Unix sockets inside its own temporary
//! directory, so tests can run in parallel, and stops its processes when dropped (also when the
//! test panics). Children additionally get `PR_SET_PDEATHSIG`, so a killed test binary does not
//! leave daemons behind.

pub mod bench;
mod certs;
pub mod collateral_server;
mod engine;
mod gce_ca;
mod gcs;
pub mod http;
mod image;
mod moto;
mod nitro_signer;
mod process;
mod registry;
mod snp_backend;
mod snp_signer;
mod swtpm;
pub mod tcg_log;
pub mod tdx_signer;

pub use engine::{ContainerEngine, EngineKind};
pub use gce_ca::GoogleTestCa;
pub use gcs::GcsEmulator;
pub use image::{busybox_image_archive, ImageArchive};
pub use moto::{Moto, RecordedRequest, EMULATOR_VENV};
pub use nitro_signer::{NitroPayload, NitroTestSigner, ES384};
pub use process::{free_port, wait_until};
pub use registry::Registry;
pub use snp_backend::TestSnpBackend;
pub use snp_signer::SnpTestSigner;
pub use swtpm::Swtpm;

/// Skips nothing: fails loudly with the install hint when a required tool is missing, because a
/// test that silently passes without its component proves nothing.
pub fn require_tool(name: &str) -> anyhow::Result<std::path::PathBuf> {
    which(name).ok_or_else(|| {
        anyhow::anyhow!("`{name}` not found in PATH: run scripts/install-test-deps.sh first")
    })
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
