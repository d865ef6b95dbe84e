//! Differential test against Phala's `dcap-qvl` (a second, independent DCAP verifier: ring and
//! webpki where we use OpenSSL). Every real TD quote with collateral we have (../shared/vectors
//! and the samples that ship inside the dcap-qvl crate, read from its source directory), every
//! TEST-ONLY quote of the test signer (fresh keys each run) and mutations of them (flipped bytes
//! in the quote, in each collateral field, verification times outside the windows) get the same
//! accept/reject and the same TCB statuses from both, or differ in a way named in
//! [`DIFFERENCES`] (docs/evidence.md, "Differential testing").
//!
//! Mapping: dcap-qvl's `verify` refuses only a Revoked TCB and leaves the status to the caller,
//! so ours runs with every TCB status but Revoked allowed; both refuse debug TDs by default.

use cvm_attestation::golden::GoldenTdx;
use cvm_attestation::snp::TrustedRoot;
use cvm_attestation::tdx::collateral::parse_time;
use cvm_attestation::tdx::tcb::converge_with_module;
use cvm_attestation::tdx::{TcbStatus, TdQuote, TdxCollateral};
use cvm_attestation::verify::verify_tdx_quote;
use cvm_attestation::{VerificationReport, VerifyOptions};
use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::x509::{X509Crl, X509};
use std::path::PathBuf;
use std::sync::OnceLock;
use test_support::tdx_signer::{CollateralOptions, TdxTestSigner, STALE_CRLS, TEE_TCB_SVN};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors");

/// A place where the two verifiers disagree on purpose.
struct Difference {
    name: &'static str,
    ours: Outcome,
    why: &'static str,
}

/// What ours does where dcap-qvl does otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Ours accepts, dcap-qvl refuses.
    Accepts,
    /// Ours refuses, dcap-qvl accepts.
    Refuses,
    /// Either may be the one that refuses (or they agree); the test checks an invariant instead.
    Either,
}

const SGX_OUT_OF_SCOPE: Difference = Difference {
    name: "sgx-quotes-out-of-scope",
    ours: Outcome::Refuses,
    why: "an SGX enclave quote (v3, TEE type 0) is not a TD quote: cvm-attestation verifies \
          confidential VMs only, so it refuses what dcap-qvl verifies as an SGX enclave",
};
const BODY_TYPE_4: Difference = Difference {
    name: "v5-body-type-4-refused",
    ours: Outcome::Refuses,
    why: "quote v5 body type 4 (TD report 1.5 with the service-TD extension: TD_ID, current \
          service TD hash) is refused by name; ours reads body types 2 and 3 only, and a verifier \
          must not accept signed fields it cannot show or judge",
};
const SERVICE_TD: Difference = Difference {
    name: "mrservicetd-judged-by-golden",
    ours: Outcome::Accepts,
    why: "a TD bound to a service TD (MRSERVICETD not zero) is refused by dcap-qvl unless \
          allow_service_td; ours reports MRSERVICETD and judges it against the golden \
          measurement's mrservicetds allow-list (a golden that pins it refuses other values), so \
          the owner, not the library, decides which service TDs (e.g. a migration TD) are fine",
};
const QUOTE_FRAMING: Difference = Difference {
    name: "quote-framing-exact",
    ours: Outcome::Refuses,
    why: "the signature data length, the outer certification data type (6) and the zero padding \
          after the PCK chain are covered by no signature; dcap-qvl reads what it needs and \
          ignores the rest, ours refuses a quote whose framing is not exactly Intel's layout \
          (nothing unsigned is skipped silently)",
};
const PEM_DECODING: Difference = Difference {
    name: "pck-chain-pem-decoding",
    ours: Outcome::Either,
    why: "the PCK chain's PEM text is covered by no signature and the two PEM decoders (OpenSSL, \
          the pem crate) tolerate different damage to it: line breaks, a damaged copy of the root \
          after the certificates the chain needs, non-canonical base64 padding bits. The \
          certificates used are verified by signature in both; the test checks that every \
          change ours accepts leaves the PCK and PCK CA certificates unchanged",
};
const COLLATERAL_WHOLE: Difference = Difference {
    name: "collateral-parsed-whole",
    ours: Outcome::Refuses,
    why: "dcap-qvl never reads pck_crl_issuer_chain (it checks the PCK CRL against the quote's \
          chain); ours parses every field of the collateral and refuses a damaged file as a \
          whole rather than use part of it",
};

