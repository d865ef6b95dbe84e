//! Builds reproducible dm-verity UKI disk images for confidential VMs and predicts their TPM
//! measurements offline. See `docs/image.md` for the pipeline.

pub mod error;
pub mod verity;

pub use error::{Error, Result};
