//! Evidence formats and verification for confidential VMs.
//!
//! Nothing here performs I/O on behalf of verification: evidence and golden values come in as
//! bytes, and a report with one named result per check comes out. The issuer side (TPM, TEE
//! devices) lives in `cvm-attester`.

pub mod digest;
pub mod snp;
pub mod tpm;
pub mod workload;

pub use digest::{Sha256Digest, Sha384Digest};
