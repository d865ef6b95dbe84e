//! Intel's certificates and CRLs as the TDX checks read them (attestation/src/tdx/x509.rs and
//! the strict DER reader, attestation/src/der.rs): decode, read the SGX extension, check a CRL against the
//! certificate and a signature between them.
#![no_main]
use cvm_attestation::tdx::x509::{IntelCert, IntelCrl};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cert) = IntelCert::from_der(data) {
        let _ = cert.sgx_extensions();
        let _ = cert.serial_hex();
        let _ = cert.key();
    }
    if let Ok(crl) = IntelCrl::from_der(data) {
        // The real PCK Platform CA: both paths that a CRL's signer and entries go through.
        let ca = &cvm_fuzz::context::context().intel_pck_ca;
        let _ = crl.signed_by(ca);
        let _ = crl.revokes(ca);
    }
});
