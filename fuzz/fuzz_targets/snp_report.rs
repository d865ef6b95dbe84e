//! SEV-SNP attestation report: parse, signature check, policy reads, VCEK/VLEK matching.
#![no_main]
use cvm_attestation::snp::{amd_extensions, policy, SnpReport};
use cvm_fuzz::context::context;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(report) = SnpReport::parse(data) else {
        return;
    };
    let c = context();
    let _ = report.signature_valid(&c.milan_key);
    let _ = policy::signing_key(&report);
    let _ = policy::chip_id_masked(&report);
    let _ = policy::chip_key_masked(&report);
    let _ = policy::minimum_tcb_for_report("ARK-Milan", &report);
    for cert in &c.vek_certs {
        if let Ok(ext) = amd_extensions(cert) {
            let _ = policy::leaf_matches_report(&ext, &report);
        }
    }
});
