//! A TEST-ONLY stand-in for AMD's firmware and key server: an ARK -> ASK -> VCEK chain and an
//! ARK -> ASVK -> VLEK chain generated at run time, SNP reports (version 3, Milan layout) signed
//! with the VCEK or the VLEK exactly as the firmware signs them, and ARK-signed CRLs as AMD's KDS
//! publishes them (`/vcek/v1/{product}/crl`). Verifiers trust its root only when a test names it
//! explicitly.

use anyhow::Result;
use openssl::asn1::{Asn1Integer, Asn1Object, Asn1OctetString, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::{X509Builder, X509Extension, X509NameRef, X509};

/// Reported TCB of every report and of the VCEK's and VLEK's extensions.
pub const TCB: [u8; 4] = [3, 0, 8, 115]; // bootloader, tee, snp, microcode

/// Validity of every certificate, Unix seconds (2020-09-13 to 2049-03-22).
const VALIDITY: (i64, i64) = (1_600_000_000, 2_500_000_000);

/// The cloud provider a VLEK is issued to (its `csp_id` extension).
const CSP_ID: &str = "TEST-ONLY CSP";

/// Which generated key signs a report, or which key a report's KEY_INFO claims signed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SnpTestKey {
    /// The chip's key (KEY_INFO signing key 0), certified by the ASK.
    Vcek,
    /// The cloud provider's key (KEY_INFO signing key 1), certified by the ASVK.
    Vlek,
}

/// Generated keys and certificates.
pub struct SnpTestSigner {
    ark: X509,
    ark_key: PKey<Private>,
    ask: X509,
    vcek: X509,
    vcek_key: PKey<Private>,
    asvk: X509,
    vlek: X509,
    vlek_key: PKey<Private>,
    chip_id: [u8; 64],
}

fn p384_key() -> Result<PKey<Private>> {
    let group = EcGroup::from_curve_name(Nid::SECP384R1)?;
    Ok(PKey::from_ec_key(EcKey::generate(&group)?)?)
}

/// AMD's chain is signed with SHA-384 (RSA-PSS at AMD; ECDSA P-384 here).
fn certificate(
    common_name: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    extensions: Vec<X509Extension>,
) -> Result<X509> {
    crate::certs::certificate(crate::certs::CertSpec {
        common_name,
        organization: "TEST ONLY - not AMD",
        key,
        issuer,
        ca: false,
        extensions,
        digest: MessageDigest::sha384(),
        valid: VALIDITY,
    })
}

/// A self-signed root whose subject (and so issuer) is a copy of `name`, byte for byte.
fn root_named(name: &X509NameRef, key: &PKey<Private>) -> Result<X509> {
    let mut builder = X509Builder::new()?;
    builder.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(64, MsbOption::MAYBE_ZERO, false)?;
    let serial = Asn1Integer::from_bn(&serial)?;
    builder.set_serial_number(&serial)?;
    builder.set_subject_name(name)?;
    builder.set_issuer_name(name)?;
    builder.set_pubkey(key)?;
    let (not_before, not_after) = (
        Asn1Time::from_unix(VALIDITY.0)?,
        Asn1Time::from_unix(VALIDITY.1)?,
    );
    builder.set_not_before(&not_before)?;
    builder.set_not_after(&not_after)?;
    builder.sign(key, MessageDigest::sha384())?;
    Ok(builder.build())
}

fn amd_extension(oid: &str, der: &[u8]) -> Result<X509Extension> {
    let oid = Asn1Object::from_str(oid)?;
    let value = Asn1OctetString::new_from_bytes(der)?;
    Ok(X509Extension::new_from_der(&oid, false, &value)?)
}

fn spl(value: u8) -> Vec<u8> {
    if value < 0x80 {
        vec![0x02, 0x01, value]
    } else {
        vec![0x02, 0x02, 0x00, value]
    }
}

