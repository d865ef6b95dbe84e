//! What `verify` (and `update-workload` and `unlock`, which verify first) asks of the cache: the
//! TDX collateral or the VCEK it was not given, the ASVK/ARK chain of a VLEK, and the AMD CRL when
//! cached, each with a note on where it came from for the check that used it.

use super::fetch::{FetchError, Fetcher, Freshness, Network};
use super::{amd, intel, SourceArgs, Sources};
use cvm_attestation::encoding::Bytes;
use cvm_attestation::snp::policy::{signing_key, SigningKey, SnpProduct};
use cvm_attestation::snp::SnpReport;
use cvm_attestation::tdx::TdxCollateral;
use cvm_attestation::verify::{Check, Status};
use cvm_attestation::VerificationReport;

/// Where a check's collateral came from (or why it is missing).
#[derive(Debug, Clone)]
pub struct Note {
    pub check: &'static str,
    pub text: String,
    /// Missing collateral the check needs: fail it.
    pub missing: bool,
}

/// The cache and services, as `verify` may use them.
pub struct Resolver {
    fetcher: Fetcher,
    sources: Sources,
    runtime: tokio::runtime::Runtime,
    /// The input as `collateral fetch` takes it (`--report FILE`), for hints.
    input: String,
    /// Why nothing is fetched, when nothing is.
    no_fetch: Option<&'static str>,
}

