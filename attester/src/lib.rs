//! The issuer side of attestation: runs inside the guest and collects evidence from the TPM and
//! the TEE. Verification lives in `cvm-attestation`, which has no I/O and no TPM stack.

pub mod collect;
pub mod gce;
pub mod nitro;
pub mod seal;
pub mod tee;
pub mod tpm;
pub mod tsm;

pub use collect::{collect, CollectError, CollectRequest};
pub use tee::{AzureSnp, AzureTdx, NoTee, SevGuest, TeeBackend, TeeError, TeeEvidence};
pub use tpm::{AkSource, AttestationKey, Tpm, TpmError, TpmQuote};
pub use tsm::ConfigfsTsm;
