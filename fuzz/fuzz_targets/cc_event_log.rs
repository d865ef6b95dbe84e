//! The TDX CC event log: parsed and replayed (SHA-384) by the verifier against a real TD quote's
//! RTMRs (`tdx.ccel`) and searched for golden boot events (`boot.events`).
#![no_main]
use cvm_attestation::eventlog::TcgLog;
use cvm_attestation::tpm::HashAlg;
use cvm_fuzz::context::{context, tdx_options};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(log) = TcgLog::parse(data) else {
        return;
    };
    let _ = log.replay(HashAlg::Sha384);
    let c = context();
    let mut evidence = c.tdx_evidence.clone();
    evidence.event_logs.ccel = Some(data.into());
    let report = cvm_attestation::verify(&evidence, &c.tdx_golden, &tdx_options());
    let _ = report.to_string();
});
