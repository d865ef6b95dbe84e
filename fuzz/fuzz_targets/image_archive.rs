//! An image archive in the workload (`docker save` or OCI layout tar), as the agent lists its
//! images and their content-derived IDs before loading it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cvm_attestation::workload::archived_images(data);
});
