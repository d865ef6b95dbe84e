//! Report fields that decide trust: guest policy bits, TCB levels, and whether the signing key's
//! certificate describes the chip and TCB the report claims.

use super::extensions::AmdExtensions;
use super::report::SnpReport;
use serde::{Deserialize, Serialize};

/// The guest policy (SNP ABI, Table 9) decoded into the bits a verifier cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestPolicy {
    pub raw: u64,
    pub abi_major: u8,
    pub abi_minor: u8,
    pub smt_allowed: bool,
    pub migrate_ma: bool,
    pub debug: bool,
    pub single_socket: bool,
}

impl GuestPolicy {
    pub fn from_raw(raw: u64) -> Self {
        let bit = |n: u32| raw & (1 << n) != 0;
        Self {
            raw,
            abi_minor: raw as u8,
            abi_major: (raw >> 8) as u8,
            smt_allowed: bit(16),
            migrate_ma: bit(18),
            debug: bit(19),
            single_socket: bit(20),
        }
    }
}

/// TCB component levels, comparable across reports and certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Tcb {
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
    /// Turin and later only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fmc: Option<u8>,
}

impl Tcb {
    pub fn from_sev(tcb: &sev::firmware::host::TcbVersion) -> Self {
        Self {
            bootloader: tcb.bootloader,
            tee: tcb.tee,
            snp: tcb.snp,
            microcode: tcb.microcode,
            fmc: tcb.fmc,
        }
    }

    /// Components of `self` below `minimum`, as "name actual < minimum".
    pub fn below(&self, minimum: &Tcb) -> Vec<String> {
        let mut low = Vec::new();
        for (name, actual, min) in [
            ("bootloader", self.bootloader, minimum.bootloader),
            ("tee", self.tee, minimum.tee),
            ("snp", self.snp, minimum.snp),
            ("microcode", self.microcode, minimum.microcode),
        ] {
            if actual < min {
                low.push(format!("{name} {actual} < {min}"));
            }
        }
        if let (Some(min), actual) = (minimum.fmc, self.fmc.unwrap_or(0)) {
            if actual < min {
                low.push(format!("fmc {actual} < {min}"));
            }
        }
        low
    }
}

impl std::fmt::Display for Tcb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bootloader={} tee={} snp={} microcode={}",
            self.bootloader, self.tee, self.snp, self.microcode
        )?;
        if let Some(fmc) = self.fmc {
            write!(f, " fmc={fmc}")?;
        }
        Ok(())
    }
}

/// Which key signed the report, from the report's KEY_INFO field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SigningKey {
    Vcek,
    Vlek,
    None,
}

pub fn signing_key(report: &SnpReport) -> SigningKey {
    match (report.raw()[0x48] >> 2) & 0b111 {
        0 => SigningKey::Vcek,
        1 => SigningKey::Vlek,
        _ => SigningKey::None,
    }
}

/// True when the firmware masked the chip ID (MASK_CHIP_ID): a VCEK cannot then be matched to a
/// chip, and the report says so.
pub fn chip_id_masked(report: &SnpReport) -> bool {
    report.raw()[0x48] & 0b10 != 0 || report.fields.chip_id == [0; 64]
}

/// Checks that the certificate that signed the report was issued for this chip and this TCB.
pub fn leaf_matches_report(ext: &AmdExtensions, report: &SnpReport) -> Result<String, String> {
    let reported = Tcb::from_sev(&report.fields.reported_tcb);
    let mut mismatches = Vec::new();
    for (name, cert_value, report_value) in [
        ("bootloader", ext.bootloader, reported.bootloader),
        ("tee", ext.tee, reported.tee),
        ("snp", ext.snp, reported.snp),
        ("microcode", ext.microcode, reported.microcode),
    ] {
        match cert_value {
            Some(value) if value == report_value => {}
            Some(value) => mismatches.push(format!(
                "{name}: certificate {value}, report {report_value}"
            )),
            None => mismatches.push(format!("{name}: missing from the certificate")),
        }
    }
    if let (Some(cert_fmc), Some(report_fmc)) = (ext.fmc, reported.fmc) {
        if cert_fmc != report_fmc {
            mismatches.push(format!("fmc: certificate {cert_fmc}, report {report_fmc}"));
        }
    }
    let chip = match (signing_key(report), &ext.hw_id) {
        (SigningKey::Vcek, Some(hw_id)) => {
            let chip_id = &report.fields.chip_id;
            if chip_id_masked(report) {
                "chip ID masked by policy".to_owned()
            } else if hw_id.len() <= 64 && !hw_id.is_empty() && chip_id[..hw_id.len()] == hw_id[..]
            {
                "hwID matches chip_id".to_owned()
            } else {
                mismatches.push(format!(
                    "hwID {} is not the report's chip_id {}",
                    hex::encode(hw_id),
                    hex::encode(chip_id)
                ));
                String::new()
            }
        }
        (SigningKey::Vcek, None) => {
            mismatches.push("report is VCEK-signed but the certificate has no hwID".into());
            String::new()
        }
        (SigningKey::Vlek, _) => match &ext.csp_id {
            Some(csp) => format!("VLEK issued to {csp}"),
            None => {
                mismatches.push("report is VLEK-signed but the certificate has no csp_id".into());
                String::new()
            }
        },
        (SigningKey::None, _) => {
            mismatches.push("report says it is not signed (KEY_INFO signing key 7)".into());
            String::new()
        }
    };
    if mismatches.is_empty() {
        Ok(format!(
            "certificate TCB {reported} matches the report; {chip}"
        ))
    } else {
        Err(mismatches.join("; "))
    }
}
