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

/// AMD EPYC product lines with SEV-SNP, each with its own ARK (and KDS path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SnpProduct {
    /// EPYC 7003 (Zen 3), family 19h models 00h-0Fh.
    Milan,
    /// EPYC 9004 and 8004 (Zen 4: Genoa, Genoa-X, Bergamo, Siena), family 19h models 10h-1Fh and
    /// A0h-AFh; all chain to ARK-Genoa.
    Genoa,
    /// EPYC 9005 (Zen 5), family 1Ah models 00h-11h.
    Turin,
}

impl SnpProduct {
    pub const ALL: [SnpProduct; 3] = [SnpProduct::Milan, SnpProduct::Genoa, SnpProduct::Turin];

    /// AMD's product name, as in KDS paths (`/vcek/v1/Milan/...`).
    pub fn name(self) -> &'static str {
        match self {
            SnpProduct::Milan => "Milan",
            SnpProduct::Genoa => "Genoa",
            SnpProduct::Turin => "Turin",
        }
    }

    /// The name of the product's pinned ARK in [`crate::snp::amd_roots`], which
    /// [`crate::snp::VerifiedChain::root`] reports.
    pub fn root_name(self) -> &'static str {
        match self {
            SnpProduct::Milan => "ARK-Milan",
            SnpProduct::Genoa => "ARK-Genoa",
            SnpProduct::Turin => "ARK-Turin",
        }
    }

    /// The product whose pinned ARK has this name; `None` for test roots and anything else.
    pub fn from_root_name(root_name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.root_name() == root_name)
    }

    /// The product of a CPU family and model (combined extended and base fields, as a version 3+
    /// report states them at 0x188 and 0x189), grouped as the `sev` crate and AMD's KDS group
    /// them.
    pub fn from_cpuid(family: u8, model: u8) -> Option<Self> {
        match (family, model) {
            (0x19, 0x00..=0x0f) => Some(SnpProduct::Milan),
            (0x19, 0x10..=0x1f | 0xa0..=0xaf) => Some(SnpProduct::Genoa),
            (0x1a, 0x00..=0x11) => Some(SnpProduct::Turin),
            _ => None,
        }
    }

    /// The product the report states (version 3 and later, signed with the rest); `None` for a
    /// version 2 report (no CPUID fields) or a part this table does not know.
    pub fn from_report(report: &SnpReport) -> Option<Self> {
        let (family, model, _) = report_cpuid(report)?;
        Self::from_cpuid(family, model)
    }

    /// AMD KDS's CRL for this product's ASK (VCEK reports) or ASVK (VLEK reports), signed by the
    /// ARK: what [`crate::snp::certs::check_amd_crl`] reads.
    pub fn kds_crl_url(self, key: SigningKey) -> Option<String> {
        let kind = match key {
            SigningKey::Vcek => "vcek",
            SigningKey::Vlek => "vlek",
            SigningKey::None => return None,
        };
        Some(format!(
            "https://kdsintf.amd.com/{kind}/v1/{}/crl",
            self.name()
        ))
    }
}

/// CPUID family, model and stepping from a version 3+ report (all zero in version 2).
fn report_cpuid(report: &SnpReport) -> Option<(u8, u8, u8)> {
    let raw = report.raw();
    let version = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let cpuid = (raw[0x188], raw[0x189], raw[0x18a]);
    (version >= 3 && cpuid.0 != 0).then_some(cpuid)
}

/// The microcode SPL (the TCB's `microcode` byte) of one CPU stepping's first fixed microcode.
///
/// The SPL is the low byte of the microcode patch level, and patch levels are numbered per
/// stepping: Milan B1's fix is 0xDB while Milan-X (B2) is fixed at 0x44. One microcode floor per
/// product would either refuse a patched Milan-X or admit an unpatched Milan, so the per-stepping
/// floor applies when the report states its CPUID ([`minimum_tcb_for_report`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MicrocodeFloor {
    pub product: SnpProduct,
    /// CPUID family, model and stepping, as a version 3+ report states them.
    pub family: u8,
    pub model: u8,
    pub stepping: u8,
    pub part: &'static str,
    /// The first fixed microcode patch level (as `/proc/cpuinfo` shows it).
    pub patch_level: u32,
    /// Its low byte: the minimum `microcode` SPL.
    pub microcode: u8,
    /// Where the number comes from.
    pub source: &'static str,
}

