//! A TEST-ONLY stand-in for Intel's DCAP infrastructure and a TDX machine: a root CA -> PCK
//! Platform CA -> PCK certificate (with the SGX extensions: FMSPC, PCE ID, TCB component SVNs),
//! a Quoting Enclave whose report (signed by the PCK key) binds an attestation key, TD quotes v4
//! and v5 (TD report 1.0 and 1.5 bodies) signed by that key, TDREPORTs and Azure-style HCL reports, and TCB info / QE identity JSON
//! signed by a TCB Signing certificate under the same root, and the CRLs of the PCK Platform CA
//! and of the root. Verifiers trust its root only when a test names it explicitly.

use anyhow::Result;
use openssl::asn1::{Asn1Object, Asn1OctetString};
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::{X509Extension, X509};

/// The platform the PCK certificate and the TCB info describe.
pub const FMSPC: [u8; 6] = [0x00, 0x90, 0x6e, 0xd5, 0x00, 0x00];
pub const PCE_ID: [u8; 2] = [0, 0];
pub const SGX_TCB: [u8; 16] = [2, 2, 2, 2, 3, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0];
pub const PCESVN: u16 = 11;
/// TEE_TCB_SVN: TDX module SVN 6, major version 1, then the TDX components.
pub const TEE_TCB_SVN: [u8; 16] = [6, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
pub const QE_MRSIGNER: [u8; 32] = [0x5a; 32];
pub const QE_ISVPRODID: u16 = 2;
pub const QE_ISVSVN: u16 = 4;
/// The TD's measurements in every body this signer makes.
pub const MRTD: [u8; 48] = [0x7d; 48];
pub const RTMR: [[u8; 48]; 4] = [[0x10; 48], [0x11; 48], [0x12; 48], [0x00; 48]];
pub const MRSEAM: [u8; 48] = [0x5e; 48];
/// Validity of the collateral: 2020-01-01 to 2049-01-01.
pub const ISSUE_DATE: &str = "2020-01-01T00:00:00Z";
pub const NEXT_UPDATE: &str = "2049-01-01T00:00:00Z";
/// The same window in Unix seconds: every certificate's validity and the normal CRLs'
/// thisUpdate / nextUpdate.
pub const VALIDITY: (i64, i64) = (1_577_836_800, 2_493_072_000);
/// CRL thisUpdate / nextUpdate that ended on 2021-01-01: stale at any current verification
/// time, while the certificates, TCB info and QE identity are still valid.
pub const STALE_CRLS: (i64, i64) = (VALIDITY.0, 1_609_459_200);

const SGX_OID: &str = "1.2.840.113741.1.13.1";

/// Generated keys and certificates.
pub struct TdxTestSigner {
    root: X509,
    root_key: PKey<Private>,
    platform_ca: X509,
    platform_key: PKey<Private>,
    pck: X509,
    pck_key: PKey<Private>,
    tcb_signing: X509,
    tcb_signing_key: PKey<Private>,
    attestation_key: PKey<Private>,
    qe_auth_data: Vec<u8>,
}

fn p256_key() -> Result<PKey<Private>> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    Ok(PKey::from_ec_key(EcKey::generate(&group)?)?)
}

/// Intel's PKI signs with ECDSA P-256 / SHA-256.
fn certificate(
    common_name: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    ca: bool,
    extensions: Vec<X509Extension>,
) -> Result<X509> {
    crate::certs::certificate(crate::certs::CertSpec {
        common_name,
        organization: "TEST ONLY - not Intel",
        key,
        issuer,
        ca,
        extensions,
        digest: MessageDigest::sha256(),
        valid: VALIDITY,
    })
}

/// A CRL as the collateral carries it: hex DER.
fn crl_hex(
    issuer: (&X509, &PKey<Private>),
    revoked: &[&X509],
    valid: (i64, i64),
) -> Result<String> {
    let crl = crate::certs::crl(crate::certs::CrlSpec {
        issuer,
        revoked,
        digest: MessageDigest::sha256(),
        valid,
    })?;
    Ok(hex::encode(crl.to_der()?))
}