/// Every named difference, for the listing in [`every_difference_is_named`].
const DIFFERENCES: &[&Difference] = &[
    &SGX_OUT_OF_SCOPE,
    &BODY_TYPE_4,
    &SERVICE_TD,
    &QUOTE_FRAMING,
    &PEM_DECODING,
    &COLLATERAL_WHOLE,
];

/// What a verifier decided: accepted with these TCB statuses, or refused (and why, for
/// messages: the two word their reasons differently).
#[derive(Debug, Clone)]
enum Verdict {
    Accept(Statuses),
    Reject(String),
}

impl Verdict {
    fn accepted(&self) -> bool {
        matches!(self, Verdict::Accept(_))
    }

    /// Both refuse, or both accept with the same statuses.
    fn agrees_with(&self, other: &Verdict) -> bool {
        match (self, other) {
            (Verdict::Accept(a), Verdict::Accept(b)) => a == b,
            (Verdict::Reject(_), Verdict::Reject(_)) => true,
            _ => false,
        }
    }
}

/// The platform's level (converged with the TDX module's), the QE's, Intel's relaunch verdict
/// when a TD report 1.5 body earned one, and the advisories, all in Intel's spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Statuses {
    platform: String,
    qe: String,
    relaunch: Option<String>,
    advisories: Vec<String>,
}

/// The trust anchor and the verification time of a case.
struct Setup {
    root: Option<X509>,
    at: i64,
}

fn vector(path: &str) -> Vec<u8> {
    std::fs::read(format!("{VECTORS}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The `sample/` directory of the dcap-qvl crate this test links, found through `cargo
/// metadata` (its files are read in place, not copied).
fn dcap_samples() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        // Offline and for this host only: a fresh machine's cache holds the crates this
        // host's build needed, not the other platforms' ones `cargo metadata` would list.
        let output = std::process::Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--offline"])
            .args(["--filter-platform", &host_triple()])
            .args(["--manifest-path", manifest])
            .output()
            .expect("cargo metadata runs");
        assert!(
            output.status.success(),
            "cargo metadata: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let package = metadata["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "dcap-qvl")
            .expect("dcap-qvl is a dev-dependency");
        let manifest = PathBuf::from(package["manifest_path"].as_str().unwrap());
        manifest.parent().unwrap().join("sample")
    })
}

/// The host's target triple, as rustc names it.
fn host_triple() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let output = std::process::Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| line.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_string()
}

