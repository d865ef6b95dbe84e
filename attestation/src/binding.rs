//! How the TEE report commits to the TPM attestation key and the verifier's nonce
//! (docs/evidence.md, "Binding").
//!
//! Where the agent asks the firmware for a report itself (`/dev/sev-guest` on GCP, AWS and local
//! SNP guests), `report_data` is
//! `SHA-512("cvm-report-data/v1\0" || u32be(len(ak_pub)) || ak_pub || nonce)`, with `ak_pub` the
//! AK's TPMT_PUBLIC. One report then proves that this AK belongs to this TEE, now. On Azure the
//! paravisor writes `report_data[0..32] = SHA-256(var_data)` at boot and `var_data` holds the AK:
//! the AK is taken from there and freshness comes from the TPM quote over the nonce.
//!
//! When the agent serves its external API over TLS, TPM and TEE bind not the bare nonce but
//! `SHA-256("cvm-tls-binding/v1\0" || u32be(len(nonce)) || nonce || SHA-256(tls SPKI))`: the
//! evidence then proves which TLS key ends the connection it came over, and a client that
//! verified it can send its bearer token to that key and no other (the predecessor's TLS was
//! never checked).

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

/// Domain tag of the TLS key binding.
pub const TLS_BINDING_DOMAIN: &[u8] = b"cvm-tls-binding/v1\0";

/// What TPM and TEE bind for a verifier's `nonce`: the nonce itself, or with the agent's TLS key
/// (SHA-256 of its SubjectPublicKeyInfo DER) when it has one.
pub fn bound_nonce(nonce: &[u8], tls_spki_sha256: Option<&[u8; 32]>) -> Vec<u8> {
    match tls_spki_sha256 {
        None => nonce.to_vec(),
        Some(key) => {
            let mut hasher = Sha256::new();
            hasher.update(TLS_BINDING_DOMAIN);
            hasher.update((nonce.len() as u32).to_be_bytes());
            hasher.update(nonce);
            hasher.update(key);
            hasher.finalize().to_vec()
        }
    }
}

/// Domain tag of the NitroTPM document's `user_data`.
pub const NITRO_USER_DATA_DOMAIN: &[u8] = b"cvm-nitro-user-data/v1\0";

/// The `user_data` the agent asks the NitroTPM to sign (AWS):
/// `SHA-512(NITRO_USER_DATA_DOMAIN || u32be(len(ak_pub)) || ak_pub || quote_qualifying_data)`.
/// AWS signs it beside the NitroTPM's own PCRs: an agent whose boot chain those PCRs show is the
/// measured one, and it names its TPM's AK and the quote it is about to take.
pub fn nitro_user_data(ak_public: &[u8], quote_qualifying_data: &[u8; 32]) -> [u8; 64] {
    let mut hasher = Sha512::new();
    hasher.update(NITRO_USER_DATA_DOMAIN);
    hasher.update((ak_public.len() as u32).to_be_bytes());
    hasher.update(ak_public);
    hasher.update(quote_qualifying_data);
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

    #[test]
    fn a_tls_key_changes_what_is_bound() {
        let nonce = [7u8; 32];
        assert_eq!(bound_nonce(&nonce, None), nonce.to_vec());
        let bound = bound_nonce(&nonce, Some(&[1; 32]));
        assert_eq!(bound.len(), 32);
        assert_ne!(bound, bound_nonce(&nonce, Some(&[2; 32])));
        assert_ne!(bound, bound_nonce(&[7u8; 31], Some(&[1; 32])));
    }
}
