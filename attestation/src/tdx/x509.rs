//! Intel's DCAP certificates and CRLs, read with the `x509-cert` DER decoder and checked with
//! OpenSSL's ECDSA P-256: only what the DCAP checks use (the signed bytes and their signature,
//! the P-256 key, validity, serials, names for reports). OpenSSL 3 decodes a certificate's key
//! through its provider decoders and sets up an EVP context per check, which made a cold
//! verification twice as slow as the signature checks it needs. Every certificate is decoded once
//! per process, remembered by the SHA-256 of its DER. CRLs are read by a lean strict DER reader
//! (`der.rs`): `x509-cert` decodes every revoked entry's time and extensions into owned values,
//! a third of a cold verification's non-crypto work.

use crate::memo::Memo;
use openssl::bn::BigNumContext;
use openssl::ec::{EcKey, EcPoint};
use openssl::ecdsa::EcdsaSig;
use openssl::pkey::Public;
use std::ops::Range;
use std::sync::{Arc, OnceLock};
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::Decode;
use x509_cert::name::Name;
use x509_cert::spki::AlgorithmIdentifierOwned;

const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const PRIME256V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
/// Largest certificate or CRL accepted (Intel's PCK CRLs are a few KiB).
const MAX_DER: usize = 512 * 1024;

/// Why a certificate or CRL could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X509Error {
    #[error("larger than 512 KiB")]
    TooLarge,
    #[error("not DER: {0}")]
    Der(String),
}

impl From<crate::der::DerError> for X509Error {
    fn from(error: crate::der::DerError) -> Self {
        Self::Der(error.0)
    }
}

/// What a signature over DER-encoded data is checked with.
struct Signed {
    /// The signed part (TBSCertificate or TBSCertList), as a range of the DER.
    tbs: Range<usize>,
    /// Both algorithm fields say ecdsa-with-SHA256 (Intel's PKI uses nothing else).
    ecdsa_sha256: bool,
    /// DER `Ecdsa-Sig-Value`.
    signature: Vec<u8>,
}

impl Signed {
    fn new(
        der: &[u8],
        outer: &AlgorithmIdentifierOwned,
        inner: &AlgorithmIdentifierOwned,
        signature: Option<&[u8]>,
    ) -> Result<Self, X509Error> {
        Ok(Self {
            tbs: first_element(der)?,
            ecdsa_sha256: outer == inner && outer.oid == ECDSA_WITH_SHA256,
            signature: signature.unwrap_or_default().to_vec(),
        })
    }

    /// Whether `issuer`'s P-256 key signed this (ECDSA over SHA-256 of the signed part).
    fn verifies_with(&self, der: &[u8], issuer: &IntelCert) -> bool {
        let Some(key) = issuer.key() else {
            return false;
        };
        // d2i_ECDSA_SIG accepts trailing bytes and long-form lengths: the signature must be
        // exactly its own DER, so one signed object has one encoding.
        self.ecdsa_sha256
            && EcdsaSig::from_der(&self.signature)
                .and_then(|sig| {
                    Ok(sig.to_der()? == self.signature
                        && sig.verify(&openssl::sha::sha256(&der[self.tbs.clone()]), key)?)
                })
                .unwrap_or(false)
    }
}

/// The range of the first element inside the outer SEQUENCE of `der` (the signed part).
fn first_element(der: &[u8]) -> Result<Range<usize>, X509Error> {
    let outer = crate::der::Der::new(der).expect(crate::der::SEQUENCE, "signed object")?;
    let signed = crate::der::Der::new(outer.content).any()?;
    let start = outer.encoded.len() - outer.content.len() + signed.start;
    Ok(start..start + signed.encoded.len())
}

/// The first common name in `name`, for reports.
fn common_name(name: &Name) -> String {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == COMMON_NAME)
        .map(|atv| String::from_utf8_lossy(atv.value.value()).into_owned())
        .unwrap_or_else(|| "(no common name)".into())
}

