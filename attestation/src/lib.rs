//! Evidence formats and verification for confidential VMs.
//!
//! Nothing here performs I/O on behalf of verification: evidence and golden values come in as
//! bytes, and a report with one named result per check comes out. The issuer side (TPM, TEE
//! devices) lives in `cvm-attester`.
//!
//! Data flow: [`workload`] computes what PCR 23 must hold; [`evidence`] is what an agent returns;
//! [`golden`] is what a verifier expects; [`verify::verify`] compares them check by check.

pub mod azure;
pub mod binding;
pub mod der;
pub mod digest;
pub mod encoding;
pub mod eventlog;
pub mod evidence;
pub mod gcp;
pub mod golden;
pub mod measurements;
mod memo;
pub mod nitro;
pub mod pki;
pub mod provision;
pub mod snp;
pub mod tdx;
pub mod tpm;
pub mod verify;
pub mod workload;

pub use digest::{Sha256Digest, Sha384Digest};
pub use evidence::{Cloud, Evidence, Platform, Tee};
pub use golden::GoldenMeasurement;
pub use verify::{verify, VerificationReport, VerifyOptions};
