//! TDX DCAP quote v4/v5: parse, body, QE report data, and full verification against Intel's root
//! with the real collateral.
#![no_main]
use cvm_attestation::golden::GoldenTdx;
use cvm_attestation::tdx::{TdQuote, TdReportBody};
use cvm_attestation::verify::verify_tdx_quote;
use cvm_fuzz::context::{context, tdx_options};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cvm_attestation::tdx::looks_like_td_quote(data);
    let _ = cvm_attestation::tdx::decode_hex_quote(data);
    let Ok(quote) = TdQuote::parse(data) else {
        return;
    };
    let _ = quote.describe();
    let _ = quote.expected_qe_report_data();
    let _ = quote.body.debug();
    let _ = TdReportBody::parse(&quote.body.to_bytes());
    let collateral = &context().tdx_collateral;
    let report = verify_tdx_quote(
        data,
        Some(collateral),
        &GoldenTdx::default(),
        &tdx_options(),
    );
    let _ = report.to_string();
});
