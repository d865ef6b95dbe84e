//! `cvm-cli verify`: evidence against a golden measurement, or a bare SEV-SNP / Azure HCL report
//! against AMD's chain. Exit status 0 only when every check passes.

use crate::collateral::resolve::{self, Resolver};
use crate::collateral::ResolveArgs;
use crate::golden::parse_min_tcb;
use anyhow::{bail, Context, Result};
use clap::Args;
use cvm_attestation::encoding::{decode_base64, Bytes};
use cvm_attestation::golden::{GoldenSnp, GoldenTdx};
use cvm_attestation::snp::certs::{parse_certificate, parse_pem_chain};
use cvm_attestation::snp::TrustedRoot;
use cvm_attestation::tdx::{decode_hex_quote, looks_like_td_quote, TdxCollateral};
use cvm_attestation::verify::{verify_snp_report, verify_tdx_quote};
use cvm_attestation::{verify, Evidence, GoldenMeasurement, VerificationReport, VerifyOptions};
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    cvm-cli verify --collaterals evidence.json --golden golden.json --nonce 0011aabb...\n  \
    cvm-cli verify --report report.bin --vcek vcek.der --at 2025-06-01T00:00:00Z\n  \
    cvm-cli verify --report tdx_quote --collateral collateral.json --at 2025-07-01T00:00:00Z\n\n\
    Exit status: 0 when every check passes, 1 when any fails, 2 when the input cannot be read.")]
pub struct VerifyArgs {
    /// Evidence ("collaterals") JSON from an agent, ours or the predecessor's.
    #[arg(
        long,
        alias = "evidence",
        requires = "golden",
        conflicts_with_all = ["report", "host"]
    )]
    collaterals: Option<PathBuf>,
    /// A running agent (HOST[:PORT], default port 8000): fetch evidence over a fresh random
    /// nonce and verify it here.
    #[arg(long, requires = "golden", conflicts_with = "report")]
    host: Option<String>,
    /// Save the fetched evidence (with --host).
    #[arg(long, requires = "host")]
    save_evidence: Option<PathBuf>,
    /// Golden measurement JSON (ours or the predecessor's) to compare the evidence with.
    #[arg(long, alias = "golden_measurement")]
    golden: Option<PathBuf>,
    /// A bare SNP report (1184 bytes), an Azure HCL report, a TDX quote (v4 or v5, binary or hex
    /// with or without 0x), or an evidence file to take the report and VCEK (or the TD quote)
    /// from.
    #[arg(long)]
    report: Option<PathBuf>,
    /// TDX collateral JSON (TCB info, QE identity, CRLs; the shape of dcap-qvl's collateral
    /// files) for a TD quote, or for evidence that carries none.
    #[arg(long, value_name = "FILE")]
    collateral: Option<PathBuf>,
    /// TDX TCB statuses to accept for a bare TD quote (repeatable; default UpToDate), e.g.
    /// SWHardeningNeeded, ConfigurationNeeded, OutOfDate.
    #[arg(long = "tcb-status", value_name = "STATUS",
          value_parser = clap::builder::PossibleValuesParser::new(cvm_attestation::tdx::TcbStatus::KNOWN))]
    tcb_statuses: Vec<String>,
    /// Minimum SEV-SNP TCB for --report: a product (milan, genoa, turin) or
    /// `bootloader=N,tee=N,snp=N,microcode=N[,fmc=N]`. Default: AMD's published minimum for
    /// the product that signed the report (docs/golden.md).
    #[arg(
        long = "min-tcb",
        value_name = "PRODUCT|COMPONENTS",
        requires = "report"
    )]
    min_tcb: Option<String>,
    /// VCEK or VLEK certificate (DER or PEM) for --report.
    #[arg(long, requires = "report")]
    vcek: Option<PathBuf>,
    /// PEM file with intermediates (ASK or ASVK, optionally the ARK, which is ignored: roots are
    /// pinned).
    #[arg(long)]
    chain: Option<PathBuf>,
    /// The nonce sent to the agent (hex or base64). Required for evidence files: without it a
    /// replayed document could pass, and `nonce` fails (unless --no-freshness).
    #[arg(long)]
    nonce: Option<String>,
    /// Accept evidence without checking its nonce (e.g. a document saved long ago). The report
    /// then says FRESHNESS NOT CHECKED and a warning is printed: a replay would pass.
    #[arg(long, conflicts_with_all = ["nonce", "host"])]
    no_freshness: bool,
    /// Check certificate validity at this time (RFC 3339 UTC or Unix seconds) instead of now.
    #[arg(long)]
    at: Option<String>,
    /// Also trust this TEST-ONLY root certificate (PEM; further certificates in the file are
    /// intermediates it signed, e.g. a test CA's AK-certificate issuer), for every trust basis
    /// (AMD, Intel, Google AK certificates, AWS Nitro). Reports say when a test root was used.
    #[arg(long = "test-root", value_name = "PEM")]
    test_roots: Vec<PathBuf>,
    /// AMD's CRL for the product (DER or PEM, from KDS /vcek/v1/{Milan,Genoa,Turin}/crl):
    /// `snp.crl` then fails if it revokes the ASK/ASVK; repeatable. Without it `snp.crl` is
    /// skipped.
    #[arg(long = "amd-crl", value_name = "CRL")]
    amd_crls: Vec<PathBuf>,
    /// For VMs without a TEE (local QEMU): the AK public key recorded when the VM was created
    /// (file with the base64 or raw TPMT_PUBLIC).
    #[arg(long, value_name = "FILE")]
    trusted_ak: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    sources: ResolveArgs,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