fn sample(name: &str) -> Vec<u8> {
    let path = dcap_samples().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn unix(time: &Asn1TimeRef) -> i64 {
    let diff = Asn1Time::from_unix(0).unwrap().diff(time).unwrap();
    i64::from(diff.days) * 86_400 + i64::from(diff.secs)
}

/// The middle of the span in which every part of the collateral is current (TCB info, QE
/// identity, both CRLs), as dcap-qvl's own tests pick their time.
fn time_inside(collateral: &TdxCollateral) -> i64 {
    let (mut from, mut to) = (i64::MIN, i64::MAX);
    for body in [&collateral.tcb_info, &collateral.qe_identity] {
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        from = from.max(parse_time(json["issueDate"].as_str().unwrap()).unwrap());
        to = to.min(parse_time(json["nextUpdate"].as_str().unwrap()).unwrap());
    }
    for crl in [&collateral.root_ca_crl, &collateral.pck_crl] {
        let crl = X509Crl::from_der(&hex::decode(crl.as_deref().unwrap()).unwrap()).unwrap();
        from = from.max(unix(crl.last_update()));
        to = to.min(crl.next_update().map(unix).unwrap_or(i64::MAX));
    }
    assert!(from < to, "the collateral is never current as a whole");
    from + (to - from) / 2
}

/// Every status but Revoked, which dcap-qvl's `verify` refuses by itself.
fn golden() -> GoldenTdx {
    GoldenTdx {
        tcb_statuses: TcbStatus::KNOWN
            .iter()
            .filter(|s| **s != "Revoked")
            .map(|s| TcbStatus::from(*s))
            .collect(),
        ..GoldenTdx::default()
    }
}

/// Reads our `tdx.tcb_status` check: "platform S (date), TDX module S, [S: launched ...,] QE S".
fn our_statuses(report: &VerificationReport) -> Statuses {
    let check = report.check("tdx.tcb_status").expect("a TCB status check");
    let actual = check.actual.as_deref().unwrap_or_default();
    let (mut platform, mut module, mut qe, mut relaunch) = (None, None, None, None);
    for part in actual.split(", ") {
        if let Some(rest) = part.strip_prefix("platform ") {
            platform = rest.split(" (").next().map(TcbStatus::from);
        } else if let Some(rest) = part.strip_prefix("TDX module ") {
            module = (!rest.starts_with('(')).then(|| TcbStatus::from(rest));
        } else if let Some(rest) = part.strip_prefix("QE ") {
            qe = Some(rest.to_owned());
        } else if let Some((status, _)) = part.split_once(": launched under") {
            relaunch = Some(status.to_owned());
        }
    }
    let platform = platform.unwrap_or_else(|| panic!("no platform level in {actual:?}"));
    let mut advisories: Vec<String> = match check.reason.split_once("advisories: ") {
        Some((_, list)) => list.split(", ").map(str::to_owned).collect(),
        None => Vec::new(),
    };
    advisories.sort();
    Statuses {
        platform: converge_with_module(&platform, module.as_ref()).to_string(),
        qe: qe.unwrap_or_else(|| panic!("no QE level in {actual:?}")),
        relaunch,
        advisories,
    }
}

fn ours(quote: &[u8], collateral: &[u8], setup: &Setup) -> Verdict {
    let collateral = match TdxCollateral::from_json(collateral) {
        Ok(c) => c,
        Err(e) => return Verdict::Reject(format!("collateral: {e}")),
    };
    let mut options = VerifyOptions::new(setup.at);
    if let Some(root) = &setup.root {
        options = options.with_tdx_test_roots([TrustedRoot {
            name: "TEST-ONLY differential root".into(),
            certificate: root.clone(),
            test_only: true,
        }]);
    }
    let report = verify_tdx_quote(quote, Some(&collateral), &golden(), &options);
    if report.verified {
        Verdict::Accept(our_statuses(&report))
    } else {
        let failed: Vec<String> = report
            .failures()
            .map(|c| format!("{}: {}", c.name, c.reason))
            .collect();
        Verdict::Reject(failed.join("; "))
    }
}

fn theirs(quote: &[u8], collateral: &[u8], setup: &Setup) -> Verdict {
    let collateral: dcap_qvl::QuoteCollateralV3 = match serde_json::from_slice(collateral) {
        Ok(c) => c,
        Err(e) => return Verdict::Reject(format!("collateral: {e}")),
    };
    let verifier = match &setup.root {
        Some(root) => dcap_qvl::verify::QuoteVerifier::new(root.to_der().unwrap()),
        None => dcap_qvl::verify::QuoteVerifier::new_prod(),
    };
    let at = u64::try_from(setup.at).unwrap();
    match verifier.verify(quote, &collateral, at) {
        Ok(report) => {
            let mut advisories = report.advisory_ids.clone();
            advisories.sort();
            advisories.dedup();
            Verdict::Accept(Statuses {
                platform: report.platform_status.status.to_string(),
                qe: report.qe_status.status.to_string(),
                relaunch: report
                    .status
                    .starts_with("TDRelaunch")
                    .then(|| report.status.clone()),
                advisories,
            })
        }
        Err(e) => Verdict::Reject(format!("{e:#}")),
    }
}

/// Runs both verifiers and checks they agree, or differ exactly as `expected` says. Returns
/// both verdicts.
fn compare(
    what: &str,
    quote: &[u8],
    collateral: &[u8],
    setup: &Setup,
    expected: Option<&Difference>,
) -> (Verdict, Verdict) {
    let (o, t) = (
        ours(quote, collateral, setup),
        theirs(quote, collateral, setup),
    );
    let ok = match expected.map(|d| d.ours) {
        None => o.agrees_with(&t),
        Some(Outcome::Accepts) => o.accepted() && !t.accepted(),
        Some(Outcome::Refuses) => !o.accepted() && t.accepted(),
        Some(Outcome::Either) => true,
    };
    let expected = expected.map_or("agreement", |d| d.name);
    assert!(
        ok,
        "{what}: expected {expected}, got\n ours:     {o:?}\n dcap-qvl: {t:?}"
    );
    (o, t)
}

fn intel(at: i64) -> Setup {
    Setup { root: None, at }
}

/// (name, quote, collateral JSON) of every real TD quote with collateral.
fn real_cases() -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let mut cases = vec![(
        "shared tdx/tdx_quote".to_owned(),
        vector("tdx/tdx_quote"),
        vector("tdx/tdx_quote_collateral.json"),
    )];
    for name in ["tdx_quote", "tdx_quote_outdated"] {
        cases.push((
            format!("dcap-qvl sample/{name}"),
            sample(name),
            sample(&format!("{name}_collateral.json")),
        ));
    }
    cases
}

