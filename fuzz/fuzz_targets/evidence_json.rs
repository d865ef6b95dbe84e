//! Evidence JSON (ours or the predecessor's) verified against real goldens: every check runs on
//! whatever the document holds.
#![no_main]
use cvm_attestation::Evidence;
use cvm_fuzz::context::{azure_options, context, tdx_options};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(evidence) = Evidence::from_json(data) else {
        return;
    };
    let _ = evidence.platform();
    let _ = evidence.tls_key();
    let c = context();
    for (golden, options) in [
        (&c.azure_golden, azure_options()),
        (&c.tdx_golden, tdx_options()),
    ] {
        let report = cvm_attestation::verify(&evidence, golden, &options);
        let _ = report.to_string();
    }
});
