//! An AK public key as TPMT_PUBLIC, TPM2B_PUBLIC, PEM or DER SubjectPublicKeyInfo.
#![no_main]
use cvm_attestation::tpm::{AkPublic, QuoteSignature};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = AkPublic::from_tpmt_public(data);
    let Ok(ak) = AkPublic::from_bytes(data) else {
        return;
    };
    let _ = ak.is_restricted_signing_key();
    let _ = ak.spki_der();
    if let Ok(signature) = QuoteSignature::from_raw(&[0x55; 64], &ak.key) {
        let _ = signature.verify(&ak.key, b"message");
    }
});