/// What [`TdxTestSigner::collateral_json_with`] puts in the collateral. `Default` is the
/// normal, complete collateral a verifier accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollateralOptions {
    /// Include the PCK CRL and the root CA CRL (verifiers require both).
    pub crls: bool,
    /// The PCK CRL lists this signer's PCK certificate: a platform whose key leaked.
    pub revoke_pck: bool,
    /// thisUpdate and nextUpdate of both CRLs, Unix seconds ([`STALE_CRLS`]: expired ones).
    pub crl_validity: (i64, i64),
    /// The status the TCB info gives this platform's TCB level ("UpToDate", "OutOfDate", ...).
    pub platform_status: &'static str,
    /// `tcbEvaluationDataNumber` of the TCB info and the QE identity (which evaluation of
    /// Intel's the collateral stands for).
    pub tcb_evaluation: u32,
    /// A newer TDX module than the quotes' (TEE_TCB_SVN[0]): the module identity's newest level
    /// (UpToDate) is at this ISVSVN and the quotes' module SVN is OutOfDate. A TD report 1.5
    /// body whose TEE_TCB_SVN2 states this SVN then gets Intel's `TDRelaunchAdvised`.
    pub module_newest_svn: Option<u8>,
}

impl Default for CollateralOptions {
    fn default() -> Self {
        Self {
            crls: true,
            revoke_pck: false,
            crl_validity: VALIDITY,
            platform_status: "UpToDate",
            tcb_evaluation: 17,
            module_newest_svn: None,
        }
    }
}

/// DER: tag, length, content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match content.len() {
        len if len < 0x80 => out.push(len as u8),
        len if len < 0x100 => out.extend([0x81, len as u8]),
        len => out.extend([0x82, (len >> 8) as u8, len as u8]),
    }
    out.extend_from_slice(content);
    out
}

/// The OID 1.2.840.113741.1.13.1 followed by `arcs` (each < 128), DER.
fn sgx_oid(arcs: &[u8]) -> Vec<u8> {
    let mut content = vec![0x2a, 0x86, 0x48, 0x86, 0xf8, 0x4d, 0x01, 0x0d, 0x01];
    content.extend_from_slice(arcs);
    der(0x06, &content)
}

fn entry(arcs: &[u8], value: Vec<u8>) -> Vec<u8> {
    der(0x30, &[sgx_oid(arcs), value].concat())
}

fn integer(value: u16) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let mut content: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    if content.first().is_none_or(|b| b & 0x80 != 0) {
        content.insert(0, 0);
    }
    der(0x02, &content)
}

/// Intel's SGX extension value as a PCK certificate carries it.
fn sgx_extension_value() -> Vec<u8> {
    let mut tcb = Vec::new();
    for (i, svn) in SGX_TCB.iter().enumerate() {
        tcb.extend(entry(&[2, i as u8 + 1], integer(u16::from(*svn))));
    }
    tcb.extend(entry(&[2, 17], integer(PCESVN)));
    tcb.extend(entry(&[2, 18], der(0x04, &SGX_TCB)));
    der(
        0x30,
        &[
            entry(&[1], der(0x04, &[0x99; 16])),
            entry(&[2], der(0x30, &tcb)),
            entry(&[3], der(0x04, &PCE_ID)),
            entry(&[4], der(0x04, &FMSPC)),
            entry(&[5], der(0x0a, &[0])),
        ]
        .concat(),
    )
}

/// ECDSA P-256 over SHA-256(`message`), as raw `r || s`.
fn sign_raw(key: &PKey<Private>, message: &[u8]) -> Result<[u8; 64]> {
    let digest = openssl::sha::sha256(message);
    let signature = EcdsaSig::sign(&digest, &*key.ec_key()?)?;
    let mut out = [0u8; 64];
    let (r, s) = (signature.r().to_vec(), signature.s().to_vec());
    out[32 - r.len()..32].copy_from_slice(&r);
    out[64 - s.len()..].copy_from_slice(&s);
    Ok(out)
}