fn unix(time: x509_cert::time::Time) -> i64 {
    i64::try_from(time.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
}

/// One certificate of Intel's PKI (or of a test PKI named by the caller).
pub struct IntelCert {
    /// SHA-256 of the DER: names the certificate in the per-process memos.
    pub id: [u8; 32],
    pub der: Vec<u8>,
    signed: Signed,
    /// The subject key's uncompressed point, when it is a P-256 key.
    point: Option<Vec<u8>>,
    key: OnceLock<Option<EcKey<Public>>>,
    pub subject: String,
    pub issuer: String,
    /// The serial number's DER content (big-endian, minimal).
    pub serial: Vec<u8>,
    pub not_before: i64,
    pub not_after: i64,
    /// The value of Intel's SGX extensions (PCK certificates only), kept so that the leaf is
    /// decoded once.
    sgx_extension: Option<Vec<u8>>,
}

impl std::fmt::Debug for IntelCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntelCert")
            .field("subject", &self.subject)
            .field("issuer", &self.issuer)
            .field("serial", &hex::encode(&self.serial))
            .finish()
    }
}

impl IntelCert {
    /// Decodes one DER certificate (not remembered: see [`certificate`]).
    pub fn from_der(der: &[u8]) -> Result<Self, X509Error> {
        if der.len() > MAX_DER {
            return Err(X509Error::TooLarge);
        }
        Self::decode(der, openssl::sha::sha256(der))
    }

    /// Decodes a certificate whose SHA-256 `id` the caller already has.
    fn decode(der: &[u8], id: [u8; 32]) -> Result<Self, X509Error> {
        let cert =
            x509_cert::Certificate::from_der(der).map_err(|e| X509Error::Der(e.to_string()))?;
        let tbs = &cert.tbs_certificate;
        let spki = &tbs.subject_public_key_info;
        let p256 = spki.algorithm.oid == EC_PUBLIC_KEY
            && spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
                == Some(PRIME256V1);
        let point = spki
            .subject_public_key
            .as_bytes()
            .filter(|p| p256 && p.len() == 65 && p[0] == 4);
        let sgx_extension = tbs
            .extensions
            .iter()
            .flatten()
            .find(|e| e.extn_id == super::pck::SGX_EXTENSIONS_ID)
            .map(|e| e.extn_value.as_bytes().to_vec());
        Ok(Self {
            id,
            signed: Signed::new(
                der,
                &cert.signature_algorithm,
                &tbs.signature,
                cert.signature.as_bytes(),
            )?,
            sgx_extension,
            point: point.map(<[u8]>::to_vec),
            key: OnceLock::new(),
            subject: common_name(&tbs.subject),
            issuer: common_name(&tbs.issuer),
            serial: tbs.serial_number.as_bytes().to_vec(),
            not_before: unix(tbs.validity.not_before),
            not_after: unix(tbs.validity.not_after),
            der: der.to_vec(),
        })
    }

    /// The subject's P-256 key (None when it is not one, or not a point on the curve).
    pub fn key(&self) -> Option<&EcKey<Public>> {
        self.key
            .get_or_init(|| {
                let point = self.point.as_deref()?;
                let group = super::crypto::p256().ok()?;
                let mut ctx = BigNumContext::new().ok()?;
                let point = EcPoint::from_bytes(group, point, &mut ctx).ok()?;
                EcKey::from_public_key(group, &point).ok()
            })
            .as_ref()
    }

    /// Whether both carry the same subject key (compared as encoded points).
    pub fn same_key(&self, other: &IntelCert) -> bool {
        self.point.is_some() && self.point == other.point
    }

    /// The serial number in upper-case hex without leading zeros, for reports.
    pub fn serial_hex(&self) -> String {
        serial_hex(&self.serial)
    }

    /// Intel's SGX extensions of a PCK certificate ([`super::sgx_extensions`] without decoding
    /// the certificate again).
    pub fn sgx_extensions(&self) -> Result<super::SgxExtensions, super::pck::PckError> {
        let value = self
            .sgx_extension
            .as_deref()
            .ok_or(super::pck::PckError::Missing)?;
        super::pck::sgx_extensions_value(value)
    }
}

fn serial_hex(serial: &[u8]) -> String {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    // As OpenSSL prints serials: whole bytes, leading zero bytes dropped.
    match &serial[start..] {
        [] => "0".into(),
        rest => hex::encode_upper(rest),
    }
}