/// Product name and TCB extensions, as on every VCEK and VLEK.
fn tcb_extensions() -> Result<Vec<X509Extension>> {
    let [bl, tee, snp, ucode] = TCB;
    Ok(vec![
        amd_extension(
            "1.3.6.1.4.1.3704.1.2",
            &[&[0x16, 8][..], b"Milan-B0"].concat(),
        )?,
        amd_extension("1.3.6.1.4.1.3704.1.3.1", &spl(bl))?,
        amd_extension("1.3.6.1.4.1.3704.1.3.2", &spl(tee))?,
        amd_extension("1.3.6.1.4.1.3704.1.3.3", &spl(snp))?,
        amd_extension("1.3.6.1.4.1.3704.1.3.8", &spl(ucode))?,
    ])
}

/// A certificate's serial as big-endian bytes without leading zeros.
fn serial_bytes(cert: &X509) -> Vec<u8> {
    cert.serial_number()
        .to_bn()
        .map(|bn| bn.to_vec())
        .unwrap_or_default()
}

impl SnpTestSigner {
    /// A fresh chain and chip identity.
    pub fn new() -> Result<Self> {
        let ark_key = p384_key()?;
        let ark = certificate("TEST-ONLY ARK", &ark_key, None, vec![])?;
        Self::under(ark, ark_key)
    }

    /// An attacker's chain: fresh keys like [`SnpTestSigner::new`], but the ARK's subject is a
    /// copy of `ark_subject` (for example the real AMD ARK's), so the ASK and ASVK name that
    /// root as their issuer. It exists to be refused: nothing but the name is AMD's. The ASK,
    /// ASVK, VCEK and VLEK still say TEST ONLY.
    pub fn impostor(ark_subject: &X509NameRef) -> Result<Self> {
        let ark_key = p384_key()?;
        let ark = root_named(ark_subject, &ark_key)?;
        Self::under(ark, ark_key)
    }

    fn under(ark: X509, ark_key: PKey<Private>) -> Result<Self> {
        let ask_key = p384_key()?;
        let ask = certificate("TEST-ONLY ASK", &ask_key, Some((&ark, &ark_key)), vec![])?;
        let vcek_key = p384_key()?;
        let mut chip_id = [0u8; 64];
        openssl::rand::rand_bytes(&mut chip_id)?;
        let mut hw_id = vec![0x04, 0x40];
        hw_id.extend_from_slice(&chip_id);
        let mut extensions = tcb_extensions()?;
        extensions.push(amd_extension("1.3.6.1.4.1.3704.1.4", &hw_id)?);
        let vcek = certificate(
            "TEST-ONLY VCEK",
            &vcek_key,
            Some((&ask, &ask_key)),
            extensions,
        )?;

        let asvk_key = p384_key()?;
        let asvk = certificate(
            "TEST-ONLY ASVK (SEV-VLEK)",
            &asvk_key,
            Some((&ark, &ark_key)),
            vec![],
        )?;
        let vlek_key = p384_key()?;
        let csp = [&[0x16, CSP_ID.len() as u8][..], CSP_ID.as_bytes()].concat();
        let mut extensions = tcb_extensions()?;
        extensions.push(amd_extension("1.3.6.1.4.1.3704.1.5", &csp)?);
        let vlek = certificate(
            "TEST-ONLY VLEK",
            &vlek_key,
            Some((&asvk, &asvk_key)),
            extensions,
        )?;
        Ok(Self {
            ark,
            ark_key,
            ask,
            vcek,
            vcek_key,
            asvk,
            vlek,
            vlek_key,
            chip_id,
        })
    }

    pub fn ark_pem(&self) -> Vec<u8> {
        self.ark.to_pem().unwrap_or_default()
    }

    pub fn ark(&self) -> &X509 {
        &self.ark
    }

    pub fn ark_der(&self) -> Vec<u8> {
        self.ark.to_der().unwrap_or_default()
    }

    pub fn ask(&self) -> &X509 {
        &self.ask
    }

    pub fn ask_der(&self) -> Vec<u8> {
        self.ask.to_der().unwrap_or_default()
    }

    /// The ASK's serial number, big-endian without leading zeros (what a CRL lists).
    pub fn ask_serial(&self) -> Vec<u8> {
        serial_bytes(&self.ask)
    }

    pub fn vcek_der(&self) -> Vec<u8> {
        self.vcek.to_der().unwrap_or_default()
    }