impl TdxTestSigner {
    /// A fresh PKI, platform and Quoting Enclave.
    pub fn new() -> Result<Self> {
        let root_key = p256_key()?;
        let root = certificate("TEST-ONLY SGX Root CA", &root_key, None, true, vec![])?;
        let platform_key = p256_key()?;
        let platform_ca = certificate(
            "TEST-ONLY SGX PCK Platform CA",
            &platform_key,
            Some((&root, &root_key)),
            true,
            vec![],
        )?;
        let pck_key = p256_key()?;
        let oid = Asn1Object::from_str(SGX_OID)?;
        let value = Asn1OctetString::new_from_bytes(&sgx_extension_value())?;
        let sgx = X509Extension::new_from_der(&oid, false, &value)?;
        let pck = certificate(
            "TEST-ONLY SGX PCK Certificate",
            &pck_key,
            Some((&platform_ca, &platform_key)),
            false,
            vec![sgx],
        )?;
        let tcb_signing_key = p256_key()?;
        let tcb_signing = certificate(
            "TEST-ONLY SGX TCB Signing",
            &tcb_signing_key,
            Some((&root, &root_key)),
            false,
            vec![],
        )?;
        Ok(Self {
            root,
            root_key,
            platform_ca,
            platform_key,
            pck,
            pck_key,
            tcb_signing,
            tcb_signing_key,
            attestation_key: p256_key()?,
            qe_auth_data: (0u8..32).collect(),
        })
    }

    pub fn root(&self) -> &X509 {
        &self.root
    }

    pub fn root_pem(&self) -> Vec<u8> {
        self.root.to_pem().unwrap_or_default()
    }

    /// The PCK certificate the quotes carry (what a PCK CRL would revoke).
    pub fn pck(&self) -> &X509 {
        &self.pck
    }

    /// A TD report body (584 bytes, quote layout) with this signer's measurements.
    pub fn body(&self, report_data: &[u8; 64]) -> Vec<u8> {
        self.body_with_rtmr3(report_data, &RTMR[3])
    }

    /// The same body with `rtmr3` as RTMR3 (what the TD extended at run time, e.g. the
    /// workload log's SHA-384 replay).
    pub fn body_with_rtmr3(&self, report_data: &[u8; 64], rtmr3: &[u8; 48]) -> Vec<u8> {
        let mut body = Vec::with_capacity(584);
        body.extend_from_slice(&TEE_TCB_SVN);
        body.extend_from_slice(&MRSEAM);
        body.extend_from_slice(&[0u8; 48]); // mrsignerseam: Intel's module
        body.extend_from_slice(&[0u8; 8]); // seam attributes
        body.extend_from_slice(&[0, 0, 0, 0x10, 0, 0, 0, 0]); // td attributes: SEPT_VE_DISABLE
        body.extend_from_slice(&0xe7u64.to_le_bytes()); // xfam
        body.extend_from_slice(&MRTD);
        body.extend_from_slice(&[0u8; 48 * 3]); // mrconfigid, mrowner, mrownerconfig
        for rtmr in &RTMR[..3] {
            body.extend_from_slice(rtmr);
        }
        body.extend_from_slice(rtmr3);
        body.extend_from_slice(report_data);
        body
    }

    /// The same body with the debug attribute set (a TD whose memory the host can read).
    pub fn debug_body(&self, report_data: &[u8; 64]) -> Vec<u8> {
        let mut body = self.body(report_data);
        body[120] |= 1;
        body
    }

    /// A TD report 1.5 body (648 bytes, quote v5 body type 3): [`Self::body`] followed by
    /// `tee_tcb_svn2` (the TDX module running now) and `mrservicetd`.
    pub fn body15(
        &self,
        report_data: &[u8; 64],
        tee_tcb_svn2: &[u8; 16],
        mrservicetd: &[u8; 48],
    ) -> Vec<u8> {
        let mut body = self.body(report_data);
        body.extend_from_slice(tee_tcb_svn2);
        body.extend_from_slice(mrservicetd);
        body
    }

    /// The 48-byte quote header of `version` (ECDSA P-256, TDX, Intel's QE vendor ID).
    fn header(version: u16) -> Vec<u8> {
        let mut quote = Vec::new();
        quote.extend_from_slice(&version.to_le_bytes());
        quote.extend_from_slice(&2u16.to_le_bytes()); // ECDSA P-256
        quote.extend_from_slice(&0x81u32.to_le_bytes()); // TDX
        quote.extend_from_slice(&[0u8; 4]);
        quote.extend_from_slice(&[
            0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f,
            0x06, 0x07,
        ]); // Intel's QE vendor ID
        quote.extend_from_slice(&[0u8; 20]);
        quote
    }

    /// A TD quote v4 over `body`, signed as a Quoting Enclave signs.
    pub fn quote(&self, body: &[u8]) -> Result<Vec<u8>> {
        anyhow::ensure!(body.len() == 584, "a TD report body is 584 bytes");
        let mut quote = Self::header(4);
        quote.extend_from_slice(body);
        self.signed(quote)
    }

