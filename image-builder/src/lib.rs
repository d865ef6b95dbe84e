//! Builds reproducible dm-verity UKI disk images for confidential VMs and predicts their TPM
//! measurements offline. See `docs/image.md` for the pipeline; [`pipeline::build`] runs it, and
//! [`boot`] boots a result under QEMU + OVMF + swtpm.

pub mod boot;
pub(crate) mod cmd;
pub mod config;
pub mod cpio;
pub mod deb;
pub mod debian;
pub mod erofs;
pub mod error;
pub mod esp;
pub mod formats;
pub mod gpt;
pub mod initrd;
pub mod kmod;
pub mod measure;
pub mod pe;
pub mod pipeline;
pub mod tree;
pub mod uki;
pub mod verity;

pub use error::{Error, Result};
