//! AMD SEV-SNP: reports, the AMD certificate chain, and the checks that tie them together.

pub mod certs;
pub mod extensions;
pub mod policy;
pub mod report;

pub use certs::{amd_roots, verify_chain, ChainError, TrustedRoot, VerifiedChain};
pub use extensions::{amd_extensions, AmdExtensions};
pub use report::{ReportError, SnpReport};
