//! X.509 certificates for the TEST-ONLY signers: every name says "TEST ONLY", so nothing they
//! sign can be mistaken for a vendor's.

use anyhow::Result;
use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::BasicConstraints;
use openssl::x509::{X509Builder, X509Extension, X509NameBuilder, X509};

/// What to issue.
pub(crate) struct CertSpec<'a> {
    pub common_name: &'a str,
    /// Whose stand-in this is, e.g. "TEST ONLY - not AMD".
    pub organization: &'a str,
    pub key: &'a PKey<Private>,
    /// The issuer and its key; `None` for a self-signed root.
    pub issuer: Option<(&'a X509, &'a PKey<Private>)>,
    /// Adds a critical `basicConstraints CA:TRUE`.
    pub ca: bool,
    pub extensions: Vec<X509Extension>,
    pub digest: MessageDigest,
    /// Validity, Unix seconds.
    pub valid: (i64, i64),
}

/// Issues the certificate `spec` describes, with a random serial.
pub(crate) fn certificate(spec: CertSpec<'_>) -> Result<X509> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("CN", spec.common_name)?;
    name.append_entry_by_text("O", spec.organization)?;
    let name = name.build();
    let mut builder = X509Builder::new()?;
    builder.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(64, MsbOption::MAYBE_ZERO, false)?;
    let serial = Asn1Integer::from_bn(&serial)?;
    builder.set_serial_number(&serial)?;
    builder.set_subject_name(&name)?;
    builder.set_issuer_name(
        spec.issuer
            .map(|(cert, _)| cert.subject_name())
            .unwrap_or(&name),
    )?;
    builder.set_pubkey(spec.key)?;
    let (not_before, not_after) = (
        Asn1Time::from_unix(spec.valid.0)?,
        Asn1Time::from_unix(spec.valid.1)?,
    );
    builder.set_not_before(&not_before)?;
    builder.set_not_after(&not_after)?;
    if spec.ca {
        builder.append_extension(BasicConstraints::new().critical().ca().build()?)?;
    }
    for extension in spec.extensions {
        builder.append_extension(extension)?;
    }
    builder.sign(
        spec.issuer.map(|(_, key)| key).unwrap_or(spec.key),
        spec.digest,
    )?;
    Ok(builder.build())
}