    /// The intermediate that certifies VLEKs (AMD's "SEV-VLEK-<product>").
    pub fn asvk(&self) -> &X509 {
        &self.asvk
    }

    pub fn asvk_der(&self) -> Vec<u8> {
        self.asvk.to_der().unwrap_or_default()
    }

    /// The ASVK's serial number, big-endian without leading zeros.
    pub fn asvk_serial(&self) -> Vec<u8> {
        serial_bytes(&self.asvk)
    }

    pub fn vlek_der(&self) -> Vec<u8> {
        self.vlek.to_der().unwrap_or_default()
    }

    pub fn chip_id(&self) -> [u8; 64] {
        self.chip_id
    }

    /// A signed version-3 report with these fields; everything else as a Milan guest at VMPL 0
    /// with debugging off would report.
    pub fn report(
        &self,
        report_data: &[u8; 64],
        measurement: &[u8; 48],
        policy: u64,
    ) -> Result<Vec<u8>> {
        self.report_signed(
            SnpTestKey::Vcek,
            SnpTestKey::Vcek,
            report_data,
            measurement,
            policy,
        )
    }

    /// As [`SnpTestSigner::report`], signed by the VLEK as on AWS or GCP shared hosts: KEY_INFO
    /// says VLEK and the chip ID is zero (a VLEK names no chip).
    pub fn vlek_report(
        &self,
        report_data: &[u8; 64],
        measurement: &[u8; 48],
        policy: u64,
    ) -> Result<Vec<u8>> {
        self.report_signed(
            SnpTestKey::Vlek,
            SnpTestKey::Vlek,
            report_data,
            measurement,
            policy,
        )
    }

    /// ATTACK: a report signed by the VCEK whose KEY_INFO claims the VLEK signed it.
    pub fn vcek_signed_report_claiming_vlek(
        &self,
        report_data: &[u8; 64],
        measurement: &[u8; 48],
        policy: u64,
    ) -> Result<Vec<u8>> {
        self.report_signed(
            SnpTestKey::Vcek,
            SnpTestKey::Vlek,
            report_data,
            measurement,
            policy,
        )
    }

    /// ATTACK: a report signed by the VLEK whose KEY_INFO claims the VCEK (this chip) signed it.
    pub fn vlek_signed_report_claiming_vcek(
        &self,
        report_data: &[u8; 64],
        measurement: &[u8; 48],
        policy: u64,
    ) -> Result<Vec<u8>> {
        self.report_signed(
            SnpTestKey::Vlek,
            SnpTestKey::Vcek,
            report_data,
            measurement,
            policy,
        )
    }

    /// A report signed by `signed_by` whose KEY_INFO claims `claimed` signed it. Both the same
    /// is what firmware does; they differ only in attack tests.
    fn report_signed(
        &self,
        signed_by: SnpTestKey,
        claimed: SnpTestKey,
        report_data: &[u8; 64],
        measurement: &[u8; 48],
        policy: u64,
    ) -> Result<Vec<u8>> {
        let mut r = vec![0u8; 1184];
        r[0..4].copy_from_slice(&3u32.to_le_bytes()); // version
        r[8..16].copy_from_slice(&policy.to_le_bytes());
        r[0x34..0x38].copy_from_slice(&1u32.to_le_bytes()); // ECDSA P-384 SHA-384
        let tcb = tcb_u64();
        r[0x38..0x40].copy_from_slice(&tcb.to_le_bytes()); // current_tcb
        r[0x48] = match claimed {
            SnpTestKey::Vcek => 0,
            SnpTestKey::Vlek => 1 << 2, // KEY_INFO signing key 1
        };
        r[0x50..0x90].copy_from_slice(report_data);
        r[0x90..0xc0].copy_from_slice(measurement);
        r[0x180..0x188].copy_from_slice(&tcb.to_le_bytes()); // reported_tcb
        r[0x188] = 0x19; // CPUID family: Zen 3
        r[0x189] = 0x01; // model: Milan
        r[0x18a] = 0x01;
        if claimed == SnpTestKey::Vcek {
            r[0x1a0..0x1e0].copy_from_slice(&self.chip_id);
        }
        r[0x1e0..0x1e8].copy_from_slice(&tcb.to_le_bytes()); // committed_tcb
        r[0x1f0..0x1f8].copy_from_slice(&tcb.to_le_bytes()); // launch_tcb
        let digest = openssl::sha::sha384(&r[..0x2a0]);
        let key = match signed_by {
            SnpTestKey::Vcek => self.vcek_key.ec_key()?,
            SnpTestKey::Vlek => self.vlek_key.ec_key()?,
        };
        let signature = EcdsaSig::sign(&digest, &key)?;
        for (offset, component) in [(0x2a0, signature.r()), (0x2e8, signature.s())] {
            let mut le = component.to_vec();
            le.reverse();
            r[offset..offset + le.len()].copy_from_slice(&le);
        }
        Ok(r)
    }

