//! Golden JSON (ours or the predecessor's) used to judge real evidence.
#![no_main]
use cvm_attestation::GoldenMeasurement;
use cvm_fuzz::context::{azure_options, context, tdx_options};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(golden) = GoldenMeasurement::from_json(data) else {
        return;
    };
    if let Some(workload) = &golden.workload {
        let _ = workload.pcr23();
    }
    let c = context();
    for (evidence, options) in [
        (&c.azure_evidence, azure_options()),
        (&c.tdx_evidence, tdx_options()),
    ] {
        let report = cvm_attestation::verify(evidence, &golden, &options);
        let _ = report.to_string();
    }
});