    /// A TD quote v5 over `body`: body type 2 (TD report 1.0) for 584 bytes, 3 (TD report 1.5)
    /// for 648, its size in the body descriptor.
    pub fn quote_v5(&self, body: &[u8]) -> Result<Vec<u8>> {
        let body_type = match body.len() {
            584 => 2,
            648 => 3,
            other => anyhow::bail!("a TD report body is 584 or 648 bytes, not {other}"),
        };
        self.quote_v5_declaring(body_type, body.len() as u32, body)
    }

    /// A TD quote v5 whose body descriptor says `body_type` and `declared_size` whatever `body`
    /// is, genuinely signed over header || descriptor || body: for attacks on the parser.
    pub fn quote_v5_declaring(
        &self,
        body_type: u16,
        declared_size: u32,
        body: &[u8],
    ) -> Result<Vec<u8>> {
        let mut quote = Self::header(5);
        quote.extend_from_slice(&body_type.to_le_bytes());
        quote.extend_from_slice(&declared_size.to_le_bytes());
        quote.extend_from_slice(body);
        self.signed(quote)
    }

    /// `quote` (header and body) followed by its signature data: the attestation key's signature
    /// over all of `quote`, the key, and the QE report certification data with the PCK chain.
    fn signed(&self, mut quote: Vec<u8>) -> Result<Vec<u8>> {
        let signature = sign_raw(&self.attestation_key, &quote)?;
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
        let mut ctx = openssl::bn::BigNumContext::new()?;
        let point = self.attestation_key.ec_key()?.public_key().to_bytes(
            &group,
            openssl::ec::PointConversionForm::UNCOMPRESSED,
            &mut ctx,
        )?;
        let attestation_key = &point[1..];

        // QE report.
        let mut qe = vec![0u8; 384];
        qe[48] = 0x11; // attributes: INIT | MODE64BIT
        qe[64..96].copy_from_slice(&[0xee; 32]); // mrenclave
        qe[128..160].copy_from_slice(&QE_MRSIGNER);
        qe[256..258].copy_from_slice(&QE_ISVPRODID.to_le_bytes());
        qe[258..260].copy_from_slice(&QE_ISVSVN.to_le_bytes());
        let mut hasher = openssl::sha::Sha256::new();
        hasher.update(attestation_key);
        hasher.update(&self.qe_auth_data);
        qe[320..352].copy_from_slice(&hasher.finish());
        let qe_signature = sign_raw(&self.pck_key, &qe)?;

        let mut chain = Vec::new();
        for cert in [&self.pck, &self.platform_ca, &self.root] {
            chain.extend(cert.to_pem()?);
        }
        let mut qe_data = qe;
        qe_data.extend_from_slice(&qe_signature);
        qe_data.extend_from_slice(&(self.qe_auth_data.len() as u16).to_le_bytes());
        qe_data.extend_from_slice(&self.qe_auth_data);
        qe_data.extend_from_slice(&5u16.to_le_bytes());
        qe_data.extend_from_slice(&(chain.len() as u32).to_le_bytes());
        qe_data.extend_from_slice(&chain);

        let mut signature_data = Vec::new();
        signature_data.extend_from_slice(&signature);
        signature_data.extend_from_slice(attestation_key);
        signature_data.extend_from_slice(&6u16.to_le_bytes());
        signature_data.extend_from_slice(&(qe_data.len() as u32).to_le_bytes());
        signature_data.extend_from_slice(&qe_data);
        quote.extend_from_slice(&(signature_data.len() as u32).to_le_bytes());
        quote.extend_from_slice(&signature_data);
        Ok(quote)
    }