fn collateral_of(json: &[u8]) -> TdxCollateral {
    TdxCollateral::from_json(json).unwrap()
}

#[test]
fn every_real_quote_gets_the_same_verdict_and_tcb_status() {
    let mut seen = Vec::new();
    for (name, quote, collateral) in real_cases() {
        let at = time_inside(&collateral_of(&collateral));
        let (o, _) = compare(&name, &quote, &collateral, &intel(at), None);
        seen.push((name, o));
    }
    // The quote both verify UpToDate (shared and sample copies), and the one whose platform
    // is below every TCB level of its collateral, which both refuse.
    for (name, verdict) in &seen {
        match name.ends_with("outdated") {
            true => assert!(
                format!("{verdict:?}").contains("no TCB level matches"),
                "{verdict:?}"
            ),
            false => assert_eq!(accepted_with(verdict).platform, "UpToDate", "{name}"),
        }
    }
}

#[test]
fn the_real_samples_outside_our_scope_differ_by_name() {
    let quote = sample("sgx_quote");
    let collateral = sample("sgx_quote_collateral.json");
    // SGX TCB info: only the dates matter here.
    let json: serde_json::Value = serde_json::from_slice(&collateral).unwrap();
    let tcb: serde_json::Value = serde_json::from_str(json["tcb_info"].as_str().unwrap()).unwrap();
    let from = parse_time(tcb["issueDate"].as_str().unwrap()).unwrap();
    let at = from + 86_400;
    compare(
        "sgx_quote",
        &quote,
        &collateral,
        &intel(at),
        Some(&SGX_OUT_OF_SCOPE),
    );

    let quote = sample("tdx_quote_td15ex");
    let collateral = sample("tdx_quote_td15ex_collateral.json");
    let at = time_inside(&collateral_of(&collateral));
    let (o, _) = compare(
        "td15ex",
        &quote,
        &collateral,
        &intel(at),
        Some(&BODY_TYPE_4),
    );
    assert!(format!("{o:?}").contains("body type 4"), "{o:?}");
    // The same quote's every other byte is still judged alike: a changed byte is refused by both.
    let mut altered = quote.clone();
    altered[60] ^= 1;
    compare("td15ex altered", &altered, &collateral, &intel(at), None);
}

/// Where the unsigned parts of a quote are: the PCK chain's PEM text (with its NUL) and the
/// zero padding after the signature data.
struct Layout {
    /// Offset of the signature data length (632 in v4; after the body descriptor and body in v5).
    length_at: usize,
    pem_start: usize,
    signature_data_end: usize,
}

fn layout(quote: &[u8]) -> Layout {
    let begin = b"-----BEGIN CERTIFICATE-----";
    let pem_start = quote.windows(begin.len()).position(|w| w == begin).unwrap();
    let length_at = match TdQuote::parse(quote).unwrap().body_descriptor {
        Some(descriptor) => 54 + descriptor.size as usize,
        None => 632,
    };
    let length = u32::from_le_bytes(quote[length_at..length_at + 4].try_into().unwrap());
    Layout {
        length_at,
        pem_start,
        signature_data_end: length_at + 4 + length as usize,
    }
}

/// The difference a flipped byte at `offset` is expected to show.
fn expected_for_flip(offset: usize, layout: &Layout) -> Option<&'static Difference> {
    // Signature data length (its low byte), certification data type (6 -> 7 or 0x106).
    let framing = [
        layout.length_at,
        layout.length_at + 132,
        layout.length_at + 133,
    ];
    match offset {
        o if framing.contains(&o) => Some(&QUOTE_FRAMING),
        o if o >= layout.signature_data_end => Some(&QUOTE_FRAMING),
        o if o >= layout.pem_start => Some(&PEM_DECODING),
        _ => None,
    }
}