pub fn options(
    at: Option<&str>,
    nonce: Option<&str>,
    test_roots: &[PathBuf],
    trusted_ak: Option<&Path>,
) -> Result<VerifyOptions> {
    let mut options = match at {
        Some(at) => VerifyOptions::new(crate::time::parse_time(at)?),
        None => VerifyOptions::now(),
    };
    if let Some(nonce) = nonce {
        options = options.with_nonce(parse_nonce(nonce)?);
    }
    for path in test_roots {
        let bytes = read(path)?;
        let mut certificates = match parse_pem_chain(&bytes) {
            Ok(chain) if !chain.is_empty() => chain,
            _ => vec![parse_certificate(&bytes).with_context(|| format!("{}", path.display()))?],
        };
        let root = TrustedRoot {
            name: path.display().to_string(),
            certificate: certificates.remove(0),
            test_only: true,
        };
        options = options
            .with_test_roots([root.clone()])
            .with_tdx_test_roots([root.clone()])
            .with_nitro_test_roots([root.clone()])
            .with_gcp_test_roots([root]);
        for intermediate in certificates {
            options.gcp_intermediates.push(intermediate.to_der()?);
        }
    }
    if let Some(path) = trusted_ak {
        let bytes = read(path)?;
        let text = String::from_utf8_lossy(&bytes);
        options = options.with_trusted_ak(decode_base64(text.trim()).unwrap_or(bytes));
    }
    Ok(options)
}

/// A nonce in hex or base64.
pub fn parse_nonce(text: &str) -> Result<Vec<u8>> {
    let text = text.trim();
    let bytes = if text.len() % 2 == 0 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text)?
    } else {
        decode_base64(text).with_context(|| format!("nonce {text:?} is neither hex nor base64"))?
    };
    cvm_attestation::evidence::check_nonce(&bytes)?;
    Ok(bytes)
}

pub fn run(args: VerifyArgs) -> Result<bool> {
    let mut options = verify_options(&args)?;
    let input = match (&args.host, &args.collaterals, &args.report) {
        (Some(host), _, _) => format!("--host {host}"),
        (_, Some(path), _) => format!("--evidence {}", path.display()),
        (_, _, Some(path)) => format!("--report {}", path.display()),
        _ => String::new(),
    };
    let resolver = args.sources.resolver(args.at.is_some(), input)?;
    let json = args.json || crate::output::json();
    if let Some(host) = &args.host {
        let golden = args.golden.as_deref().context("--host needs --golden")?;
        let output = match json {
            true => ReportOutput::Json,
            false => ReportOutput::Text,
        };
        let target = Target {
            host,
            golden,
            output,
            resolver: &resolver,
        };
        return verify_running(target, options, args.save_evidence.as_deref(), None)
            .map(|verdict| verdict.verified);
    }
    let report = match (&args.collaterals, &args.report) {
        (Some(evidence), None) => {
            let golden = args
                .golden
                .as_ref()
                .context("--collaterals needs --golden")?;
            verify_evidence_file(evidence, golden, &mut options, &resolver)?
        }
        (None, Some(report)) => verify_report_file(&args, report, &mut options, &resolver)?,
        _ => bail!(
            "give --host HOST --golden FILE, --collaterals FILE --golden FILE, or --report FILE"
        ),
    };
    print_report(&report, json)?;
    Ok(report.verified)
}