    /// An Azure-style HCL report around a signed report whose `report_data` binds `var_data`.
    pub fn hcl_report(
        &self,
        var_data: &[u8],
        measurement: &[u8; 48],
        policy: u64,
    ) -> Result<Vec<u8>> {
        let mut report_data = [0u8; 64];
        report_data[..32].copy_from_slice(&openssl::sha::sha256(var_data));
        let report = self.report(&report_data, measurement, policy)?;
        let mut hcl = Vec::with_capacity(0x4d4 + var_data.len());
        hcl.extend_from_slice(b"HCLA");
        hcl.extend_from_slice(&1u32.to_le_bytes()); // version
        hcl.extend_from_slice(&(report.len() as u32).to_le_bytes());
        hcl.extend_from_slice(&2u32.to_le_bytes()); // request type: SNP
        hcl.resize(0x20, 0);
        hcl.extend_from_slice(&report);
        let request = [
            (20 + var_data.len()) as u32,
            1,                     // version
            2,                     // report type SNP
            1,                     // hash type SHA-256
            var_data.len() as u32, // var_data size
        ];
        for field in request {
            hcl.extend_from_slice(&field.to_le_bytes());
        }
        hcl.extend_from_slice(var_data);
        Ok(hcl)
    }

    /// The ARK's CRL as AMD's KDS serves it (DER), listing `revoked` (typically this signer's
    /// ASK or ASVK), current from `this_update` to `next_update` (Unix seconds). Built by the
    /// shared CRL builder: v2, AKI and CRL number extensions, ECDSA P-384 / SHA-384 (AMD signs
    /// with RSA-PSS / SHA-384).
    pub fn crl(&self, revoked: &[&X509], this_update: i64, next_update: i64) -> Vec<u8> {
        crate::certs::crl(crate::certs::CrlSpec {
            issuer: (&self.ark, &self.ark_key),
            revoked,
            digest: MessageDigest::sha384(),
            valid: (this_update, next_update),
        })
        .and_then(|crl| Ok(crl.to_der()?))
        .expect("a CRL signed with a freshly generated key")
    }

    /// Signs an arbitrary TBSCertList (DER) with the ARK's key and wraps it as a CRL, for tests
    /// that need CRLs the builder refuses to make (no nextUpdate, a delta CRL, a critical
    /// extension nobody knows, another issuer name).
    pub fn sign_crl_tbs(&self, tbs_der: &[u8]) -> Result<Vec<u8>> {
        // ecdsa-with-SHA384 (1.2.840.10045.4.3.3), no parameters.
        const ECDSA_SHA384: [u8; 12] = [
            0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
        ];
        let mut signer = openssl::sign::Signer::new(MessageDigest::sha384(), &self.ark_key)?;
        let signature = signer.sign_oneshot_to_vec(tbs_der)?;
        let mut bit_string = vec![0u8]; // no unused bits
        bit_string.extend_from_slice(&signature);
        let mut body = tbs_der.to_vec();
        body.extend_from_slice(&ECDSA_SHA384);
        body.extend_from_slice(&der(0x03, &bit_string));
        Ok(der(0x30, &body))
    }
}

/// One DER TLV.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

fn tcb_u64() -> u64 {
    let [bl, tee, snp, ucode] = TCB;
    u64::from(bl) | u64::from(tee) << 8 | u64::from(snp) << 48 | u64::from(ucode) << 56
}