const ENTRYSIGN: &str = "AMD-SB-3019 (CVE-2024-56161, microcode signature verification), fixed \
                         patch levels as fwupd lists them (plugins/cpu/fu-cpu-common.c, \
                         fu_cpu_amd_model_id_to_entry_sign_fixed_ucode_version)";
const RMP_INIT: &str = "AMD-SB-3020 (CVE-2025-0033, RMP initialization): Turin fixed at \
                        microcode 0x0B002150 with SNP SPL 0x04";

/// Per-stepping microcode floors. A stepping not listed here gets its product's floor from
/// [`default_minimum_tcb`], the lowest value of the listed steppings.
pub const MICROCODE_FLOORS: [MicrocodeFloor; 6] = [
    MicrocodeFloor {
        product: SnpProduct::Milan,
        family: 0x19,
        model: 0x01,
        stepping: 0x01,
        part: "Milan B1 (CPUID 00A00F11)",
        patch_level: 0x0A00_11DB,
        microcode: 0xDB,
        source: ENTRYSIGN,
    },
    MicrocodeFloor {
        product: SnpProduct::Milan,
        family: 0x19,
        model: 0x01,
        stepping: 0x02,
        part: "Milan B2, Milan-X (CPUID 00A00F12)",
        patch_level: 0x0A00_1244,
        microcode: 0x44,
        source: ENTRYSIGN,
    },
    MicrocodeFloor {
        product: SnpProduct::Genoa,
        family: 0x19,
        model: 0x11,
        stepping: 0x01,
        part: "Genoa B1 (CPUID 00A10F11)",
        patch_level: 0x0A10_1154,
        microcode: 0x54,
        source: ENTRYSIGN,
    },
    MicrocodeFloor {
        product: SnpProduct::Genoa,
        family: 0x19,
        model: 0x11,
        stepping: 0x02,
        part: "Genoa B2, Genoa-X (CPUID 00A10F12)",
        patch_level: 0x0A10_124F,
        microcode: 0x4F,
        source: ENTRYSIGN,
    },
    MicrocodeFloor {
        product: SnpProduct::Genoa,
        family: 0x19,
        model: 0xA0,
        stepping: 0x02,
        part: "Zen 4c family 19h model A0h stepping 2 (CPUID 00AA0F02)",
        patch_level: 0x0AA0_0219,
        microcode: 0x19,
        source: ENTRYSIGN,
    },
    MicrocodeFloor {
        product: SnpProduct::Turin,
        family: 0x1A,
        model: 0x02,
        stepping: 0x01,
        part: "Turin (family 1Ah model 02h stepping 1)",
        patch_level: 0x0B00_2150,
        microcode: 0x50,
        source: RMP_INIT,
    },
];

/// The floor of one stepping, when [`MICROCODE_FLOORS`] lists it.
pub fn microcode_floor(family: u8, model: u8, stepping: u8) -> Option<&'static MicrocodeFloor> {
    MICROCODE_FLOORS
        .iter()
        .find(|f| (f.family, f.model, f.stepping) == (family, model, stepping))
}