/// Decodes a DER certificate, remembered per process by the SHA-256 of its bytes: the root and
/// the PCK CA recur in the quote's chain and the collateral's chains, and in every quote.
pub fn certificate(der: &[u8]) -> Result<Arc<IntelCert>, X509Error> {
    static MEMO: Memo<[u8; 32], Arc<IntelCert>> = Memo::new(256);
    if der.len() > MAX_DER {
        return Err(X509Error::TooLarge);
    }
    let id = openssl::sha::sha256(der);
    MEMO.get_or_try(id, || IntelCert::decode(der, id).map(Arc::new))
}

/// Whether `cert` carries a valid ECDSA P-256 / SHA-256 signature by `issuer`'s key, remembered
/// per process by both certificates' digests (the answer depends only on their bytes).
pub fn signed_by(cert: &IntelCert, issuer: &IntelCert) -> bool {
    remembered((cert.id, issuer.id), || {
        cert.signed.verifies_with(&cert.der, issuer)
    })
}

/// A signature check's answer by (signed object, signer) digests, per process.
fn remembered(key: ([u8; 32], [u8; 32]), check: impl FnOnce() -> bool) -> bool {
    static MEMO: Memo<([u8; 32], [u8; 32]), bool> = Memo::new(1024);
    MEMO.get_or(key, check)
}

/// A CRL from the collateral.
pub struct IntelCrl {
    /// SHA-256 of the DER.
    pub id: [u8; 32],
    der: Vec<u8>,
    signed: Signed,
    pub issuer: String,
    pub this_update: i64,
    pub next_update: Option<i64>,
    /// The revoked serial numbers' DER contents.
    revoked: std::collections::HashSet<Vec<u8>>,
}

impl IntelCrl {
    pub fn from_der(der: &[u8]) -> Result<Self, X509Error> {
        if der.len() > MAX_DER {
            return Err(X509Error::TooLarge);
        }
        Self::decode(der, openssl::sha::sha256(der))
    }

    /// Reads a CRL whose SHA-256 `id` the caller already has (RFC 5280 section 5.1, strict DER):
    /// only what the checks use, every other field's structure still checked.
    pub(crate) fn decode(der: &[u8], id: [u8; 32]) -> Result<Self, X509Error> {
        use crate::der::{self as d, Der};
        if der.len() > MAX_DER {
            return Err(X509Error::TooLarge);
        }
        let mut top = Der::new(der);
        let outer = top.expect(d::SEQUENCE, "CertificateList")?;
        top.finish("CertificateList")?;
        let mut list = Der::new(outer.content);
        let tbs = list.expect(d::SEQUENCE, "TBSCertList")?;
        let outer_algorithm = list.expect(d::SEQUENCE, "signatureAlgorithm")?;
        let signature = list.expect(d::BIT_STRING, "signatureValue")?;
        list.finish("CertificateList")?;
        let signature = match signature.content {
            [0, rest @ ..] => rest,
            _ => return Err(X509Error::Der("signatureValue: unused bits".into())),
        };
        let fields = TbsCertList::read(tbs.content)?;
        // Offsets of the outer SEQUENCE's content within `der`.
        let base = outer.encoded.len() - outer.content.len();
        Ok(Self {
            id,
            signed: Signed {
                tbs: base + tbs.start..base + tbs.start + tbs.encoded.len(),
                ecdsa_sha256: outer_algorithm.encoded == ECDSA_WITH_SHA256_DER
                    && fields.algorithm == ECDSA_WITH_SHA256_DER,
                signature: signature.to_vec(),
            },
            issuer: fields.issuer,
            this_update: fields.this_update,
            next_update: fields.next_update,
            revoked: fields.revoked,
            der: der.to_vec(),
        })
    }

    #[cfg(test)]
    fn signature_bytes(&self) -> &[u8] {
        &self.signed.signature
    }

    /// Whether `issuer`'s key signed this CRL, remembered per process.
    pub fn signed_by(&self, issuer: &IntelCert) -> bool {
        remembered((self.id, issuer.id), || {
            self.signed.verifies_with(&self.der, issuer)
        })
    }