/// The PCK and PCK CA certificates (DER) the quote carries, as OpenSSL reads them.
fn used_certificates(quote: &[u8]) -> Vec<Vec<u8>> {
    let pem = TdQuote::parse(quote).unwrap().pck_chain_pem;
    X509::stack_from_pem(&pem).unwrap()[..2]
        .iter()
        .map(|c| c.to_der().unwrap())
        .collect()
}

#[test]
fn flipped_quote_bytes_are_judged_alike() {
    for (name, quote, collateral) in real_cases() {
        let at = time_inside(&collateral_of(&collateral));
        let layout = layout(&quote);
        let original = used_certificates(&quote);
        // A quote both refuse anyway (no TCB level) shows no difference: both refuse every flip.
        let verifies = ours(&quote, &collateral, &intel(at)).accepted();
        let (mut refused, mut pem_differences) = (0, 0);
        for offset in (0..quote.len()).step_by(4) {
            let mut altered = quote.clone();
            altered[offset] ^= 0x01;
            let what = format!("{name}, byte {offset} flipped");
            let expected = expected_for_flip(offset, &layout).filter(|_| verifies);
            let (o, t) = compare(&what, &altered, &collateral, &intel(at), expected);
            refused += usize::from(!o.accepted());
            if expected.is_some_and(|d| d.name == PEM_DECODING.name) && !o.agrees_with(&t) {
                pem_differences += 1;
                if o.accepted() {
                    assert_eq!(used_certificates(&altered), original, "{what}");
                }
            }
        }
        assert!(refused > 1_000, "{name}: only {refused} flips refused");
        assert!(verifies || refused == quote.len().div_ceil(4), "{name}");
        println!("{name}: {refused} flips refused, {pem_differences} PEM decoding differences");
    }
}

/// `text` with the character at `index` replaced by another of the same kind (hex stays hex,
/// base64 stays base64), so the field still parses and only its meaning changes.
fn flip_char(text: &str, index: usize) -> String {
    let mut bytes = text.as_bytes().to_vec();
    bytes[index] = match bytes[index] {
        b'0' => b'1',
        b'9' | b'f' | b'F' | b'z' | b'Z' => b'a',
        b'\n' | b'-' | b' ' | b'"' | b'{' | b'}' | b':' | b',' => bytes[index],
        other => other + 1,
    };
    String::from_utf8(bytes).unwrap()
}

/// The collateral with one field changed, as JSON.
fn with_field(collateral: &TdxCollateral, field: &str, change: impl Fn(&str) -> String) -> Vec<u8> {
    let mut json = serde_json::to_value(collateral).unwrap();
    let old = json[field].as_str().unwrap().to_owned();
    json[field] = serde_json::Value::String(change(&old));
    serde_json::to_vec(&json).unwrap()
}

const FIELDS: [&str; 9] = [
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
];

/// The collateral fields a signature covers (or that are signatures).
const SIGNED: [&str; 6] = [
    "root_ca_crl",
    "pck_crl",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity",
    "qe_identity_signature",
];

#[test]
fn changed_collateral_fields_are_judged_alike() {
    let quote = vector("tdx/tdx_quote");
    let collateral = collateral_of(&vector("tdx/tdx_quote_collateral.json"));
    let setup = intel(time_inside(&collateral));
    let mut refused = 0;
    for field in FIELDS {
        let len = serde_json::to_value(&collateral).unwrap()[field]
            .as_str()
            .unwrap()
            .len();
        // The start, a few places inside, the end.
        for index in [0, 1, 70, len / 3, len / 2, len - 70, len - 2] {
            let json = with_field(&collateral, field, |old| flip_char(old, index));
            let what = format!("{field}[{index}] changed");
            let (o, _) = compare(&what, &quote, &json, &setup, None);
            refused += usize::from(!o.accepted());
            // A changed signed body, signature or CRL is refused (and so by both).
            let changed = json != serde_json::to_vec(&collateral).unwrap();
            assert!(
                !(changed && SIGNED.contains(&field) && o.accepted()),
                "{what}"
            );
        }
        // Emptied, and cut in half.
        for (how, change) in [
            (
                "emptied",
                Box::new(|_: &str| String::new()) as Box<dyn Fn(&str) -> String>,
            ),
            (
                "halved",
                Box::new(|old: &str| old[..old.len() / 2].to_owned()),
            ),
        ] {
            let json = with_field(&collateral, field, change);
            let halved = field == "pck_crl_issuer_chain" && how == "halved";
            let expected = halved.then_some(&COLLATERAL_WHOLE);
            compare(&format!("{field} {how}"), &quote, &json, &setup, expected);
        }
    }
    assert!(refused > 30, "only {refused} changed fields refused");
    // The TCB info's and QE identity's signer swapped for the quote's own PCK chain.
    let pck_chain = String::from_utf8(TdQuote::parse(&quote).unwrap().pck_chain_pem).unwrap();
    for field in ["tcb_info_issuer_chain", "qe_identity_issuer_chain"] {
        let json = with_field(&collateral, field, |_| pck_chain.clone());
        let (o, _) = compare(&format!("{field} = PCK chain"), &quote, &json, &setup, None);
        assert!(!o.accepted());
    }
}

