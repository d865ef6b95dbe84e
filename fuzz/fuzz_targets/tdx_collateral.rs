//! Intel TDX collateral JSON (TCB info, QE identity, CRLs, chains): parse, check Intel's
//! signatures, and verify the real quote with it.
#![no_main]
use cvm_attestation::golden::GoldenTdx;
use cvm_attestation::tdx::{collateral, TdxCollateral};
use cvm_attestation::verify::verify_tdx_quote;
use cvm_attestation::VerifyOptions;
use cvm_fuzz::context::{context, TDX_AT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(c) = TdxCollateral::from_json(data) else {
        return;
    };
    let _ = collateral::parse(&c);
    let quote = &context().tdx_quote;
    let options = VerifyOptions::new(TDX_AT);
    let report = verify_tdx_quote(quote, Some(&c), &GoldenTdx::default(), &options);
    let _ = report.to_string();
});