    /// Whether the CRL lists `cert`'s serial number. Only certificates issued by the CRL's
    /// signer are asked about, so the serial alone identifies them.
    pub fn revokes(&self, cert: &IntelCert) -> bool {
        self.revoked.contains(&cert.serial)
    }
}

/// AlgorithmIdentifier { ecdsa-with-SHA256 } as RFC 5758 encodes it (no parameters).
const ECDSA_WITH_SHA256_DER: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];

/// The fields of a TBSCertList the checks use.
struct TbsCertList<'a> {
    algorithm: &'a [u8],
    issuer: String,
    this_update: i64,
    next_update: Option<i64>,
    revoked: std::collections::HashSet<Vec<u8>>,
}

impl<'a> TbsCertList<'a> {
    fn read(content: &'a [u8]) -> Result<Self, X509Error> {
        use crate::der::{self as d, Der};
        let mut tbs = Der::new(content);
        let v2 = match tbs.optional(d::INTEGER)? {
            Some(version) if version.content == [1] => true,
            Some(_) => return Err(X509Error::Der("TBSCertList: version is not v2".into())),
            None => false,
        };
        let algorithm = tbs.expect(d::SEQUENCE, "signature")?.encoded;
        let issuer = tbs.expect(d::SEQUENCE, "issuer")?;
        let issuer = name_common_name(issuer.content)?;
        let this_update = tbs.any().and_then(|t| d::time(&t, "thisUpdate"))?;
        let next_update = match tbs.peek() {
            Some(d::UTC_TIME | d::GENERALIZED_TIME) => Some(d::time(&tbs.any()?, "nextUpdate")?),
            _ => None,
        };
        let mut revoked = std::collections::HashSet::new();
        if let Some(entries) = tbs.optional(d::SEQUENCE)? {
            let mut entries = Der::new(entries.content);
            while !entries.is_empty() {
                let entry = entries.expect(d::SEQUENCE, "revokedCertificates")?;
                let mut entry = Der::new(entry.content);
                let serial = entry.expect(d::INTEGER, "userCertificate")?;
                let serial = d::integer(&serial, "userCertificate")?;
                d::time(&entry.any()?, "revocationDate")?;
                if let Some(extensions) = entry.optional(d::SEQUENCE)? {
                    check_extensions(extensions.content)?;
                }
                entry.finish("revokedCertificates entry")?;
                revoked.insert(serial.to_vec());
            }
        }
        if let Some(extensions) = tbs.optional(d::CONTEXT_0)? {
            if !v2 {
                return Err(X509Error::Der("crlExtensions in a v1 CRL".into()));
            }
            let mut wrapped = Der::new(extensions.content);
            check_extensions(wrapped.expect(d::SEQUENCE, "crlExtensions")?.content)?;
            wrapped.finish("crlExtensions")?;
        }
        tbs.finish("TBSCertList")?;
        Ok(Self {
            algorithm,
            issuer,
            this_update,
            next_update,
            revoked,
        })
    }
}

/// Checks a SEQUENCE OF Extension { OID, critical BOOLEAN DEFAULT FALSE, OCTET STRING }.
fn check_extensions(content: &[u8]) -> Result<(), X509Error> {
    use crate::der::{self as d, Der};
    let mut list = Der::new(content);
    if list.is_empty() {
        return Err(X509Error::Der("empty extensions".into()));
    }
    while !list.is_empty() {
        let mut extension = Der::new(list.expect(d::SEQUENCE, "Extension")?.content);
        extension.expect(d::OID, "extnID")?;
        if let Some(critical) = extension.optional(d::BOOLEAN)? {
            // DER: DEFAULT FALSE is omitted, TRUE is 0xff.
            if critical.content != [0xff] {
                return Err(X509Error::Der("critical: not DER TRUE".into()));
            }
        }
        extension.expect(d::OCTET_STRING, "extnValue")?;
        extension.finish("Extension")?;
    }
    Ok(())
}