    /// The TDREPORT (1024 bytes) a TD would get from TDG.MR.REPORT for `body` (MAC left zero).
    pub fn td_report(&self, body: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; 1024];
        r[0] = 0x81; // report type TDX
        r[128..192].copy_from_slice(&body[520..584]); // report_data
        r[256..264].copy_from_slice(&[0xff; 8]); // TEE_TCB_INFO valid
        r[264..376].copy_from_slice(&body[..112]); // tee_tcb_svn, mrseam, mrsignerseam
        r[376..384].copy_from_slice(&body[112..120]); // seam attributes
        r[512..520].copy_from_slice(&body[120..128]); // td attributes (TDINFO)
        r[520..912].copy_from_slice(&body[128..520]); // xfam .. rtmr3
        r
    }

    /// An Azure-style HCL report (TDX) around a TD report whose `report_data` binds `var_data`.
    /// Returns the HCL report and the TD body it holds (to be quoted, as Azure's quote service
    /// does with the TD report).
    pub fn hcl_report(&self, var_data: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut report_data = [0u8; 64];
        report_data[..32].copy_from_slice(&openssl::sha::sha256(var_data));
        let body = self.body(&report_data);
        let mut hcl = Vec::with_capacity(0x4d4 + var_data.len());
        hcl.extend_from_slice(b"HCLA");
        hcl.extend_from_slice(&1u32.to_le_bytes());
        hcl.extend_from_slice(&1184u32.to_le_bytes());
        hcl.extend_from_slice(&2u32.to_le_bytes()); // request type (2 for both)
        hcl.resize(0x20, 0);
        hcl.extend_from_slice(&self.td_report(&body));
        hcl.resize(0x4c0, 0);
        for field in [(20 + var_data.len()) as u32, 1, 4, 1, var_data.len() as u32] {
            hcl.extend_from_slice(&field.to_le_bytes()); // size, version, TDX, SHA-256, var_data
        }
        hcl.extend_from_slice(var_data);
        (hcl, body)
    }

    /// TCB info (v3) for this platform with one UpToDate level, the TD QE identity (v2), both
    /// signed by the TCB Signing certificate, and both CRLs (none revoking anything), as
    /// collateral JSON in the shape of `dcap-qvl`'s collateral files.
    pub fn collateral_json(&self) -> Result<Vec<u8>> {
        self.collateral_json_with(CollateralOptions::default())
    }

    /// Collateral as `options` says: with or without CRLs, revoking the PCK, stale CRLs, another
    /// TCB status or evaluation. TCB info and QE identity are always genuinely signed.
    pub fn collateral_json_with(&self, options: CollateralOptions) -> Result<Vec<u8>> {
        let chain = String::from_utf8([self.tcb_signing.to_pem()?, self.root.to_pem()?].concat())?;
        self.collateral_signed_by(&self.tcb_signing_key, chain, options)
    }

    /// The normal collateral, but the QE identity signed by a second TCB Signing certificate
    /// (under the same root, fresh key) that the root CA CRL revokes: a signer Intel withdrew.
    /// Verifiers must refuse it.
    pub fn collateral_json_with_revoked_qe_signer(&self) -> Result<Vec<u8>> {
        let key = p256_key()?;
        let signer = certificate(
            "TEST-ONLY SGX TCB Signing (revoked)",
            &key,
            Some((&self.root, &self.root_key)),
            false,
            vec![],
        )?;
        let mut json: serde_json::Value = serde_json::from_slice(&self.collateral_json()?)?;
        let qe_identity = json["qe_identity"].as_str().unwrap_or_default().to_owned();
        let chain = [signer.to_pem()?, self.root.to_pem()?].concat();
        json["qe_identity_issuer_chain"] = String::from_utf8(chain)?.into();
        json["qe_identity_signature"] = hex::encode(sign_raw(&key, qe_identity.as_bytes())?).into();
        json["root_ca_crl"] = crl_hex((&self.root, &self.root_key), &[&signer], VALIDITY)?.into();
        Ok(serde_json::to_vec(&json)?)
    }

    /// The normal collateral, but TCB info and QE identity signed with the PCK key and its chain
    /// (PCK <- PCK CA <- root): what a platform whose PCK key leaked could forge. Verifiers must
    /// refuse it.
    pub fn collateral_json_signed_by_pck(&self) -> Result<Vec<u8>> {
        let chain = String::from_utf8(
            [
                self.pck.to_pem()?,
                self.platform_ca.to_pem()?,
                self.root.to_pem()?,
            ]
            .concat(),
        )?;
        self.collateral_signed_by(&self.pck_key, chain, CollateralOptions::default())
    }

    /// The PCK CRL (by the PCK Platform CA), the root CA CRL (by the root) and the PCK CRL's
    /// issuer chain, as the collateral's fields; none when `options.crls` is false.
    fn crl_fields(
        &self,
        options: CollateralOptions,
    ) -> Result<serde_json::Map<String, serde_json::Value>> {
        let mut fields = serde_json::Map::new();
        if !options.crls {
            return Ok(fields);
        }
        let revoked: &[&X509] = if options.revoke_pck {
            &[&self.pck]
        } else {
            &[]
        };
        let issuer_chain = [self.platform_ca.to_pem()?, self.root.to_pem()?].concat();
        let pck_issuer = (&self.platform_ca, &self.platform_key);
        let valid = options.crl_validity;
        fields.insert(
            "pck_crl_issuer_chain".into(),
            String::from_utf8(issuer_chain)?.into(),
        );
        fields.insert(
            "pck_crl".into(),
            crl_hex(pck_issuer, revoked, valid)?.into(),
        );
        let root_crl = crl_hex((&self.root, &self.root_key), &[], valid)?;
        fields.insert("root_ca_crl".into(), root_crl.into());
        Ok(fields)
    }

    fn collateral_signed_by(
        &self,
        key: &PKey<Private>,
        chain: String,
        options: CollateralOptions,
    ) -> Result<Vec<u8>> {
        let tcb_info = tcb_info_json(&options);
        let qe_identity = serde_json::json!({
            "id": "TD_QE", "version": 2, "issueDate": ISSUE_DATE, "nextUpdate": NEXT_UPDATE,
            "tcbEvaluationDataNumber": options.tcb_evaluation, "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF", "attributes": "11000000000000000000000000000000",
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": hex::encode_upper(QE_MRSIGNER), "isvprodid": QE_ISVPRODID,
            "tcbLevels": [{"tcb": {"isvsvn": QE_ISVSVN}, "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": "UpToDate"}]
        })
        .to_string();
        let mut collateral = serde_json::json!({
            "tcb_info_issuer_chain": chain,
            "tcb_info_signature": hex::encode(sign_raw(key, tcb_info.as_bytes())?),
            "tcb_info": tcb_info,
            "qe_identity_issuer_chain": chain,
            "qe_identity_signature": hex::encode(sign_raw(key, qe_identity.as_bytes())?),
            "qe_identity": qe_identity,
        });
        if let Some(fields) = collateral.as_object_mut() {
            fields.extend(self.crl_fields(options)?);
        }
        Ok(serde_json::to_vec(&collateral)?)
    }
}

