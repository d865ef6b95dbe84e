//! The external API over TLS with a key made at start and bound into every evidence document
//! (docs/evidence.md, "TLS key binding").
//!
//! The certificate is self-signed on purpose: no CA vouches for a CVM. A client trusts the key
//! because verified evidence fetched over the same connection binds its hash; then it pins it for
//! anything secret, such as the bearer token (the predecessor never checked its TLS at all).

use anyhow::{Context, Result};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{Ssl, SslAcceptor, SslMethod, SslVersion};
use openssl::x509::{X509NameBuilder, X509};
use sha2::{Digest, Sha256};
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// A fresh key pair, its certificate, and the acceptor that serves them.
pub struct TlsIdentity {
    acceptor: Arc<SslAcceptor>,
    /// SHA-256 of the SubjectPublicKeyInfo DER: what evidence binds.
    pub spki_sha256: [u8; 32],
}

impl TlsIdentity {
    /// An ECDSA P-256 key made now, in memory only, with a self-signed certificate.
    pub fn generate() -> Result<Self> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
        let key: PKey<Private> = PKey::from_ec_key(EcKey::generate(&group)?)?;
        let spki_sha256 = Sha256::digest(key.public_key_to_der()?).into();
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_nid(Nid::COMMONNAME, "cvm-agent")?;
        let name = name.build();
        let mut serial = openssl::bn::BigNum::new()?;
        serial.rand(127, openssl::bn::MsbOption::MAYBE_ZERO, false)?;
        let mut builder = X509::builder()?;
        builder.set_version(2)?;
        let serial = serial.to_asn1_integer()?;
        builder.set_serial_number(&serial)?;
        builder.set_subject_name(&name)?;
        builder.set_issuer_name(&name)?;
        builder.set_pubkey(&key)?;
        let (not_before, not_after) = (
            openssl::asn1::Asn1Time::days_from_now(0)?,
            openssl::asn1::Asn1Time::days_from_now(3650)?,
        );
        builder.set_not_before(&not_before)?;
        builder.set_not_after(&not_after)?;
        builder.sign(&key, openssl::hash::MessageDigest::sha256())?;
        let certificate = builder.build();

        let mut acceptor = SslAcceptor::mozilla_modern_v5(SslMethod::tls_server())?;
        acceptor.set_min_proto_version(Some(SslVersion::TLS1_3))?;
        acceptor.set_private_key(&key)?;
        acceptor.set_certificate(&certificate)?;
        acceptor.check_private_key()?;
        Ok(Self {
            acceptor: Arc::new(acceptor.build()),
            spki_sha256,
        })
    }

    /// The acceptor the listener's connections use (`serve::serve`).
    pub fn acceptor(&self) -> Arc<SslAcceptor> {
        Arc::clone(&self.acceptor)
    }
}

/// The server side of a TLS handshake on `stream` (the caller bounds its time).
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    acceptor: &SslAcceptor,
    stream: S,
) -> Result<tokio_openssl::SslStream<S>> {
    let ssl = Ssl::new(acceptor.context())?;
    let mut stream = tokio_openssl::SslStream::new(ssl, stream)?;
    Pin::new(&mut stream).accept().await.context("handshake")?;
    Ok(stream)
}