/// The default minimum TCB of a product: below it, a platform is known to lack a fix for an
/// advisory that breaks SEV-SNP's guarantees. Sources, per component:
///
/// | product | bootloader | tee | snp | microcode | fmc |
/// |---|---|---|---|---|---|
/// | Milan | 3 | 0 | 0x18 (24) | 0x44 (68) | - |
/// | Genoa | 7 | 0 | 0x17 (23) | 0x19 (25) | - |
/// | Turin | 1 | 1 | 0x04 | 0x00 | 1 |
///
/// - `snp`: AMD-SB-3019 (CVE-2024-56161, Feb 2025; the firmware that enforces the fixed
///   microcode signature check): Milan `TCB[SNP]` 0x18, Genoa 0x17 (the bulletin's values, as
///   microsoft/CCF#6812 and the Genoa fix SEV FW 1.55.40 quote them). Turin is not in that
///   bulletin; 0x04 is AMD-SB-3020's Turin fix (CVE-2025-0033), which tinfoil-go's Turin
///   default (`SnpSpl: 4`) also uses.
/// - `microcode`: AMD-SB-3019's fixed patch levels are per stepping ([`MICROCODE_FLOORS`]); the
///   product's floor is the lowest of its listed steppings (Milan: Milan-X 0x44; Genoa: 0x19 of
///   the Zen 4c parts; Turin: 0, because Turin Dense, model 11h, has no published value here),
///   so it never refuses a patched part of another stepping. [`minimum_tcb_for_report`] raises
///   it to the report's own stepping (Milan B1 0xDB, Genoa B1 0x54, ...).
/// - `bootloader`, `tee`, `fmc`: no bulletin names a floor. The values are the lowest that
///   peers ship as defaults for the product: Milan BL 3 / TEE 0 (Contrast's default minimum TCB
///   `{3, 0, 8, 115}`), Genoa BL 7 / TEE 0 and Turin FMC 1 / BL 1 / TEE 1 (tinfoil-go's
///   defaults). Every post-fix report seen in public is at or above them (Milan BL 4, Genoa BL
///   10, Turin FMC 1 / BL 3 / TEE 2).
///
/// Later bulletins raise the floors further (AMD-SB-3020: Genoa SNP 0x1B with microcode 0x56
/// per AMD-SB-3027; AMD-SB-3030/3034 later still); clouds lag behind them, so they are not the
/// default: a golden document can require them with `snp.minimum_tcb`.
pub const fn default_minimum_tcb(product: SnpProduct) -> Tcb {
    match product {
        SnpProduct::Milan => Tcb {
            bootloader: 3,
            tee: 0,
            snp: 0x18,
            microcode: 0x44,
            fmc: None,
        },
        SnpProduct::Genoa => Tcb {
            bootloader: 7,
            tee: 0,
            snp: 0x17,
            microcode: 0x19,
            fmc: None,
        },
        SnpProduct::Turin => Tcb {
            bootloader: 1,
            tee: 1,
            snp: 0x04,
            microcode: 0x00,
            fmc: Some(1),
        },
    }
}

/// The default minimum TCB for a report whose chain ended at the pinned root `root_name`
/// ([`crate::snp::VerifiedChain::root`]): `None` for roots that are not AMD's (test roots).
pub fn minimum_tcb_for_root(root_name: &str) -> Option<Tcb> {
    SnpProduct::from_root_name(root_name).map(default_minimum_tcb)
}