/// The options `verify`'s flags ask for: time, nonce, test roots, trusted AK, AMD CRLs,
/// freshness, TDX collateral.
fn verify_options(args: &VerifyArgs) -> Result<VerifyOptions> {
    let mut options = options(
        args.at.as_deref(),
        args.nonce.as_deref(),
        &args.test_roots,
        args.trusted_ak.as_deref(),
    )?;
    for path in &args.amd_crls {
        options
            .amd_crls
            .push(der_or_pem_crl(&read(path)?).with_context(|| format!("{}", path.display()))?);
    }
    if args.no_freshness {
        eprintln!(
            "WARNING: --no-freshness: the evidence's nonce is not checked, so an old or replayed \
             document can pass. Do not use this to decide whether to trust a running VM."
        );
        options = options.without_freshness();
    }
    if let Some(path) = &args.collateral {
        let collateral = TdxCollateral::from_json(&read(path)?)
            .with_context(|| format!("{}", path.display()))?;
        options = options.with_tdx_collateral(collateral);
    }
    Ok(options)
}

/// `--collaterals FILE --golden FILE`: the evidence, completed from the cache, against the golden.
fn verify_evidence_file(
    path: &Path,
    golden_path: &Path,
    options: &mut VerifyOptions,
    resolver: &Resolver,
) -> Result<VerificationReport> {
    let mut evidence =
        Evidence::from_json(&read(path)?).with_context(|| format!("{}", path.display()))?;
    let golden = GoldenMeasurement::from_json(&read(golden_path)?)
        .with_context(|| format!("{}", golden_path.display()))?;
    let notes = resolve::prepare_evidence(resolver, &mut evidence, options);
    let mut report = verify(&evidence, &golden, options);
    resolve::annotate(&mut report, notes);
    Ok(report)
}

/// `--report FILE`: a TD quote against its TCB statuses, or an SNP/HCL report against AMD's chain.
fn verify_report_file(
    args: &VerifyArgs,
    path: &Path,
    options: &mut VerifyOptions,
    resolver: &Resolver,
) -> Result<VerificationReport> {
    let bytes = read(path)?;
    crate::inspect::check_report_input(path, &bytes)?;
    let Some((quote, collateral)) = td_quote_of(&bytes)? else {
        return verify_bare_report(
            bytes,
            args.vcek.as_deref(),
            args.chain.as_deref(),
            args.min_tcb.as_deref().map(parse_min_tcb).transpose()?,
            options,
            resolver,
        );
    };
    let mut expectations = GoldenTdx::default();
    if !args.tcb_statuses.is_empty() {
        expectations.tcb_statuses = args
            .tcb_statuses
            .iter()
            .map(|s| s.as_str().into())
            .collect();
    }
    let mut notes = Vec::new();
    if options.tdx_collateral.is_none() {
        let (found, note) = resolver.tdx(&quote, collateral.is_some());
        options.tdx_collateral = found;
        notes.push(note);
    }
    let mut report = verify_tdx_quote(&quote, collateral.as_ref(), &expectations, options);
    resolve::annotate(&mut report, notes);
    Ok(report)
}

/// A TD quote in `bytes` (binary, or hex text with or without `0x` and surrounding whitespace;
/// detected by version 4 or 5, key type 2 and TEE type 0x81), or in an evidence file's `tdx`
/// section (with its collateral, when it carries one).
pub(crate) fn td_quote_of(bytes: &[u8]) -> Result<Option<(Vec<u8>, Option<TdxCollateral>)>> {
    if looks_like_td_quote(bytes) {
        return Ok(Some((bytes.to_vec(), None)));
    }
    if let Some(decoded) = decode_hex_quote(bytes) {
        return Ok(Some((decoded, None)));
    }
    if bytes.first() == Some(&b'{') || bytes.first() == Some(&b'"') {
        let evidence = Evidence::from_json(bytes)?;
        if let Some(tdx) = evidence.tdx {
            return Ok(Some((tdx.quote.0, tdx.collateral)));
        }
    }
    Ok(None)
}

