//! TPMS_ATTEST (a TPM2_Quote's signed structure), and its PCR digest over real PCR values.
#![no_main]
use cvm_attestation::tpm::{pcr_digest, HashAlg, Quote};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let Ok(quote) = Quote::parse(data) else {
        return;
    };
    let pcrs = &cvm_fuzz::context::context().azure_evidence.tpm.pcrs;
    let bank: BTreeMap<u8, Vec<u8>> = pcrs.pcrs.iter().map(|(i, v)| (*i, v.0.clone())).collect();
    let banks = BTreeMap::from([(HashAlg::Sha256, bank)]);
    for hash in [HashAlg::Sha256, HashAlg::Sha384] {
        let _ = pcr_digest(&quote, &banks, hash);
    }
});