#[test]
fn verification_times_outside_the_collateral_are_refused_alike() {
    for (name, quote, json) in real_cases() {
        let collateral = collateral_of(&json);
        let inside = time_inside(&collateral);
        let tcb: serde_json::Value = serde_json::from_str(&collateral.tcb_info).unwrap();
        let issued = parse_time(tcb["issueDate"].as_str().unwrap()).unwrap();
        let next = parse_time(tcb["nextUpdate"].as_str().unwrap()).unwrap();
        for (when, at) in [
            ("inside", inside),
            ("a second before the TCB info", issued - 1),
            ("a second after its nextUpdate", next + 1),
            ("a year later", next + 365 * 86_400),
            (
                "2040, after the PCK expired",
                parse_time("2040-01-01T00:00:00Z").unwrap(),
            ),
            (
                "2017, before Intel's root",
                parse_time("2017-01-01T00:00:00Z").unwrap(),
            ),
        ] {
            let (o, _) = compare(
                &format!("{name} at {when}"),
                &quote,
                &json,
                &intel(at),
                None,
            );
            let verifies = when == "inside" && !name.ends_with("outdated");
            assert_eq!(o.accepted(), verifies, "{name} at {when}: {o:?}");
        }
    }
}

/// A fresh TEST-ONLY PKI per test: both verifiers trust only its root.
struct Signed {
    signer: TdxTestSigner,
    setup: Setup,
}

impl Signed {
    fn new() -> Self {
        let signer = TdxTestSigner::new().unwrap();
        let json = signer.collateral_json().unwrap();
        let setup = Setup {
            root: Some(signer.root().clone()),
            at: time_inside(&collateral_of(&json)),
        };
        Self { signer, setup }
    }

    fn compare(&self, what: &str, quote: &[u8], options: CollateralOptions) -> (Verdict, Verdict) {
        self.compare_as(what, quote, options, None)
    }

    fn compare_as(
        &self,
        what: &str,
        quote: &[u8],
        options: CollateralOptions,
        expected: Option<&Difference>,
    ) -> (Verdict, Verdict) {
        let json = self.signer.collateral_json_with(options).unwrap();
        compare(what, quote, &json, &self.setup, expected)
    }
}

fn accepted_with(verdict: &Verdict) -> &Statuses {
    match verdict {
        Verdict::Accept(statuses) => statuses,
        Verdict::Reject(why) => panic!("refused: {why}"),
    }
}

#[test]
fn test_signer_quotes_of_every_body_get_the_same_verdict() {
    let t = Signed::new();
    let s = &t.signer;
    let normal = CollateralOptions::default();
    let body = s.body(&[1; 64]);
    let body15 = s.body15(&[1; 64], &TEE_TCB_SVN, &[0; 48]);
    for (what, quote) in [
        ("v4", s.quote(&body).unwrap()),
        ("v5 body type 2", s.quote_v5(&body).unwrap()),
        ("v5 body type 3", s.quote_v5(&body15).unwrap()),
    ] {
        let (o, _) = t.compare(what, &quote, normal);
        assert_eq!(accepted_with(&o).platform, "UpToDate", "{what}");
    }
    for (what, quote) in [
        ("debug TD", s.quote(&s.debug_body(&[1; 64])).unwrap()),
        (
            "v5 type 3 declaring 584 bytes",
            s.quote_v5_declaring(3, 584, &body15).unwrap(),
        ),
        (
            "v5 type 2 over a 1.5 body",
            s.quote_v5_declaring(2, 648, &body15).unwrap(),
        ),
    ] {
        let (o, _) = t.compare(what, &quote, normal);
        assert!(!o.accepted(), "{what}: {o:?}");
    }
    // A TD bound to a service TD.
    let bound = s.body15(&[1; 64], &TEE_TCB_SVN, &[0x5d; 48]);
    let quote = s.quote_v5(&bound).unwrap();
    t.compare_as("MRSERVICETD set", &quote, normal, Some(&SERVICE_TD));
}