/// As [`minimum_tcb_for_root`], with the microcode floor of the report's own stepping when the
/// report states its CPUID (version 3 and later) and [`MICROCODE_FLOORS`] lists it.
///
/// `Ok(None)`: the root is not AMD's. `Err`: the report's CPUID names another product than the
/// ARK that certified its key (AMD issues VCEKs and VLEKs only under the product's own ARK, so
/// this is a forgery or a verifier bug, and no floor applies).
pub fn minimum_tcb_for_report(root_name: &str, report: &SnpReport) -> Result<Option<Tcb>, String> {
    let Some(product) = SnpProduct::from_root_name(root_name) else {
        return Ok(None);
    };
    let mut minimum = default_minimum_tcb(product);
    let Some((family, model, stepping)) = report_cpuid(report) else {
        return Ok(Some(minimum));
    };
    match SnpProduct::from_cpuid(family, model) {
        Some(stated) if stated != product => {
            return Err(format!(
                "the report's CPUID (family {family:#04x} model {model:#04x}) is {}, but its key \
                 chains to {root_name}",
                stated.name()
            ))
        }
        _ => {}
    }
    if let Some(floor) = microcode_floor(family, model, stepping) {
        minimum.microcode = minimum.microcode.max(floor.microcode);
    }
    Ok(Some(minimum))
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

/// True when the firmware masked the chip ID (the platform's MASK_CHIP_ID setting zeroes
/// CHIP_ID): a VCEK cannot then be matched to a chip, and the report says so.
pub fn chip_id_masked(report: &SnpReport) -> bool {
    report.fields.chip_id == [0; 64]
}

/// True when KEY_INFO bit 1 (MASK_CHIP_KEY) is set: the firmware says it did not sign with the
/// chip's key (the signature is zeros), so no VCEK or VLEK can vouch for the report.
pub fn chip_key_masked(report: &SnpReport) -> bool {
    report.raw()[0x48] & 0b10 != 0
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
    match (signing_key(report), &ext.hw_id, &ext.csp_id) {
        (SigningKey::Vcek, _, Some(csp)) => mismatches.push(format!(
            "report is VCEK-signed but the certificate is a VLEK issued to {csp}"
        )),
        (SigningKey::Vlek, Some(_), _) => {
            mismatches.push("report is VLEK-signed but the certificate is a chip's VCEK".into())
        }
        _ => {}
    }
    if chip_key_masked(report) {
        mismatches
            .push("KEY_INFO says MASK_CHIP_KEY: the firmware did not sign with a chip key".into());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A report that parses: version `version`, ECDSA P-384, this CPUID and reported TCB.
    fn report(version: u32, cpuid: (u8, u8, u8), tcb: [u8; 8]) -> SnpReport {
        let mut r = vec![0u8; 1184];
        r[0..4].copy_from_slice(&version.to_le_bytes());
        r[0x34..0x38].copy_from_slice(&1u32.to_le_bytes());
        for offset in [0x38, 0x180, 0x1e0, 0x1f0] {
            r[offset..offset + 8].copy_from_slice(&tcb);
        }
        if version >= 3 {
            (r[0x188], r[0x189], r[0x18a]) = cpuid;
        }
        // A chip ID (the `sev` crate guesses a version 2 report's generation from it).
        r[0x1a0..0x1e0].fill(0x11);
        SnpReport::parse(&r).unwrap()
    }

    /// TCB_VERSION bytes of Milan and Genoa: bootloader, tee, 4 reserved, snp, microcode.
    fn legacy_tcb(bl: u8, tee: u8, snp: u8, ucode: u8) -> [u8; 8] {
        [bl, tee, 0, 0, 0, 0, snp, ucode]
    }

    #[test]
    fn root_names_name_products_and_nothing_else() {
        for product in SnpProduct::ALL {
            assert_eq!(
                SnpProduct::from_root_name(product.root_name()),
                Some(product)
            );
            assert_eq!(
                minimum_tcb_for_root(product.root_name()),
                Some(default_minimum_tcb(product))
            );
        }
        let pinned: Vec<String> = crate::snp::amd_roots()
            .into_iter()
            .map(|r| r.name)
            .collect();
        for product in SnpProduct::ALL {
            assert!(
                pinned.iter().any(|n| n == product.root_name()),
                "{pinned:?}"
            );
        }
        for other in ["TEST-ONLY ARK", "ark-milan", "", "ARK-Venice"] {
            assert_eq!(minimum_tcb_for_root(other), None, "{other}");
        }
    }

    #[test]
    fn the_microcode_table_is_consistent_with_the_product_floors() {
        for floor in &MICROCODE_FLOORS {
            assert_eq!(
                SnpProduct::from_cpuid(floor.family, floor.model),
                Some(floor.product),
                "{}",
                floor.part
            );
            assert_eq!(floor.patch_level as u8, floor.microcode, "{}", floor.part);
            assert!(
                default_minimum_tcb(floor.product).microcode <= floor.microcode,
                "{}: the product floor must never refuse a patched stepping",
                floor.part
            );
        }
        assert_eq!(default_minimum_tcb(SnpProduct::Turin).fmc, Some(1));
        assert_eq!(default_minimum_tcb(SnpProduct::Milan).fmc, None);
    }

    #[test]
    fn the_report_stepping_raises_the_microcode_floor() {
        let post_fix = legacy_tcb(4, 0, 24, 219);
        let milan_b1 = report(3, (0x19, 0x01, 0x01), post_fix);
        let minimum = minimum_tcb_for_report("ARK-Milan", &milan_b1)
            .unwrap()
            .unwrap();
        assert_eq!(minimum.microcode, 0xDB);
        assert_eq!(minimum.snp, 0x18);
        let milan_x = report(3, (0x19, 0x01, 0x02), post_fix);
        assert_eq!(
            minimum_tcb_for_report("ARK-Milan", &milan_x)
                .unwrap()
                .unwrap()
                .microcode,
            0x44
        );
        // Version 2: no CPUID, the product's floor.
        let v2 = report(2, (0, 0, 0), post_fix);
        assert_eq!(
            minimum_tcb_for_report("ARK-Milan", &v2).unwrap(),
            Some(default_minimum_tcb(SnpProduct::Milan))
        );
        // Test roots have no default.
        assert_eq!(minimum_tcb_for_report("TEST-ONLY ARK", &milan_b1), Ok(None));
        // A Genoa CPUID under the Milan ARK is refused outright.
        let genoa = report(3, (0x19, 0x11, 0x01), post_fix);
        assert!(minimum_tcb_for_report("ARK-Milan", &genoa).is_err());
        assert_eq!(SnpProduct::from_report(&genoa), Some(SnpProduct::Genoa));
        assert_eq!(SnpProduct::from_report(&v2), None);
    }

    #[test]
    fn patched_platforms_pass_and_unpatched_ones_do_not() {
        // (product, CPUID, reported TCB, passes): values from public post- and pre-fix reports.
        let cases = [
            // Milan after AMD-SB-3019 (virtee/snphost#125): BL 4, SNP 24, microcode 219.
            ((0x19, 0x01, 0x01), legacy_tcb(4, 0, 24, 219), true),
            // Milan on Azure before it (Feb 2025): SNP 21, microcode 211.
            ((0x19, 0x01, 0x01), legacy_tcb(4, 0, 21, 211), false),
            // Milan with the fixed SNP firmware but the old microcode.
            ((0x19, 0x01, 0x01), legacy_tcb(4, 0, 24, 0xD5), false),
            // Genoa after it: BL 10, SNP 23, microcode 84.
            ((0x19, 0x11, 0x01), legacy_tcb(10, 0, 23, 84), true),
            // Genoa at tinfoil-go's old default: SNP 14, microcode 72.
            ((0x19, 0x11, 0x01), legacy_tcb(7, 0, 14, 72), false),
            // The TEST-ONLY signer's TCB (Contrast's old default) on Milan.
            ((0x19, 0x01, 0x01), legacy_tcb(3, 0, 8, 115), false),
            // Turin (fmc, bootloader, tee, snp, 3 reserved, microcode) as tinfoil saw it in 2026.
            ((0x1a, 0x02, 0x01), [1, 3, 2, 5, 0, 0, 0, 97], true),
            // Turin before AMD-SB-3020's SNP 0x04, and one without an FMC SPL.
            ((0x1a, 0x02, 0x01), [1, 3, 2, 3, 0, 0, 0, 97], false),
            ((0x1a, 0x02, 0x01), [0, 3, 2, 5, 0, 0, 0, 97], false),
        ];
        for (cpuid, tcb, passes) in cases {
            let report = report(3, cpuid, tcb);
            let product = SnpProduct::from_report(&report).unwrap();
            let minimum = minimum_tcb_for_report(product.root_name(), &report)
                .unwrap()
                .unwrap();
            let low = Tcb::from_sev(&report.fields.reported_tcb).below(&minimum);
            assert_eq!(low.is_empty(), passes, "{cpuid:?} {tcb:?}: {low:?}");
        }
    }

    #[test]
    fn kds_crl_urls() {
        assert_eq!(
            SnpProduct::Milan.kds_crl_url(SigningKey::Vcek).unwrap(),
            "https://kdsintf.amd.com/vcek/v1/Milan/crl"
        );
        assert_eq!(
            SnpProduct::Genoa.kds_crl_url(SigningKey::Vlek).unwrap(),
            "https://kdsintf.amd.com/vlek/v1/Genoa/crl"
        );
        assert_eq!(SnpProduct::Turin.kds_crl_url(SigningKey::None), None);
    }
}
