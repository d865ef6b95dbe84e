//! Azure HCL report (vTPM NV 0x01400001): header, hardware report, var_data JSON and its AK, and
//! the bare-report verifier that detects it by its magic.
#![no_main]
use cvm_attestation::azure::{ak_from_var_data, HclReport, HclReportType};
use cvm_attestation::golden::GoldenSnp;
use cvm_attestation::verify::verify_snp_report;
use cvm_fuzz::context::{azure_options, context};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(hcl) = HclReport::parse(data) else {
        return;
    };
    let _ = hcl.report_data();
    let _ = ak_from_var_data(hcl.var_data);
    match hcl.report_type {
        HclReportType::Snp => {
            let _ = cvm_attestation::snp::SnpReport::parse(hcl.hardware_report);
            let c = context();
            let snp = c.azure_evidence.sev_snp.as_ref().expect("SNP evidence");
            let report = verify_snp_report(
                data,
                snp.vek_cert.as_slice(),
                &snp.cert_chain,
                &GoldenSnp::default(),
                &azure_options(),
            );
            let _ = report.to_string();
        }
        HclReportType::Tdx => {
            let _ = cvm_attestation::tdx::TdReportBody::parse(hcl.hardware_report);
        }
    }
});