#[test]
fn tcb_statuses_and_revocation_agree() {
    let t = Signed::new();
    let quote = t.signer.quote(&t.signer.body(&[2; 64])).unwrap();
    for status in TcbStatus::KNOWN.iter().take(7) {
        let options = CollateralOptions {
            platform_status: status,
            ..CollateralOptions::default()
        };
        let (o, _) = t.compare(&format!("platform {status}"), &quote, options);
        match status {
            &"Revoked" => assert!(!o.accepted(), "{o:?}"),
            _ => assert_eq!(&accepted_with(&o).platform, status),
        }
    }
    for (what, options) in [
        (
            "the PCK revoked",
            CollateralOptions {
                revoke_pck: true,
                ..CollateralOptions::default()
            },
        ),
        (
            "no CRLs",
            CollateralOptions {
                crls: false,
                ..CollateralOptions::default()
            },
        ),
        (
            "stale CRLs",
            CollateralOptions {
                crl_validity: STALE_CRLS,
                ..CollateralOptions::default()
            },
        ),
    ] {
        let (o, _) = t.compare(what, &quote, options);
        assert!(!o.accepted(), "{what}: {o:?}");
    }
}

#[test]
fn the_td_relaunch_verdict_agrees() {
    let t = Signed::new();
    let s = &t.signer;
    let newer = CollateralOptions {
        module_newest_svn: Some(TEE_TCB_SVN[0] + 1),
        ..CollateralOptions::default()
    };
    let mut svn2 = TEE_TCB_SVN;
    svn2[0] += 1;
    let relaunched = s.quote_v5(&s.body15(&[3; 64], &svn2, &[0; 48])).unwrap();
    let (o, _) = t.compare("relaunched on the newest module", &relaunched, newer);
    assert_eq!(
        accepted_with(&o).relaunch.as_deref(),
        Some("TDRelaunchAdvised")
    );
    let stale = s
        .quote_v5(&s.body15(&[3; 64], &TEE_TCB_SVN, &[0; 48]))
        .unwrap();
    let (o, _) = t.compare("still on the old module", &stale, newer);
    assert_eq!(accepted_with(&o).platform, "OutOfDate");
    assert_eq!(accepted_with(&o).relaunch, None);
    let v4 = s.quote(&s.body(&[3; 64])).unwrap();
    let (o, _) = t.compare("v4 of the same TD", &v4, newer);
    assert_eq!(accepted_with(&o).platform, "OutOfDate");
}

#[test]
fn forged_or_foreign_collateral_and_roots_are_refused_alike() {
    let t = Signed::new();
    let quote = t.signer.quote(&t.signer.body(&[4; 64])).unwrap();
    let forged = t.signer.collateral_json_signed_by_pck().unwrap();
    let (o, _) = compare(
        "collateral signed by the PCK",
        &quote,
        &forged,
        &t.setup,
        None,
    );
    assert!(!o.accepted());
    // Another platform's PKI: its collateral, or its root as the anchor.
    let other = TdxTestSigner::new().unwrap();
    let foreign = other.collateral_json().unwrap();
    let (o, _) = compare("another PKI's collateral", &quote, &foreign, &t.setup, None);
    assert!(!o.accepted());
    let wrong_root = Setup {
        root: Some(other.root().clone()),
        at: t.setup.at,
    };
    let json = t.signer.collateral_json().unwrap();
    let (o, _) = compare("another root", &quote, &json, &wrong_root, None);
    assert!(!o.accepted());
    // Intel's root for a TEST-ONLY chain.
    let (o, _) = compare("Intel's root", &quote, &json, &intel(t.setup.at), None);
    assert!(!o.accepted());
}

#[test]
fn every_difference_is_named() {
    for d in DIFFERENCES {
        assert!(!d.why.is_empty() && !d.name.is_empty());
        println!("{}: ours {:?}: {}", d.name, d.ours, d.why);
    }
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/evidence.md"))
        .unwrap();
    for d in DIFFERENCES {
        assert!(
            docs.contains(d.name),
            "docs/evidence.md does not name {}",
            d.name
        );
    }
}