fn verify_bare_report(
    bytes: Vec<u8>,
    vcek: Option<&Path>,
    chain: Option<&Path>,
    minimum_tcb: Option<cvm_attestation::snp::policy::Tcb>,
    options: &VerifyOptions,
    resolver: &Resolver,
) -> Result<VerificationReport> {
    let mut intermediates: Vec<Bytes> = Vec::new();
    if let Some(chain) = chain {
        for cert in parse_pem_chain(&read(chain)?)? {
            intermediates.push(cert.to_der()?.into());
        }
    }
    // An evidence file carries its report and VCEK.
    let (report, vek) = if bytes.first() == Some(&b'{') || bytes.first() == Some(&b'"') {
        let evidence = Evidence::from_json(&bytes)?;
        let snp = evidence
            .sev_snp
            .context("the evidence file has no sev_snp section")?;
        intermediates.extend(snp.cert_chain);
        let report = snp.hcl_report.unwrap_or(snp.attestation_report).0;
        (report, snp.vek_cert.0)
    } else if vcek.is_none() {
        // No VCEK given: the cache's (or AMD KDS's) for the report's chip and TCB.
        let report = hex_text_or_binary(bytes);
        return Ok(crate::collateral::resolve::bare_report(
            &report,
            &intermediates,
            minimum_tcb,
            options,
            resolver,
        ));
    } else {
        let vcek = vcek.context("--report with a binary report needs --vcek FILE")?;
        let vcek_bytes = read(vcek)?;
        // A PEM bundle (VCEK first, then ASK/ARK) is accepted: the rest become intermediates.
        let bundle = parse_pem_chain(&vcek_bytes).unwrap_or_default();
        let vek = match bundle.split_first() {
            Some((leaf, rest)) => {
                for cert in rest {
                    intermediates.push(cert.to_der()?.into());
                }
                leaf.to_der()?
            }
            None => parse_certificate(&vcek_bytes)?.to_der()?,
        };
        (hex_text_or_binary(bytes), vek)
    };
    let expectations = GoldenSnp {
        vmpls: vec![0, 1, 2, 3],
        minimum_tcb,
        ..GoldenSnp::default()
    };
    // A VLEK given without its ASVK: the chain from the cache (or KDS).
    let notes = resolve::complete_vlek_chain(resolver, &report, &vek, &mut intermediates);
    let mut verified = verify_snp_report(&report, &vek, &intermediates, &expectations, options);
    resolve::annotate(&mut verified, notes);
    Ok(verified)
}

/// What verifying a running agent established.
pub struct HostVerdict {
    pub verified: bool,
    /// The TLS key the verified evidence binds: pin it for anything sent afterwards.
    pub tls_key: Option<[u8; 32]>,
    /// The checks, for a caller that prints them inside its own JSON result.
    pub report: VerificationReport,
}

/// Where a running agent's report goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutput {
    Text,
    Json,
    /// Not printed: the caller puts it into its own result (`--json`).
    Returned,
}

impl ReportOutput {
    /// Text, or with `--json` returned for the caller's one JSON document.
    pub fn for_caller() -> Self {
        match crate::output::json() {
            true => Self::Returned,
            false => Self::Text,
        }
    }
}

/// A running agent to verify, against what, where the report goes and where collateral the
/// evidence lacks comes from.
pub struct Target<'a> {
    pub host: &'a str,
    pub golden: &'a Path,
    pub output: ReportOutput,
    pub resolver: &'a Resolver,
}

/// Verifies a running agent over a fresh nonce and prints the report (for `update-workload`,
/// which verifies before it uploads, then sends its token only to the verified TLS key).
pub fn verify_host_with(target: Target<'_>, trusted_ak: Option<&Path>) -> Result<HostVerdict> {
    let options = options(None, None, &[], trusted_ak)?;
    verify_running(target, options, None, None)
}

