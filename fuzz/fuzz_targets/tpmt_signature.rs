//! TPMT_SIGNATURE, and raw signatures read against real AK keys, verified over a real quote.
#![no_main]
use cvm_attestation::tpm::{AkPublic, QuoteSignature};
use cvm_fuzz::context::context;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tpm = &context().azure_evidence.tpm;
    let ak = AkPublic::from_bytes(tpm.ak_pub.as_slice()).expect("real AK");
    if let Ok(signature) = QuoteSignature::from_tpmt(data) {
        let _ = signature.hash();
        let _ = signature.verify(&ak.key, tpm.quote.as_slice());
    }
    if let Ok(signature) = QuoteSignature::from_raw(data, &ak.key) {
        let _ = signature.verify(&ak.key, tpm.quote.as_slice());
    }
});
