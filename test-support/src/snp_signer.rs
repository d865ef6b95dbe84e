//! A TEST-ONLY stand-in for AMD's firmware and key server: an ARK -> ASK -> VCEK chain generated
//! at run time, and SNP reports (version 3, Milan layout) signed with that VCEK exactly as the
//! firmware signs them. Verifiers trust its root only when a test names it explicitly.

use anyhow::Result;
use openssl::asn1::{Asn1Object, Asn1OctetString};
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::{X509Extension, X509};

/// Reported TCB of every report and of the VCEK's extensions.
pub const TCB: [u8; 4] = [3, 0, 8, 115]; // bootloader, tee, snp, microcode

/// Generated keys and certificates.
pub struct SnpTestSigner {
    ark: X509,
    ask: X509,
    vcek: X509,
    vcek_key: PKey<Private>,
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
        valid: (1_600_000_000, 2_500_000_000),
    })
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

impl SnpTestSigner {
    /// A fresh chain and chip identity.
    pub fn new() -> Result<Self> {
        let ark_key = p384_key()?;
        let ark = certificate("TEST-ONLY ARK", &ark_key, None, vec![])?;
        let ask_key = p384_key()?;
        let ask = certificate("TEST-ONLY ASK", &ask_key, Some((&ark, &ark_key)), vec![])?;
        let vcek_key = p384_key()?;
        let mut chip_id = [0u8; 64];
        openssl::rand::rand_bytes(&mut chip_id)?;
        let [bl, tee, snp, ucode] = TCB;
        let mut hw_id = vec![0x04, 0x40];
        hw_id.extend_from_slice(&chip_id);
        let extensions = vec![
            amd_extension(
                "1.3.6.1.4.1.3704.1.2",
                &[&[0x16, 8][..], b"Milan-B0"].concat(),
            )?,
            amd_extension("1.3.6.1.4.1.3704.1.3.1", &spl(bl))?,
            amd_extension("1.3.6.1.4.1.3704.1.3.2", &spl(tee))?,
            amd_extension("1.3.6.1.4.1.3704.1.3.3", &spl(snp))?,
            amd_extension("1.3.6.1.4.1.3704.1.3.8", &spl(ucode))?,
            amd_extension("1.3.6.1.4.1.3704.1.4", &hw_id)?,
        ];
        let vcek = certificate(
            "TEST-ONLY VCEK",
            &vcek_key,
            Some((&ask, &ask_key)),
            extensions,
        )?;
        Ok(Self {
            ark,
            ask,
            vcek,
            vcek_key,
            chip_id,
        })
    }

    pub fn ark_pem(&self) -> Vec<u8> {
        self.ark.to_pem().unwrap_or_default()
    }

    pub fn ark(&self) -> &X509 {
        &self.ark
    }

    pub fn ask_der(&self) -> Vec<u8> {
        self.ask.to_der().unwrap_or_default()
    }

    pub fn vcek_der(&self) -> Vec<u8> {
        self.vcek.to_der().unwrap_or_default()
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
        let mut r = vec![0u8; 1184];
        r[0..4].copy_from_slice(&3u32.to_le_bytes()); // version
        r[8..16].copy_from_slice(&policy.to_le_bytes());
        r[0x34..0x38].copy_from_slice(&1u32.to_le_bytes()); // ECDSA P-384 SHA-384
        let tcb = tcb_u64();
        r[0x38..0x40].copy_from_slice(&tcb.to_le_bytes()); // current_tcb
        r[0x50..0x90].copy_from_slice(report_data);
        r[0x90..0xc0].copy_from_slice(measurement);
        r[0x180..0x188].copy_from_slice(&tcb.to_le_bytes()); // reported_tcb
        r[0x188] = 0x19; // CPUID family: Zen 3
        r[0x189] = 0x01; // model: Milan
        r[0x18a] = 0x01;
        r[0x1a0..0x1e0].copy_from_slice(&self.chip_id);
        r[0x1e0..0x1e8].copy_from_slice(&tcb.to_le_bytes()); // committed_tcb
        r[0x1f0..0x1f8].copy_from_slice(&tcb.to_le_bytes()); // launch_tcb
        let digest = openssl::sha::sha384(&r[..0x2a0]);
        let key = self.vcek_key.ec_key()?;
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
}

fn tcb_u64() -> u64 {
    let [bl, tee, snp, ucode] = TCB;
    u64::from(bl) | u64::from(tee) << 8 | u64::from(snp) << 48 | u64::from(ucode) << 56
}