impl Resolver {
    /// With `at_pinned` (verify --at) cached entries of any age serve and nothing is fetched: the
    /// services only serve today's documents.
    pub fn new(
        args: &SourceArgs,
        offline: bool,
        at_pinned: bool,
        input: String,
    ) -> anyhow::Result<Self> {
        let (network, freshness, no_fetch) = match (offline, at_pinned) {
            (true, _) => (Network::Offline, Freshness::Any, Some("--offline")),
            (false, true) => (Network::Offline, Freshness::Any, Some("--at")),
            (false, false) => (
                Network::Online,
                Freshness::CurrentAt(super::fetch::now()),
                None,
            ),
        };
        Ok(Self {
            fetcher: args.fetcher(network, freshness)?,
            sources: args.sources(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            input,
            no_fetch,
        })
    }

    fn origin(&self, got: &[&super::fetch::Got]) -> String {
        let fetched = got
            .iter()
            .any(|g| g.origin == super::fetch::Origin::Fetched);
        let stale = got
            .iter()
            .filter_map(|g| g.entry.stale_at())
            .min()
            .map(|t| super::show::time(Some(t)))
            .unwrap_or_else(|| "never".into());
        format!(
            "{} ({}; current until {stale})",
            if fetched { "fetched" } else { "cache" },
            self.fetcher.cache.root().display()
        )
    }

    fn missing(&self, check: &'static str, error: &FetchError) -> Note {
        let how = match self.no_fetch {
            Some(why) => format!(
                "not fetched ({why}): run `cvm-cli collateral fetch {}` where the services are \
                 reachable, or `cvm-cli collateral import BUNDLE` with a bundle from `cvm-cli \
                 collateral export`",
                self.input
            ),
            None => "fetching it failed".into(),
        };
        Note {
            check,
            text: format!("collateral missing: {error}; {how}"),
            missing: true,
        }
    }

    /// The TDX collateral for `quote`: cached (current), else the evidence's (`carried`), else
    /// fetched. `None` with a note when there is none to give.
    pub fn tdx(&self, quote: &[u8], carried: bool) -> (Option<TdxCollateral>, Note) {
        let note = |text: String| Note {
            check: "tdx.collateral",
            text,
            missing: false,
        };
        let Ok(needs) = intel::needs(quote) else {
            return (
                None,
                note("no collateral looked up: the quote does not parse".into()),
            );
        };
        let items = intel::items(&self.sources, &needs);
        let cached: Vec<_> = items
            .iter()
            .filter_map(|item| self.fetcher.cached(item).ok().flatten())
            .collect();
        if cached.len() == items.len() {
            let text = self.origin(&cached.iter().collect::<Vec<_>>());
            return (
                Some(intel::assemble(&cached)),
                note(format!("collateral: {text}")),
            );
        }
        if carried {
            return (None, note("collateral: evidence".into()));
        }
        let fetched =
            self.runtime
                .block_on(intel::collateral(&self.fetcher, &self.sources, &needs));
        match fetched {
            Ok((collateral, got)) => {
                let text = self.origin(&got.iter().collect::<Vec<_>>());
                (Some(collateral), note(format!("collateral: {text}")))
            }
            Err(e) => (None, self.missing("tdx.collateral", &e)),
        }
    }

    /// The VCEK (DER) and the ASK/ARK chain for a report that came without one.
    pub fn vcek(&self, report: &SnpReport) -> Result<(Vec<u8>, Vec<Bytes>, Note), Note> {
        let (product, vcek) = self
            .runtime
            .block_on(amd::vcek(&self.fetcher, &self.sources, report, None))
            .map_err(|e| match e {
                amd::VcekError::Fetch(e) => self.missing("snp.chain", &e),
                amd::VcekError::Amd(e) => Note {
                    check: "snp.chain",
                    text: format!("no VCEK: {e}"),
                    missing: true,
                },
            })?;
        let mut chain = Vec::new();
        let mut got = vec![vcek.clone()];
        let item = amd::chain_item(&self.sources, product, false);
        if let Ok(ask_ark) = self.runtime.block_on(self.fetcher.get(&item)) {
            if let Ok(certs) =
                cvm_attestation::snp::certs::parse_pem_chain(ask_ark.entry.body.as_slice())
            {
                chain.extend(
                    certs
                        .iter()
                        .filter_map(|c| c.to_der().ok())
                        .map(Bytes::from),
                );
            }
            got.push(ask_ark);
        }
        let text = format!("VCEK: {}", self.origin(&got.iter().collect::<Vec<_>>()));
        Ok((
            vcek.entry.body.0,
            chain,
            Note {
                check: "snp.chain",
                text,
                missing: false,
            },
        ))
    }

    /// The ASVK/ARK chain for a VLEK-signed report (none is built in): cached, else fetched
    /// from KDS `/vlek/v1/{product}/cert_chain`. The product is the report's, else the one the
    /// VLEK's issuer (`SEV-VLEK-{product}`) names.
    pub fn vlek_chain(&self, report: &SnpReport, vlek: &[u8]) -> Result<(Vec<Bytes>, Note), Note> {
        let product = SnpProduct::from_report(report)
            .or_else(|| product_of_issuer(vlek))
            .ok_or_else(|| Note {
                check: "snp.chain",
                text: "no ASVK/ARK chain: neither the report nor the VLEK's issuer names the \
                       product"
                    .into(),
                missing: true,
            })?;
        let item = amd::chain_item(&self.sources, product, true);
        let got = self
            .runtime
            .block_on(self.fetcher.get(&item))
            .map_err(|e| self.missing("snp.chain", &e))?;
        let certs = cvm_attestation::snp::certs::parse_pem_chain(got.entry.body.as_slice())
            .unwrap_or_default();
        let chain = certs
            .iter()
            .filter_map(|c| c.to_der().ok())
            .map(Bytes::from)
            .collect();
        let text = format!("ASVK/ARK chain: {}", self.origin(&[&got]));
        Ok((
            chain,
            Note {
                check: "snp.chain",
                text,
                missing: false,
            },
        ))
    }

    /// The cached AMD CRL for the report's key, never fetched (an ARK-signed CRL is optional:
    /// `collateral fetch` gets it).
    pub fn amd_crl(&self, report: &SnpReport) -> Option<(Vec<u8>, Note)> {
        let vlek = match signing_key(report) {
            SigningKey::Vcek => false,
            SigningKey::Vlek => true,
            SigningKey::None => return None,
        };
        let products = match SnpProduct::from_report(report) {
            Some(product) => vec![product],
            None => SnpProduct::ALL.to_vec(),
        };
        products.into_iter().find_map(|product| {
            let item = amd::crl_item(&self.sources, product, vlek);
            let got = self.fetcher.cached(&item).ok().flatten()?;
            let text = format!("CRL: {}", self.origin(&[&got]));
            Some((
                got.entry.body.0,
                Note {
                    check: "snp.crl",
                    text,
                    missing: false,
                },
            ))
        })
    }
}

/// The product a VLEK's issuer names (AMD's ASVKs are `SEV-VLEK-Milan`, `SEV-VLEK-Genoa`, ...).
fn product_of_issuer(vlek: &[u8]) -> Option<SnpProduct> {
    let cert = cvm_attestation::snp::certs::parse_certificate(vlek).ok()?;
    let entry = cert
        .issuer_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()?;
    let issuer = String::from_utf8_lossy(entry.data().as_slice()).into_owned();
    SnpProduct::ALL
        .into_iter()
        .find(|p| issuer.ends_with(&format!("-{}", p.name())))
}

/// Whether `chain` holds the certificate that issued `leaf` (by name; `verify` checks the
/// signature).
fn issuer_given(leaf: &[u8], chain: &[Bytes]) -> bool {
    use cvm_attestation::snp::certs::parse_certificate;
    let Ok(leaf) = parse_certificate(leaf) else {
        return true; // `snp.chain` says why it does not parse
    };
    chain.iter().any(|der| {
        parse_certificate(der.as_slice()).is_ok_and(|c| {
            c.subject_name().try_cmp(leaf.issuer_name()).ok() == Some(std::cmp::Ordering::Equal)
        })
    })
}

/// For a VLEK-signed report whose chain lacks the VLEK's ASVK: adds the ASVK/ARK chain from the
/// cache (or KDS) to `chain`; the note says where it came from, or fails `snp.chain` naming it.
pub fn complete_vlek_chain(
    resolver: &Resolver,
    report: &[u8],
    vlek: &[u8],
    chain: &mut Vec<Bytes>,
) -> Vec<Note> {
    let Some(parsed) = parse_report(report) else {
        return Vec::new();
    };
    if signing_key(&parsed) != SigningKey::Vlek || vlek.is_empty() || issuer_given(vlek, chain) {
        return Vec::new();
    }
    match resolver.vlek_chain(&parsed, vlek) {
        Ok((found, note)) => {
            chain.extend(found);
            vec![note]
        }
        Err(note) => vec![note],
    }
}

/// The SNP report in `bytes`: a bare report, or the one inside an Azure HCL report.
fn parse_report(bytes: &[u8]) -> Option<SnpReport> {
    match cvm_attestation::azure::HclReport::parse(bytes) {
        Ok(hcl) => SnpReport::parse(hcl.hardware_report).ok(),
        Err(_) => SnpReport::parse(bytes).ok(),
    }
}

/// Appends each note to its check's reason; a note whose check did not run becomes a check of its
/// own (failing when the collateral is missing).
pub fn annotate(report: &mut VerificationReport, notes: Vec<Note>) {
    for note in notes {
        match report.checks.iter_mut().find(|c| c.name == note.check) {
            Some(check) => {
                check.reason = format!("{} [{}]", check.reason, note.text);
                if note.missing {
                    check.status = Status::Fail;
                }
            }
            None => report.checks.push(Check {
                name: note.check.into(),
                status: if note.missing {
                    Status::Fail
                } else {
                    Status::Skip
                },
                reason: note.text,
                expected: None,
                actual: None,
            }),
        }
    }
    report.verified = report.verified && report.checks.iter().all(|c| c.status != Status::Fail);
}

/// Fills what evidence lacks before `verify` (a VCEK, TDX collateral, a cached AMD CRL) and
/// returns where each came from. Collateral the caller gave (`--collateral`, `--amd-crl`) wins.
pub fn prepare_evidence(
    resolver: &Resolver,
    evidence: &mut cvm_attestation::Evidence,
    options: &mut cvm_attestation::VerifyOptions,
) -> Vec<Note> {
    let mut notes = Vec::new();
    if let Some(tdx) = &evidence.tdx {
        if options.tdx_collateral.is_none() {
            let (collateral, note) = resolver.tdx(tdx.quote.as_slice(), tdx.collateral.is_some());
            options.tdx_collateral = collateral;
            notes.push(note);
        } else {
            notes.push(Note {
                check: "tdx.collateral",
                text: "collateral: file".into(),
                missing: false,
            });
        }
    }
    if let Some(snp) = &mut evidence.sev_snp {
        let report_bytes = match &snp.hcl_report {
            Some(hcl) => hcl.as_slice(),
            None => snp.attestation_report.as_slice(),
        };
        let Some(report) = parse_report(report_bytes) else {
            return notes;
        };
        if snp.vek_cert.0.is_empty() {
            match resolver.vcek(&report) {
                Ok((vek, chain, note)) => {
                    snp.vek_cert = vek.into();
                    snp.cert_chain.extend(chain);
                    notes.push(note);
                }
                Err(note) => notes.push(note),
            }
        } else {
            let vlek = signing_key(&report) == SigningKey::Vlek;
            notes.push(Note {
                check: "snp.chain",
                text: format!("{}: evidence", if vlek { "VLEK" } else { "VCEK" }),
                missing: false,
            });
            let report_bytes = report.raw().to_vec();
            notes.extend(complete_vlek_chain(
                resolver,
                &report_bytes,
                snp.vek_cert.as_slice(),
                &mut snp.cert_chain,
            ));
        }
        if options.amd_crls.is_empty() {
            if let Some((crl, note)) = resolver.amd_crl(&report) {
                options.amd_crls.push(crl);
                notes.push(note);
            }
        }
    }
    notes
}

/// `verify --report` on an SNP or HCL report given without a VCEK: the VCEK and chain from the
/// cache (or AMD KDS), the cached CRL, then the usual checks.
pub fn bare_report(
    report: &[u8],
    intermediates: &[Bytes],
    minimum_tcb: Option<cvm_attestation::snp::policy::Tcb>,
    options: &cvm_attestation::VerifyOptions,
    resolver: &Resolver,
) -> VerificationReport {
    use cvm_attestation::verify::verify_snp_report;
    let expectations = cvm_attestation::golden::GoldenSnp {
        vmpls: vec![0, 1, 2, 3],
        minimum_tcb,
        ..Default::default()
    };
    let Some(parsed) = parse_report(report) else {
        // The report's own check says why it does not parse.
        return verify_snp_report(report, &[], intermediates, &expectations, options);
    };
    let (vek, chain, note) = match resolver.vcek(&parsed) {
        Ok(found) => found,
        Err(note) => {
            let mut failed = VerificationReport {
                verified: false,
                platform: "sev-snp report".into(),
                checks: Vec::new(),
            };
            annotate(&mut failed, vec![note]);
            return failed;
        }
    };
    let mut notes = vec![note];
    let mut options = options.clone();
    if options.amd_crls.is_empty() {
        if let Some((crl, crl_note)) = resolver.amd_crl(&parsed) {
            options.amd_crls.push(crl);
            notes.push(crl_note);
        }
    }
    let mut intermediates = intermediates.to_vec();
    intermediates.extend(chain);
    let mut verified = verify_snp_report(report, &vek, &intermediates, &expectations, &options);
    annotate(&mut verified, notes);
    verified
}