/// [`verify_host_with`] with collateral from the default sources (the cache, else the services):
/// the deploy commands' attestation gate, which takes no collateral flags.
pub fn verify_host(
    host: &str,
    golden: &Path,
    trusted_ak: Option<&Path>,
    output: ReportOutput,
) -> Result<HostVerdict> {
    let resolver = ResolveArgs::default().resolver(false, format!("--host {host}"))?;
    let target = Target {
        host,
        golden,
        output,
        resolver: &resolver,
    };
    verify_host_with(target, trusted_ak)
}

/// Changes the golden measurement once the evidence is known (e.g. `unlock`: the workload a
/// locked VM must show is its empty generation, whose token salt the evidence carries).
pub type AdjustGolden<'a> = &'a dyn Fn(&mut GoldenMeasurement, &Evidence) -> Result<()>;

/// [`verify_host_with`] with the golden adjusted to the evidence before the checks run.
pub fn verify_host_adjusted(
    target: Target<'_>,
    trusted_ak: Option<&Path>,
    adjust: AdjustGolden<'_>,
) -> Result<HostVerdict> {
    let options = options(None, None, &[], trusted_ak)?;
    verify_running(target, options, None, Some(adjust))
}

fn verify_running(
    target: Target<'_>,
    options: VerifyOptions,
    save_evidence: Option<&Path>,
    adjust: Option<AdjustGolden<'_>>,
) -> Result<HostVerdict> {
    let golden_path = target.golden;
    let mut golden = GoldenMeasurement::from_json(&read(golden_path)?)
        .with_context(|| format!("{}", golden_path.display()))?;
    let mut nonce = [0u8; 32];
    openssl::rand::rand_bytes(&mut nonce)?;
    let mut options = options.with_nonce(nonce.to_vec());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (evidence_bytes, tls_key) = runtime.block_on(fetch_evidence(target.host, &nonce))?;
    // Over TLS the evidence must bind the key of this very connection.
    options.expected_tls_key = tls_key;
    if let Some(path) = save_evidence {
        std::fs::write(path, &evidence_bytes)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let mut evidence = Evidence::from_json(&evidence_bytes).context("the agent's evidence")?;
    if let Some(adjust) = adjust {
        adjust(&mut golden, &evidence)?;
    }
    let notes = resolve::prepare_evidence(target.resolver, &mut evidence, &mut options);
    let mut report = verify(&evidence, &golden, &options);
    resolve::annotate(&mut report, notes);
    if target.output != ReportOutput::Returned {
        print_report(&report, target.output == ReportOutput::Json)?;
    }
    Ok(HostVerdict {
        verified: report.verified,
        tls_key: tls_key.filter(|_| report.verified),
        report,
    })
}

/// GET /collaterals/{nonce} from an agent: the body and the connection's TLS key.
pub(crate) async fn fetch_evidence(
    host: &str,
    nonce: &[u8],
) -> Result<(Vec<u8>, Option<[u8; 32]>)> {
    let url = format!(
        "{}/collaterals/{}",
        crate::http::base_url(host, 8000)?,
        hex::encode(nonce)
    );
    let response = crate::http::request(
        "GET",
        &url,
        &[],
        Vec::new(),
        cvm_attestation::evidence::MAX_EVIDENCE_BYTES,
        std::time::Duration::from_secs(60),
        None,
    )
    .await?;
    if response.status != 200 {
        bail!(
            "{url}: HTTP {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    Ok((response.body, response.tls_key))
}

/// Reports are also distributed as hex text (e.g. virtee's test data).
fn hex_text_or_binary(bytes: Vec<u8>) -> Vec<u8> {
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| hex::decode(text.trim()).ok())
        .unwrap_or(bytes)
}

pub fn print_report(report: &VerificationReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

/// A CRL file as DER, whether it came as DER or PEM.
fn der_or_pem_crl(bytes: &[u8]) -> Result<Vec<u8>> {
    if bytes.starts_with(b"-----BEGIN") {
        return Ok(openssl::x509::X509Crl::from_pem(bytes)
            .context("not a PEM CRL")?
            .to_der()?);
    }
    Ok(bytes.to_vec())
}
