//! How the TEE report commits to the TPM attestation key and the verifier's nonce
//! (docs/evidence.md, "Binding").
//!
//! Where the agent asks the firmware for a report itself (`/dev/sev-guest` on GCP, AWS and local
//! SNP guests), `report_data` is
//! `SHA-512("cvm-report-data/v1\0" || u32be(len(ak_pub)) || ak_pub || nonce)`, with `ak_pub` the
//! AK's TPMT_PUBLIC. One report then proves that this AK belongs to this TEE, now. On Azure the
//! paravisor writes `report_data[0..32] = SHA-256(var_data)` at boot and `var_data` holds the AK:
//! the AK is taken from there and freshness comes from the TPM quote over the nonce.

use sha2::{Digest as _, Sha256, Sha512};

/// Domain tag of our `report_data` encoding.
pub const REPORT_DATA_DOMAIN: &[u8] = b"cvm-report-data/v1\0";

/// The 64-byte `report_data` for a report the agent requests itself.
pub fn report_data(ak_public: &[u8], nonce: &[u8]) -> [u8; 64] {
    let mut hasher = Sha512::new();
    hasher.update(REPORT_DATA_DOMAIN);
    hasher.update((ak_public.len() as u32).to_be_bytes());
    hasher.update(ak_public);
    hasher.update(nonce);
    hasher.finalize().into()
}

/// Azure's binding: the first 32 bytes of `report_data` are SHA-256 of `var_data`.
pub fn azure_var_data_bound(report_data: &[u8; 64], var_data: &[u8]) -> bool {
    let digest: [u8; 32] = Sha256::digest(var_data).into();
    report_data[..32] == digest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_and_nonce_boundaries_are_unambiguous() {
        // Moving a byte from the key to the nonce changes the result (length prefix).
        assert_ne!(report_data(b"ab", b"c"), report_data(b"a", b"bc"));
        assert_ne!(report_data(b"k", b"n1"), report_data(b"k", b"n2"));
    }
}
