//! AMD KDS: the VCEK for a report's chip ID and reported TCB, the ASK/ARK (or ASVK/ARK) chain
//! and the ARK-signed CRL of the report's product.
//!
//! A version 3+ report names its product in its CPUID fields; a version 2 report does not, so
//! then the VCEK is looked for under each product (cache first), `--product` saving the guess.

use super::cache::{Key, Kind};
use super::fetch::{FetchError, Fetcher, Got, Item};
use super::Sources;
use cvm_attestation::snp::policy::{signing_key, SigningKey, SnpProduct, Tcb};
use cvm_attestation::snp::SnpReport;

#[derive(Debug, thiserror::Error)]
pub enum AmdError {
    #[error(
        "the report's chip ID is masked (MASK_CHIP_ID): AMD KDS cannot look its VCEK up; give \
         the VCEK with the evidence or --vcek"
    )]
    MaskedChipId,
    #[error(
        "the report is signed by a VLEK, which AMD KDS does not serve (it has only the ASVK/ARK \
         chain, /vlek/v1/{{product}}/cert_chain): the VLEK comes from the host's extended report, \
         which the agent's evidence carries; verify the evidence, or give the VLEK with --vcek"
    )]
    VlekSigned,
    #[error("the report names no signing key (KEY_INFO)")]
    NoKey,
}

/// The KDS hardware ID: the whole chip ID, or its first 8 bytes on Turin.
fn hwid(report: &SnpReport, product: SnpProduct) -> String {
    let chip = &report.fields.chip_id;
    match product {
        SnpProduct::Turin => hex::encode(&chip[..8]),
        _ => hex::encode(chip),
    }
}

/// The products to look under: `hint`, else the report's own, else all.
pub fn candidates(report: &SnpReport, hint: Option<SnpProduct>) -> Vec<SnpProduct> {
    match hint.or_else(|| SnpProduct::from_report(report)) {
        Some(product) => vec![product],
        None => SnpProduct::ALL.to_vec(),
    }
}

/// The VCEK for `report` under `product`.
pub fn vcek_item(
    sources: &Sources,
    report: &SnpReport,
    product: SnpProduct,
) -> Result<Item, AmdError> {
    match signing_key(report) {
        SigningKey::Vcek => {}
        SigningKey::Vlek => return Err(AmdError::VlekSigned),
        SigningKey::None => return Err(AmdError::NoKey),
    }
    if report.fields.chip_id.iter().all(|b| *b == 0) {
        return Err(AmdError::MaskedChipId);
    }
    let tcb = Tcb::from_sev(&report.fields.reported_tcb);
    let hwid = hwid(report, product);
    let mut query = format!(
        "blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={}",
        tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode
    );
    let mut tcb_key = format!(
        "{}-{}-{}-{}",
        tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode
    );
    if product == SnpProduct::Turin {
        let fmc = tcb.fmc.unwrap_or(0);
        query = format!("fmcSPL={fmc}&{query}");
        tcb_key = format!("{tcb_key}-{fmc}");
    }
    let name = product.name();
    Ok(Item {
        key: key(format!("amd/{name}/vcek/{hwid}-{tcb_key}")),
        kind: Kind::AmdVcek,
        url: format!("{}/vcek/v1/{name}/{hwid}?{query}", sources.kds),
        what: format!(
            "VCEK of {name} chip {}... at TCB {tcb}",
            &hwid[..16.min(hwid.len())]
        ),
    })
}

/// The ASK/ARK chain (VCEK reports) or ASVK/ARK chain (VLEK reports).
pub fn chain_item(sources: &Sources, product: SnpProduct, vlek: bool) -> Item {
    let name = product.name();
    let (path, kind, file) = if vlek {
        ("vlek", Kind::AmdVlekCertChain, "vlek_cert_chain")
    } else {
        ("vcek", Kind::AmdCertChain, "cert_chain")
    };
    Item {
        key: key(format!("amd/{name}/{file}")),
        kind,
        url: format!("{}/{path}/v1/{name}/cert_chain", sources.kds),
        what: format!("{name} {} chain", if vlek { "ASVK/ARK" } else { "ASK/ARK" }),
    }
}

