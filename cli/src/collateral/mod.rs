//! `cvm-cli collateral`: AMD's and Intel's collateral (VCEKs, certificate chains, CRLs, TCB info,
//! QE identities) fetched for a report, quote or evidence, kept in one on-disk cache that
//! `verify` reads, and moved to offline verifiers as one bundle file. See docs/collateral.md.

mod amd;
mod bundle;
mod cache;
mod fetch;
mod intel;
pub mod resolve;
mod show;
mod validate;

use anyhow::{bail, Context, Result};
use cache::Cache;
use clap::{Args, Subcommand, ValueEnum};
use cvm_attestation::snp::policy::{signing_key, SigningKey, SnpProduct};
use cvm_attestation::snp::SnpReport;
use fetch::{Fetcher, Freshness, Network, Origin, RetryPolicy};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// AMD's Key Distribution Service.
pub const AMD_KDS: &str = "https://kdsintf.amd.com";
/// Intel's Provisioning Certification Service.
pub const INTEL_PCS: &str = "https://api.trustedservices.intel.com";
/// Where Intel publishes the SGX Root CA's CRL (PCS has no endpoint for it; a PCCS has).
const INTEL_ROOT_CA_CRL: &str = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der";

/// Where the cache is.
#[derive(Debug, Clone, Args)]
pub struct CacheArgs {
    /// The collateral cache [default: $XDG_CACHE_HOME/cvm-cli/collateral, or
    /// ~/.cache/cvm-cli/collateral].
    #[arg(long, env = "CVM_COLLATERAL_CACHE", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

impl CacheArgs {
    fn cache(&self) -> Result<Cache> {
        match self.cache_dir.clone().or_else(Cache::default_dir) {
            Some(dir) => Ok(Cache::new(dir)),
            None => bail!("no cache directory: set HOME or XDG_CACHE_HOME, or give --cache-dir"),
        }
    }
}

/// Where collateral comes from, and the cache it goes into.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    #[command(flatten)]
    pub cache: CacheArgs,
    /// AMD KDS base URL.
    #[arg(long, env = "CVM_KDS_URL", value_name = "URL", default_value = AMD_KDS)]
    pub kds_url: String,
    /// Intel PCS base URL (API v4).
    #[arg(long, env = "CVM_PCS_URL", value_name = "URL", default_value = INTEL_PCS)]
    pub pcs_url: String,
    /// A PCCS (Intel's caching service, or any compatible one) to use instead of Intel PCS; the
    /// root CA CRL then also comes from it (`/sgx/certification/v4/rootcacrl`).
    #[arg(long, env = "CVM_PCCS_URL", value_name = "URL")]
    pub pccs_url: Option<String>,
    /// The most seconds to spend waiting on services that answer 429/503 (Retry-After).
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub max_wait: u64,
}

impl Default for SourceArgs {
    /// The flags' defaults and environment variables, for callers that take no source flags.
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            sources: SourceArgs,
        }
        <Defaults as clap::Parser>::try_parse_from(["cvm-cli"])
            .map(|d| d.sources)
            .unwrap_or_else(|_| Self {
                cache: CacheArgs { cache_dir: None },
                kds_url: AMD_KDS.into(),
                pcs_url: INTEL_PCS.into(),
                pccs_url: None,
                max_wait: 120,
            })
    }
}

/// How a command that verifies a VM (`verify`, `update-workload`, `unlock`) gets the collateral
/// the evidence lacks: the cache, and the services unless `--offline`.
#[derive(Debug, Clone, Default, Args)]
pub struct ResolveArgs {
    /// Use only cached collateral (VCEK, ASVK chain, TDX collateral, AMD CRL), never fetch: a
    /// check whose collateral is missing fails and says what to fetch or import
    /// (docs/collateral.md).
    #[arg(long)]
    pub offline: bool,
    #[command(flatten)]
    pub sources: SourceArgs,
}

