//! X.509 certificates for the TEST-ONLY signers: every name says "TEST ONLY", so nothing they
//! sign can be mistaken for a vendor's.

use anyhow::Result;
use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{AuthorityKeyIdentifier, BasicConstraints, CrlNumber};
use openssl::x509::{
    X509Builder, X509Crl, X509CrlBuilder, X509Extension, X509NameBuilder, X509RevokedBuilder, X509,
};

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

/// What a CRL says. Built with the openssl crate's own `X509CrlBuilder` (0.10.82 has one), so
/// the DER is whatever OpenSSL writes for a real CA: v2, AKI and CRL number extensions.
pub(crate) struct CrlSpec<'a> {
    /// The CA that issues the CRL, and its key.
    pub issuer: (&'a X509, &'a PKey<Private>),
    /// Certificates the CRL revokes (listed by serial, revoked at `valid.0`).
    pub revoked: &'a [&'a X509],
    pub digest: MessageDigest,
    /// thisUpdate and nextUpdate, Unix seconds.
    pub valid: (i64, i64),
}

/// Issues the CRL `spec` describes.
pub(crate) fn crl(spec: CrlSpec<'_>) -> Result<X509Crl> {
    let (issuer, key) = spec.issuer;
    let mut builder = X509CrlBuilder::new()?;
    builder.set_issuer_name(issuer.subject_name())?;
    let (this_update, next_update) = (
        Asn1Time::from_unix(spec.valid.0)?,
        Asn1Time::from_unix(spec.valid.1)?,
    );
    builder.set_last_update(&this_update)?;
    builder.set_next_update(&next_update)?;
    // The AKI names the issuer by name and serial: the test certificates carry no subject key
    // identifier to point at. The extension context only needs the issuer certificate.
    let context_holder = X509Builder::new()?;
    let context = context_holder.x509v3_context(Some(issuer), None);
    builder.append_extension(AuthorityKeyIdentifier::new().issuer(true).build(&context)?)?;
    builder.append_extension(CrlNumber::new(BigNum::from_u32(1)?)?.build()?)?;
    for cert in spec.revoked {
        let mut entry = X509RevokedBuilder::new()?;
        entry.set_serial_number(cert.serial_number())?;
        entry.set_revocation_date(&this_update)?;
        builder.add_revoked(entry.build())?;
    }
    builder.sign(key, spec.digest)?;
    Ok(builder.build()?)
}