/// TCB info (v3) for this platform: its TCB level with `options.platform_status`, one
/// OutOfDate level below it, and the TDX module's level, as the exact bytes to sign.
fn tcb_info_json(options: &CollateralOptions) -> String {
    let components = |svns: &[u8]| -> Vec<serde_json::Value> {
        svns.iter()
            .map(|svn| serde_json::json!({ "svn": svn }))
            .collect()
    };
    let mut tdx_components = [0u8; 16];
    tdx_components[2] = TEE_TCB_SVN[2];
    let level = |svn: u8, status: &str| serde_json::json!({"tcb": {"isvsvn": svn}, "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": status});
    let module_levels = match options.module_newest_svn {
        Some(newest) => vec![
            level(newest, "UpToDate"),
            level(TEE_TCB_SVN[0], "OutOfDate"),
        ],
        None => vec![level(TEE_TCB_SVN[0], "UpToDate")],
    };
    serde_json::json!({
        "id": "TDX", "version": 3, "issueDate": ISSUE_DATE, "nextUpdate": NEXT_UPDATE,
        "fmspc": hex::encode_upper(FMSPC), "pceId": hex::encode_upper(PCE_ID),
        "tcbType": 0, "tcbEvaluationDataNumber": options.tcb_evaluation,
        "tdxModule": {"mrsigner": "00".repeat(48), "attributes": "0000000000000000", "attributesMask": "FFFFFFFFFFFFFFFF"},
        "tdxModuleIdentities": [{
            "id": "TDX_01", "mrsigner": "00".repeat(48), "attributes": "0000000000000000",
            "attributesMask": "FFFFFFFFFFFFFFFF",
            "tcbLevels": module_levels
        }],
        "tcbLevels": [
            {"tcb": {"sgxtcbcomponents": components(&SGX_TCB), "pcesvn": PCESVN, "tdxtcbcomponents": components(&tdx_components)},
             "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": options.platform_status},
            {"tcb": {"sgxtcbcomponents": components(&[0; 16]), "pcesvn": 0, "tdxtcbcomponents": components(&[0; 16])},
             "tcbDate": "2018-01-04T00:00:00Z", "tcbStatus": "OutOfDate", "advisoryIDs": ["INTEL-SA-00000"]}
        ]
    })
    .to_string()
}