impl ResolveArgs {
    /// The resolver for one verification; `input` is how `collateral fetch` would name it
    /// (`--host H`), for the hint when something is missing.
    pub fn resolver(&self, at_pinned: bool, input: String) -> Result<resolve::Resolver> {
        resolve::Resolver::new(&self.sources, self.offline, at_pinned, input)
    }
}

/// Resolved base URLs.
#[derive(Debug, Clone)]
pub struct Sources {
    pub kds: String,
    pub pcs: String,
    /// The root CA CRL's URL; `None`: the PCCS path under `pcs`.
    pub root_ca_crl: Option<String>,
}

impl SourceArgs {
    fn sources(&self) -> Sources {
        let trim = |url: &str| url.trim_end_matches('/').to_owned();
        match &self.pccs_url {
            Some(pccs) => Sources {
                kds: trim(&self.kds_url),
                pcs: trim(pccs),
                root_ca_crl: None,
            },
            None => Sources {
                kds: trim(&self.kds_url),
                pcs: trim(&self.pcs_url),
                root_ca_crl: Some(INTEL_ROOT_CA_CRL.into()),
            },
        }
    }

    fn fetcher(&self, network: Network, freshness: Freshness) -> Result<Fetcher> {
        let retry = RetryPolicy {
            max_wait: Duration::from_secs(self.max_wait),
            ..RetryPolicy::default()
        };
        Ok(Fetcher::new(self.cache.cache()?, network, freshness, retry))
    }
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    cvm-cli collateral fetch --quote tdx_quote --pccs-url https://pccs.example:8081\n  \
    cvm-cli collateral fetch --host 10.0.0.4 --json\n  \
    cvm-cli collateral export --out bundle.json      (then, offline:)\n  \
    cvm-cli collateral import bundle.json && cvm-cli verify --offline --report report.bin\n\n\
    The cache holds public documents only; `verify` re-checks each against the pinned AMD and \
    Intel roots every time (docs/collateral.md).")]
pub struct CollateralArgs {
    #[command(subcommand)]
    command: CollateralCommand,
}

#[derive(Debug, Subcommand)]
enum CollateralCommand {
    /// Fetch what a report, quote or evidence needs into the cache (nothing is requested for
    /// what is cached and current).
    Fetch(FetchArgs),
    /// List the cache: each entry, when it was fetched, when it goes stale.
    Show(ShowArgs),
    /// Write cached entries (all, or those the given inputs need) to one bundle file.
    Export(ExportArgs),
    /// Put a bundle's entries into the cache, after checking each parses as what it claims.
    Import(ImportArgs),
    /// Delete stale and corrupt entries.
    Prune(ShowArgs),
}

/// What collateral is for.
#[derive(Debug, Args)]
pub struct InputArgs {
    /// An SNP report (binary or hex), an Azure HCL report, a TD quote (binary or hex), or
    /// evidence JSON.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// A TD quote (binary or hex).
    #[arg(long, value_name = "FILE")]
    quote: Option<PathBuf>,
    /// Evidence JSON from an agent.
    #[arg(long, alias = "collaterals", value_name = "FILE")]
    evidence: Option<PathBuf>,
    /// A running agent (HOST[:PORT]): fetch its evidence over a fresh nonce first.
    #[arg(long)]
    host: Option<String>,
    /// The SEV-SNP product, for version 2 reports, which do not state it.
    #[arg(long, value_enum)]
    product: Option<ProductArg>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProductArg {
    Milan,
    Genoa,
    Turin,
}

impl From<ProductArg> for SnpProduct {
    fn from(p: ProductArg) -> Self {
        match p {
            ProductArg::Milan => SnpProduct::Milan,
            ProductArg::Genoa => SnpProduct::Genoa,
            ProductArg::Turin => SnpProduct::Turin,
        }
    }
}

#[derive(Debug, Args)]
struct FetchArgs {
    #[command(flatten)]
    input: InputArgs,
    #[command(flatten)]
    sources: SourceArgs,
    /// Judge whether cached entries are current at this time (RFC 3339 UTC or Unix seconds)
    /// instead of now.
    #[arg(long)]
    at: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ShowArgs {
    #[command(flatten)]
    cache: CacheArgs,
    /// Judge entries at this time (RFC 3339 UTC or Unix seconds) instead of now.
    #[arg(long)]
    at: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// The bundle file to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Only what these inputs need (default: the whole cache).
    #[command(flatten)]
    input: InputArgs,
    #[command(flatten)]
    sources: SourceArgs,
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// A bundle written by `collateral export`.
    bundle: PathBuf,
    #[command(flatten)]
    cache: CacheArgs,
}

pub fn run(args: CollateralArgs) -> Result<bool> {
    match args.command {
        CollateralCommand::Fetch(args) => run_fetch(args),
        CollateralCommand::Show(args) => {
            let cache = args.cache.cache()?;
            let listed = show::list(&cache, at_or_now(args.at.as_deref())?)?;
            show::print(&listed, cache.root(), args.json || crate::output::json())?;
            Ok(true)
        }
        CollateralCommand::Prune(args) => {
            let cache = args.cache.cache()?;
            let pruned = show::prune(&cache, at_or_now(args.at.as_deref())?)?;
            if args.json || crate::output::json() {
                crate::output::print_json(&pruned)?;
            } else {
                println!(
                    "pruned {}: removed {} stale and {} corrupt, kept {}",
                    cache.root().display(),
                    pruned.stale,
                    pruned.corrupt,
                    pruned.kept
                );
            }
            Ok(true)
        }
        CollateralCommand::Export(args) => run_export(args),
        CollateralCommand::Import(args) => {
            let cache = args.cache.cache()?;
            let count = bundle::import(&cache, &args.bundle)?;
            if crate::output::json() {
                let result = serde_json::json!({ "imported": count, "cache": cache.root() });
                crate::output::print_json(&result)?;
            } else {
                println!("imported {count} entries into {}", cache.root().display());
            }
            Ok(true)
        }
    }
}

fn at_or_now(at: Option<&str>) -> Result<i64> {
    at.map_or_else(|| Ok(fetch::now()), crate::time::parse_time)
}

/// A report or quote to get collateral for.
enum Subject {
    /// With whether the evidence it came in carries its VCEK or VLEK (nothing to fetch then).
    Snp {
        report: Box<SnpReport>,
        vek_carried: bool,
    },
    Tdx(Vec<u8>),
}

/// The subject in a file's (or an agent's evidence) bytes.
fn subject_of(bytes: &[u8], what: &str) -> Result<Subject> {
    if let Some((quote, _)) = crate::verify::td_quote_of(bytes).with_context(|| what.to_owned())? {
        return Ok(Subject::Tdx(quote));
    }
    match amd::report_of(bytes).with_context(|| what.to_owned())? {
        Some(report) => Ok(Subject::Snp {
            report: Box::new(report),
            vek_carried: vek_carried(bytes),
        }),
        None => bail!(
            "{what}: neither an SNP report, an HCL report, a TD quote nor SEV-SNP/TDX evidence"
        ),
    }
}

/// Whether `bytes` are evidence whose `sev_snp` section carries the VCEK or VLEK.
fn vek_carried(bytes: &[u8]) -> bool {
    bytes.first() == Some(&b'{')
        && cvm_attestation::Evidence::from_json(bytes)
            .ok()
            .and_then(|e| e.sev_snp)
            .is_some_and(|snp| !snp.vek_cert.0.is_empty())
}

fn subjects(input: &InputArgs) -> Result<Vec<Subject>> {
    let mut out = Vec::new();
    for path in [&input.report, &input.quote, &input.evidence]
        .into_iter()
        .flatten()
    {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        out.push(subject_of(&bytes, &path.display().to_string())?);
    }
    if let Some(host) = &input.host {
        let mut nonce = [0u8; 32];
        openssl::rand::rand_bytes(&mut nonce)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (bytes, _) = runtime.block_on(crate::verify::fetch_evidence(host, &nonce))?;
        out.push(subject_of(&bytes, &format!("{host}'s evidence"))?);
    }
    Ok(out)
}

/// One document of `fetch`'s answer.
#[derive(Debug, Serialize)]
struct Row {
    what: String,
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<Origin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stale_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Without it, verification still runs (AMD CRLs: `snp.crl` is then skipped).
    optional: bool,
    /// Why nothing was fetched for it (a key the evidence carries, a VLEK KDS does not serve).
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

fn row(item: &fetch::Item, result: Result<fetch::Got, fetch::FetchError>, optional: bool) -> Row {
    let (origin, stale_at, error) = match result {
        Ok(got) => (
            Some(got.origin),
            Some(show::time(got.entry.stale_at())),
            None,
        ),
        Err(e) => (None, None, Some(e.to_string())),
    };
    Row {
        what: item.what.clone(),
        key: item.key.to_string(),
        origin,
        stale_at,
        error,
        optional,
        note: None,
    }
}

/// The report's signing key when nothing is fetched for it: carried by the evidence, or a VLEK,
/// which AMD KDS does not serve.
fn key_row(vlek: bool, carried: bool) -> Row {
    let what = if vlek { "VLEK" } else { "VCEK" };
    let note = if carried {
        "carried by the evidence".into()
    } else {
        "not served by AMD KDS (only its ASVK/ARK chain is): a VLEK comes from the host's \
         extended report, which the agent's evidence carries; verify the evidence, or give the \
         VLEK to `verify --vcek`"
            .into()
    };
    Row {
        what: what.into(),
        key: if carried { "evidence" } else { "-" }.into(),
        origin: carried.then_some(Origin::Evidence),
        stale_at: None,
        error: None,
        optional: false,
        note: Some(note),
    }
}

fn run_fetch(args: FetchArgs) -> Result<bool> {
    let subjects = subjects(&args.input)?;
    if subjects.is_empty() {
        bail!("give --report, --quote, --evidence or --host");
    }
    let freshness = Freshness::CurrentAt(at_or_now(args.at.as_deref())?);
    let fetcher = args.sources.fetcher(Network::Online, freshness)?;
    let sources = args.sources.sources();
    let hint = args.input.product.map(SnpProduct::from);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for subject in &subjects {
        rows.extend(runtime.block_on(fetch_subject(&fetcher, &sources, subject, hint))?);
    }
    let ok = rows.iter().all(|r| r.error.is_none() || r.optional);
    if args.json || crate::output::json() {
        let answer = serde_json::json!({
            "cache": fetcher.cache.root(),
            "ok": ok,
            "items": rows,
        });
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        println!("cache: {}", fetcher.cache.root().display());
        for row in &rows {
            match (&row.origin, &row.error) {
                (Some(Origin::Evidence), _) | (None, None) => println!(
                    "{:7}  {}: {}",
                    if row.origin.is_some() { "carried" } else { "-" },
                    row.what,
                    row.note.as_deref().unwrap_or_default()
                ),
                (Some(origin), _) => println!(
                    "{:7}  {}  ({}; current until {})",
                    match origin {
                        Origin::Cache => "cached",
                        Origin::Fetched | Origin::Evidence => "fetched",
                    },
                    row.what,
                    row.key,
                    row.stale_at.as_deref().unwrap_or("-")
                ),
                (None, Some(error)) => println!(
                    "{:7}  {}: {error}",
                    if row.optional { "MISSING" } else { "FAILED" },
                    row.what
                ),
            }
        }
    }
    Ok(ok)
}

/// The documents one subject needs, from the cache or fetched.
async fn fetch_subject(
    fetcher: &Fetcher,
    sources: &Sources,
    subject: &Subject,
    hint: Option<SnpProduct>,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    match subject {
        Subject::Tdx(quote) => {
            let needs = intel::needs(quote)?;
            let items = intel::items(sources, &needs);
            let results =
                futures_util::future::join_all(items.iter().map(|item| fetcher.get(item))).await;
            for (item, result) in items.iter().zip(results) {
                rows.push(row(item, result, false));
            }
        }
        Subject::Snp {
            report,
            vek_carried,
        } => rows = fetch_snp(fetcher, sources, report, *vek_carried, hint).await?,
    }
    Ok(rows)
}

/// The VCEK (unless the evidence carries it, or a VLEK signed the report), the ASK/ARK or
/// ASVK/ARK chain and the CRL for one SNP report.
async fn fetch_snp(
    fetcher: &Fetcher,
    sources: &Sources,
    report: &SnpReport,
    vek_carried: bool,
    hint: Option<SnpProduct>,
) -> Result<Vec<Row>> {
    let vlek = signing_key(report) == SigningKey::Vlek;
    let mut rows = Vec::new();
    let product = match (
        vlek,
        vek_carried,
        hint.or_else(|| SnpProduct::from_report(report)),
    ) {
        (true, _, Some(product)) | (false, true, Some(product)) => {
            rows.push(key_row(vlek, vek_carried));
            product
        }
        (true, _, None) => {
            bail!("the VLEK-signed report does not state its product: give --product")
        }
        // A version 2 report names no product: its VCEK says which, even when the evidence has it.
        (false, _, _) => match amd::vcek(fetcher, sources, report, hint).await {
            Ok((product, got)) => {
                let item = amd::vcek_item(sources, report, product)?;
                rows.push(row(&item, Ok(got), false));
                product
            }
            Err(e) => {
                rows.push(Row {
                    what: "VCEK".into(),
                    key: "amd/*/vcek".into(),
                    origin: None,
                    stale_at: None,
                    error: Some(e.to_string()),
                    optional: false,
                    note: None,
                });
                return Ok(rows);
            }
        },
    };
    let chain = amd::chain_item(sources, product, vlek);
    let crl = amd::crl_item(sources, product, vlek);
    let (a, b) = futures_util::future::join(fetcher.get(&chain), fetcher.get(&crl)).await;
    rows.push(row(&chain, a, false));
    rows.push(row(&crl, b, true));
    Ok(rows)
}

/// The cache keys some inputs need (for `export`), from what is cached.
fn needed_keys(args: &ExportArgs, fetcher: &Fetcher) -> Result<Vec<cache::Key>> {
    let sources = args.sources.sources();
    let hint = args.input.product.map(SnpProduct::from);
    let mut keys = Vec::new();
    for subject in subjects(&args.input)? {
        match subject {
            Subject::Tdx(quote) => {
                let needs = intel::needs(&quote)?;
                keys.extend(intel::items(&sources, &needs).map(|item| item.key));
            }
            Subject::Snp { report, .. } => {
                let vlek = signing_key(&report) == SigningKey::Vlek;
                let mut products = amd::candidates(&report, hint);
                if !vlek {
                    for product in &products {
                        let item = amd::vcek_item(&sources, &report, *product)?;
                        if fetcher.cached(&item).ok().flatten().is_some() {
                            keys.push(item.key);
                            products = vec![*product];
                            break;
                        }
                    }
                }
                for product in products {
                    for item in [
                        amd::chain_item(&sources, product, vlek),
                        amd::crl_item(&sources, product, vlek),
                    ] {
                        if fetcher.cached(&item).ok().flatten().is_some() {
                            keys.push(item.key);
                        }
                    }
                }
            }
        }
    }
    Ok(keys)
}

fn run_export(args: ExportArgs) -> Result<bool> {
    let fetcher = args.sources.fetcher(Network::Offline, Freshness::Any)?;
    let input = &args.input;
    let any_input = input.report.is_some()
        || input.quote.is_some()
        || input.evidence.is_some()
        || input.host.is_some();
    let keys = if any_input {
        Some(needed_keys(&args, &fetcher)?)
    } else {
        None
    };
    let count = bundle::export(&fetcher.cache, keys, &args.out)?;
    if crate::output::json() {
        let (cache, out) = (fetcher.cache.root(), &args.out);
        let result = serde_json::json!({ "exported": count, "cache": cache, "out": out });
        crate::output::print_json(&result)?;
        return Ok(true);
    }
    println!(
        "exported {count} entries from {} to {}",
        fetcher.cache.root().display(),
        args.out.display()
    );
    Ok(true)
}