/// The first common name of a Name (RDNSequence), its structure checked, for reports.
fn name_common_name(content: &[u8]) -> Result<String, X509Error> {
    use crate::der::{self as d, Der};
    const CN: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];
    let mut found = None;
    let mut rdns = Der::new(content);
    while !rdns.is_empty() {
        let set = rdns.expect(d::SET, "RelativeDistinguishedName")?;
        let mut set = Der::new(set.content);
        let mut previous: Option<&[u8]> = None;
        if set.is_empty() {
            return Err(X509Error::Der("empty RelativeDistinguishedName".into()));
        }
        while !set.is_empty() {
            let atv = set.expect(d::SEQUENCE, "AttributeTypeAndValue")?;
            // DER orders a SET OF by encoding.
            if previous.is_some_and(|p| p > atv.encoded) {
                return Err(X509Error::Der("SET OF not in DER order".into()));
            }
            previous = Some(atv.encoded);
            let mut atv = Der::new(atv.content);
            let oid = atv.expect(d::OID, "AttributeType")?;
            let value = atv.any()?;
            atv.finish("AttributeTypeAndValue")?;
            if found.is_none() && oid.encoded == CN {
                found = Some(String::from_utf8_lossy(value.content).into_owned());
            }
        }
    }
    Ok(found.unwrap_or_else(|| "(no common name)".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::x509::X509;

    fn vector(path: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/../../shared/vectors/{path}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    fn real_chain() -> Vec<X509> {
        let quote = crate::tdx::TdQuote::parse(&vector("tdx/tdx_quote")).unwrap();
        X509::stack_from_pem(&quote.pck_chain_pem).unwrap()
    }

    #[test]
    fn reads_what_openssl_reads_from_intels_chain() {
        let chain = real_chain();
        let ours: Vec<IntelCert> = chain
            .iter()
            .map(|c| IntelCert::from_der(&c.to_der().unwrap()).unwrap())
            .collect();
        for (theirs, ours) in chain.iter().zip(&ours) {
            assert_eq!(ours.subject, crate::pki::common_name(theirs));
            let serial = theirs
                .serial_number()
                .to_bn()
                .unwrap()
                .to_hex_str()
                .unwrap();
            assert_eq!(ours.serial_hex(), serial.to_string());
            let at = |unix: i64| openssl::asn1::Asn1Time::from_unix(unix).unwrap();
            use std::cmp::Ordering::Equal;
            assert_eq!(
                theirs.not_before().compare(&at(ours.not_before)).unwrap(),
                Equal
            );
            assert_eq!(
                theirs.not_after().compare(&at(ours.not_after)).unwrap(),
                Equal
            );
            let key = theirs.public_key().unwrap().ec_key().unwrap();
            let mut ctx = BigNumContext::new().unwrap();
            let group = crate::tdx::crypto::p256().unwrap();
            assert!(key
                .public_key()
                .eq(group, ours.key().unwrap().public_key(), &mut ctx)
                .unwrap());
        }
        // leaf <- PCK Platform CA <- root <- root.
        assert!(signed_by(&ours[0], &ours[1]));
        assert!(signed_by(&ours[1], &ours[2]));
        assert!(signed_by(&ours[2], &ours[2]));
        assert!(!signed_by(&ours[0], &ours[2]));
        assert!(!signed_by(&ours[1], &ours[1]));
        assert!(ours[2].same_key(&ours[2]) && !ours[1].same_key(&ours[2]));
    }

    #[test]
    fn a_changed_byte_breaks_the_signature_or_the_decoding() {
        let chain = real_chain();
        let ca = IntelCert::from_der(&chain[1].to_der().unwrap()).unwrap();
        let leaf = chain[0].to_der().unwrap();
        let range = first_element(&leaf).unwrap();
        // Every tenth byte of the signed part, flipped: never a valid signature.
        for at in range.step_by(10) {
            let mut bad = leaf.clone();
            bad[at] ^= 0x01;
            if let Ok(cert) = IntelCert::from_der(&bad) {
                assert!(!cert.signed.verifies_with(&cert.der, &ca), "byte {at}");
            }
        }
        assert!(IntelCert::from_der(&leaf[..leaf.len() - 1]).is_err());
        assert!(IntelCert::from_der(&[]).is_err());
        assert!(IntelCert::from_der(&[0x30]).is_err());
    }

    #[test]
    fn crls_read_what_openssl_reads() {
        let json = vector("tdx/tdx_quote_collateral.json");
        let collateral = crate::tdx::TdxCollateral::from_json(&json).unwrap();
        let der = hex::decode(collateral.pck_crl.as_deref().unwrap()).unwrap();
        let ours = IntelCrl::from_der(&der).unwrap();
        let theirs = openssl::x509::X509Crl::from_der(&der).unwrap();
        let listed = theirs.get_revoked().map(|r| r.len()).unwrap_or(0);
        assert_eq!(ours.revoked.len(), listed);
        let chain = real_chain();
        let ca = IntelCert::from_der(&chain[1].to_der().unwrap()).unwrap();
        let root = IntelCert::from_der(&chain[2].to_der().unwrap()).unwrap();
        assert!(ours.signed_by(&ca));
        assert!(!ours.signed_by(&root));
        let leaf = IntelCert::from_der(&chain[0].to_der().unwrap()).unwrap();
        assert!(!ours.revokes(&leaf));
        // Both real CRLs read as x509-cert reads them; any changed byte breaks the reading
        // or the signature.
        for hex_der in [&collateral.pck_crl, &collateral.root_ca_crl] {
            let der = hex::decode(hex_der.as_deref().unwrap()).unwrap();
            let lean = IntelCrl::from_der(&der).unwrap();
            let full = x509_cert::crl::CertificateList::from_der(&der).unwrap();
            let tbs = &full.tbs_cert_list;
            assert_eq!(lean.issuer, common_name(&tbs.issuer));
            assert_eq!(lean.this_update, unix(tbs.this_update));
            assert_eq!(lean.next_update, tbs.next_update.map(unix));
            let serials: std::collections::HashSet<Vec<u8>> = tbs
                .revoked_certificates
                .iter()
                .flatten()
                .map(|e| e.serial_number.as_bytes().to_vec())
                .collect();
            assert_eq!(lean.revoked, serials);
            assert_eq!(lean.signature_bytes(), full.signature.as_bytes().unwrap());
            let signer = if lean.issuer == ca.subject {
                &ca
            } else {
                &root
            };
            assert!(lean.signed_by(signer), "{}", lean.issuer);
            for at in (0..der.len()).step_by(7) {
                let mut bad = der.clone();
                bad[at] ^= 0x01;
                if let Ok(crl) = IntelCrl::from_der(&bad) {
                    assert!(!crl.signed.verifies_with(&crl.der, signer), "byte {at}");
                }
            }
            assert!(IntelCrl::from_der(&der[..der.len() - 1]).is_err());
            assert!(IntelCrl::from_der(&[der.clone(), vec![0]].concat()).is_err());
        }
        assert_eq!(serial_hex(&[0, 0x0a, 0x01]), "0A01");
        assert_eq!(serial_hex(&[0]), "0");
    }

    /// d2i_ECDSA_SIG alone takes trailing bytes and long-form lengths; a signature must be
    /// exactly its own DER, so one signed certificate has one encoding.
    #[test]
    fn a_signature_must_be_exactly_its_der() {
        let chain = real_chain();
        let der = |i: usize| chain[i].to_der().unwrap();
        let (leaf, issuer) = (
            IntelCert::from_der(&der(0)).unwrap(),
            IntelCert::from_der(&der(1)).unwrap(),
        );
        assert!(leaf.signed.verifies_with(&leaf.der, &issuer));
        let mut trailing = IntelCert::from_der(&der(0)).unwrap();
        trailing.signed.signature.extend_from_slice(&[0x00, 0xff]);
        assert!(!trailing.signed.verifies_with(&leaf.der, &issuer));
        let mut long_form = IntelCert::from_der(&der(0)).unwrap();
        let sig = &leaf.signed.signature;
        assert!(sig[1] < 0x80, "a P-256 signature has a short-form length");
        long_form.signed.signature = [&[0x30, 0x81], &sig[1..]].concat();
        assert!(!long_form.signed.verifies_with(&leaf.der, &issuer));
    }
}