/// The ARK-signed CRL for the product's ASK (or ASVK).
pub fn crl_item(sources: &Sources, product: SnpProduct, vlek: bool) -> Item {
    let name = product.name();
    let (path, kind, file) = if vlek {
        ("vlek", Kind::AmdVlekCrl, "vlek_crl")
    } else {
        ("vcek", Kind::AmdCrl, "crl")
    };
    Item {
        key: key(format!("amd/{name}/{file}")),
        kind,
        url: format!("{}/{path}/v1/{name}/crl", sources.kds),
        what: format!("{name} CRL ({path})"),
    }
}

fn key(path: String) -> Key {
    // Product names, hex and numbers only: always a valid key.
    Key::new(path).expect("AMD cache keys are plain paths")
}

/// The VCEK for `report`: cached under any candidate product, else fetched trying each in turn
/// (AMD KDS answers 404 under the wrong one).
pub async fn vcek(
    fetcher: &Fetcher,
    sources: &Sources,
    report: &SnpReport,
    hint: Option<SnpProduct>,
) -> Result<(SnpProduct, Got), VcekError> {
    let products = candidates(report, hint);
    let items: Vec<(SnpProduct, Item)> = products
        .iter()
        .map(|p| Ok((*p, vcek_item(sources, report, *p)?)))
        .collect::<Result<_, AmdError>>()?;
    for (product, item) in &items {
        if let Ok(Some(got)) = fetcher.cached(item) {
            return Ok((*product, got));
        }
    }
    let mut last = None;
    for (product, item) in &items {
        match fetcher.get(item).await {
            Ok(got) => return Ok((*product, got)),
            Err(e @ FetchError::NotFound { .. }) if items.len() > 1 => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.map_or(VcekError::Amd(AmdError::NoKey), VcekError::Fetch))
}

#[derive(Debug, thiserror::Error)]
pub enum VcekError {
    #[error(transparent)]
    Amd(#[from] AmdError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

/// The SNP report in a file's bytes: a bare report (binary or hex text), an Azure HCL report, or
/// the `sev_snp` section of evidence. `None`: not SNP.
pub fn report_of(bytes: &[u8]) -> anyhow::Result<Option<SnpReport>> {
    use anyhow::Context;
    let raw = if bytes.first() == Some(&b'{') {
        let evidence = cvm_attestation::Evidence::from_json(bytes)?;
        let Some(snp) = evidence.sev_snp else {
            return Ok(None);
        };
        match snp.hcl_report {
            Some(hcl) => {
                hcl_inner(hcl.as_slice())?.context("the HCL report holds no SNP report")?
            }
            None => snp.attestation_report.0,
        }
    } else if bytes.starts_with(b"HCLA") {
        match hcl_inner(bytes)? {
            Some(inner) => inner,
            None => return Ok(None),
        }
    } else if bytes.len() == cvm_attestation::snp::report::REPORT_LEN {
        bytes.to_vec()
    } else {
        match std::str::from_utf8(bytes)
            .ok()
            .and_then(|t| hex::decode(t.trim()).ok())
        {
            Some(decoded) if decoded.len() == cvm_attestation::snp::report::REPORT_LEN => decoded,
            _ => return Ok(None),
        }
    };
    Ok(Some(SnpReport::parse(&raw).context("the SNP report")?))
}

/// The SNP report inside an HCL report; `None` for a TDX one.
fn hcl_inner(bytes: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
    let hcl = cvm_attestation::azure::HclReport::parse(bytes)?;
    Ok(
        (hcl.report_type == cvm_attestation::azure::HclReportType::Snp)
            .then(|| hcl.hardware_report.to_vec()),
    )
}
