//! Differential test against Microsoft's `az-snp-vtpm` (with `az-cvm-vtpm`, on `sev` 7): every
//! Azure vector in ../shared/vectors (HCL reports, vTPM quotes, var_data) gets the same
//! accept/reject and the same AK from our verifier and from az-snp-vtpm's, and so do mutations
//! of them and TEST-ONLY HCL reports of the SNP test signer (fresh keys each run), or they differ
//! in a way named in [`DIFFERENCES`] (docs/evidence.md, "Differential testing").
//!
//! Compared: the HCL report (parse, SNP report signature by the VCEK, VCEK <- ASK <- ARK, the
//! var_data binding), the AK in var_data, and the vTPM quote (signature by that AK, nonce, PCR
//! digest). Not compared: what az-snp-vtpm does not check at all (guest policy, VMPL, minimum
//! TCB, CRLs); our `snp.*` policy checks are left out of our verdict here.

use az_snp_vtpm::certs::{AmdChain, Vcek};
use az_snp_vtpm::hcl::HclReport as AzHcl;
use az_snp_vtpm::report::{AttestationReport, Validateable};
use az_snp_vtpm::vtpm::Quote as AzQuote;
use cvm_attestation::azure::{ak_from_var_data, HclReport};
use cvm_attestation::encoding::Bytes;
use cvm_attestation::golden::GoldenSnp;
use cvm_attestation::snp::certs::{parse_certificate, parse_pem_chain};
use cvm_attestation::snp::TrustedRoot;
use cvm_attestation::tpm::{pcr_digest, HashAlg, Quote, QuoteSignature};
use cvm_attestation::verify::verify_snp_report;
use cvm_attestation::VerifyOptions;
use openssl::pkey::{PKey, Public};
use openssl::x509::X509;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use test_support::SnpTestSigner;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors");
/// 2025-06-01, inside every vector certificate's validity. az-snp-vtpm can only check the
/// VCEK's validity at the wall clock (both instants are inside it until 2030).
const AT: i64 = 1_748_736_000;

/// A place where the two implementations disagree on purpose.
struct Difference {
    name: &'static str,
    ours: Outcome,
    why: &'static str,
}

/// What ours does where az-snp-vtpm does otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Ours accepts, az-snp-vtpm refuses.
    Accepts,
    /// Ours refuses, az-snp-vtpm accepts.
    Refuses,
    /// Both refuse, but az-snp-vtpm by panicking.
    RefusesWhereTheyPanic,
}

const PINNED_ROOTS: Difference = Difference {
    name: "azure-pinned-amd-roots",
    ours: Outcome::Refuses,
    why: "az-snp-vtpm checks that the ARK it is given is self-signed and signed the ASK, not that \
          it is AMD's ARK; ours trusts only the pinned AMD ARKs (or TEST-ONLY roots the caller \
          names), so a chain of fresh keys that signs a report of its own is refused",
};
const CHAIN_FROM_PINNED: Difference = Difference {
    name: "azure-chain-built-from-pinned-certificates",
    ours: Outcome::Accepts,
    why: "az-snp-vtpm takes the ASK and ARK as given and refuses them in the wrong order; ours \
          builds VCEK <- ASK <- ARK itself from the supplied certificates, AMD's built-in ASKs \
          and the pinned ARKs, so the order of the supplied chain does not matter",
};
const SIGNED_BYTES: Difference = Difference {
    name: "azure-signature-over-the-exact-bytes",
    ours: Outcome::Refuses,
    why: "az-snp-vtpm checks the signature over sev 7's re-serialization of the report, which \
          drops the reserved bytes of its TCB_VERSION fields, so a report with those signed \
          bytes changed still verifies there; ours checks the signature over the bytes received",
};
const HCL_MAGIC: Difference = Difference {
    name: "azure-hcl-magic-checked",
    ours: Outcome::Refuses,
    why: "the HCL header's \"HCLA\" signature is not covered by the SNP signature and \
          az-snp-vtpm ignores it; ours refuses bytes that do not say they are an HCL report \
          rather than guess",
};
const HASH_TYPE: Difference = Difference {
    name: "azure-var-data-hash-type",
    ours: Outcome::RefusesWhereTheyPanic,
    why: "a var_data hash type other than SHA-256 (1) makes az-snp-vtpm panic \
          (unimplemented!); ours returns an error naming the hash type",
};
const EXTRA_PCRS: Difference = Difference {
    name: "azure-unselected-pcr-values-ignored",
    ours: Outcome::Accepts,
    why: "az-snp-vtpm hashes every PCR value it is handed, in order; ours hashes the PCRs the \
          quote selects, by index, and reports only those: a value the quote does not select \
          is ignored, never trusted",
};

const DIFFERENCES: &[&Difference] = &[
    &PINNED_ROOTS,
    &CHAIN_FROM_PINNED,
    &SIGNED_BYTES,
    &HCL_MAGIC,
    &HASH_TYPE,
    &EXTRA_PCRS,
];

/// Checks two verdicts agree, or differ as `expected` says.
fn judge(
    what: &str,
    o: &Result<(), String>,
    t: &Result<(), String>,
    expected: Option<&Difference>,
) {
    let ok = match expected.map(|d| d.ours) {
        None => o.is_ok() == t.is_ok(),
        Some(Outcome::Accepts) => o.is_ok() && t.is_err(),
        Some(Outcome::Refuses) => o.is_err() && t.is_ok(),
        Some(Outcome::RefusesWhereTheyPanic) => {
            o.is_err() && t.as_ref().err().is_some_and(|e| e == "panicked")
        }
    };
    let expected = expected.map_or("agreement", |d| d.name);
    assert!(
        ok,
        "{what}: expected {expected}, got ours {o:?}, theirs {t:?}"
    );
}

fn vector(path: &str) -> Vec<u8> {
    std::fs::read(format!("{VECTORS}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// An HCL report with the VCEK that signs it and the ASK and ARK above that.
#[derive(Clone)]
struct HclCase {
    name: &'static str,
    hcl: Vec<u8>,
    vcek: X509,
    ask: X509,
    ark: X509,
}

fn hcl_cases() -> Vec<HclCase> {
    let trustee = parse_pem_chain(&vector("trustee/az-snp-vcek-chain.pem")).unwrap();
    let milan = parse_pem_chain(&vector("virtee-sev/cert_chain_milan.pem")).unwrap();
    let tooling = parse_pem_chain(&vector("azure-cvm-tooling/certs.pem")).unwrap();
    vec![
        HclCase {
            name: "trustee/az-snp-hcl-report.bin",
            hcl: vector("trustee/az-snp-hcl-report.bin"),
            vcek: trustee[0].clone(),
            ask: trustee[1].clone(),
            ark: trustee[2].clone(),
        },
        HclCase {
            name: "derived/v2-hcl-report.bin",
            hcl: vector("derived/v2-hcl-report.bin"),
            vcek: parse_certificate(&vector("derived/v2-vcek.der")).unwrap(),
            ask: milan[0].clone(),
            ark: milan[1].clone(),
        },
        // Signed by another chip than certs.pem's VCEK: both must refuse.
        HclCase {
            name: "azure-cvm-tooling/hcl-report-snp.bin",
            hcl: vector("azure-cvm-tooling/hcl-report-snp.bin"),
            vcek: tooling[0].clone(),
            ask: tooling[1].clone(),
            ark: tooling[2].clone(),
        },
    ]
}

/// The checks of ours that az-snp-vtpm has a counterpart for.
const COMPARED: [&str; 6] = [
    "azure.hcl_report",
    "snp.report",
    "snp.chain",
    "snp.signature",
    "snp.vcek_matches_report",
    "snp.report_data",
];

/// Ours: `verify_snp_report` (the `cvm-cli verify --report` path) on the HCL report; `Ok` when
/// every compared check passed, else the failed ones.
fn ours(case: &HclCase, roots: &[TrustedRoot]) -> Result<(), String> {
    let der = |c: &X509| Bytes(c.to_der().unwrap());
    let mut options = VerifyOptions::new(AT);
    if !roots.is_empty() {
        options = options.with_test_roots(roots.iter().cloned());
    }
    let report = verify_snp_report(
        &case.hcl,
        &case.vcek.to_der().unwrap(),
        &[der(&case.ask), der(&case.ark)],
        &GoldenSnp::default(),
        &options,
    );
    let failed: Vec<String> = report
        .failures()
        .filter(|c| COMPARED.contains(&c.name.as_str()))
        .map(|c| format!("{}: {}", c.name, c.reason))
        .collect();
    let bound = report.check("snp.report_data").is_some();
    match (failed.is_empty(), bound) {
        (true, true) => Ok(()),
        (true, false) => Err("var_data binding not checked".into()),
        (false, _) => Err(failed.join("; ")),
    }
}

/// az-snp-vtpm's documented flow: parse, chain, VCEK, report signature, var_data hash. A panic
/// is a refusal (and named as such).
fn theirs(case: &HclCase) -> Result<(), String> {
    let run = || -> Result<(), String> {
        let hcl = AzHcl::new(case.hcl.clone()).map_err(|e| e.to_string())?;
        let var_data_hash = hcl.var_data_sha256();
        let report: AttestationReport = (&hcl).try_into().map_err(|e| format!("{e}"))?;
        let chain = AmdChain {
            ask: case.ask.clone(),
            ark: case.ark.clone(),
        };
        chain.validate().map_err(|e| e.to_string())?;
        let vcek = Vcek(case.vcek.clone());
        vcek.validate(&chain).map_err(|e| e.to_string())?;
        report.validate(&vcek).map_err(|e| e.to_string())?;
        if var_data_hash != report.report_data[..32] {
            return Err("var_data hash mismatch".into());
        }
        Ok(())
    };
    catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|_| Err("panicked".into()))
}

/// Both verdicts on an HCL report agree, or differ as `expected` says.
fn compare(what: &str, case: &HclCase, roots: &[TrustedRoot], expected: Option<&Difference>) {
    judge(what, &ours(case, roots), &theirs(case), expected);
}

/// Both read the same AK from var_data (as SPKI DER), or both find none.
fn ak_pair(var_data_hcl: &[u8]) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let o = HclReport::parse(var_data_hcl)
        .ok()
        .and_then(|hcl| ak_from_var_data(hcl.var_data).ok())
        .map(|key| key.public_key_to_der().unwrap());
    let t = catch_unwind(|| {
        AzHcl::new(var_data_hcl.to_vec())
            .ok()
            .and_then(|hcl| hcl.ak_pub().ok())
            .and_then(|jwk| jwk.key.try_to_der().ok())
    })
    .unwrap_or(None);
    (o, t)
}

#[test]
fn every_azure_hcl_report_gets_the_same_verdict() {
    for case in hcl_cases() {
        compare(case.name, &case, &[], None);
        let accepted = ours(&case, &[]).is_ok();
        assert_eq!(
            accepted,
            case.name != "azure-cvm-tooling/hcl-report-snp.bin",
            "{}",
            case.name
        );
    }
}

#[test]
fn every_azure_hcl_report_yields_the_same_ak() {
    for path in [
        "trustee/az-snp-hcl-report.bin",
        "derived/v2-hcl-report.bin",
        "azure-cvm-tooling/hcl-report-snp.bin",
        "azure-cvm-tooling/hcl-report-tdx.bin",
    ] {
        let (o, t) = ak_pair(&vector(path));
        assert!(o.is_some(), "{path}: no AK");
        assert_eq!(o, t, "{path}: the AKs differ");
    }
}

/// `hcl` with its var_data replaced by `var_data` (size field updated).
fn with_var_data(hcl: &[u8], var_data: &[u8]) -> Vec<u8> {
    let mut out = hcl[..0x4d4].to_vec();
    out[0x4d0..0x4d4].copy_from_slice(&(var_data.len() as u32).to_le_bytes());
    out.extend_from_slice(var_data);
    out
}

#[test]
fn the_var_data_sample_yields_the_same_ak_and_binding() {
    let var_data = vector("azure-cvm-tooling/var-data.bin");
    let hcl = with_var_data(&vector("trustee/az-snp-hcl-report.bin"), &var_data);
    let (o, t) = ak_pair(&hcl);
    assert!(o.is_some());
    assert_eq!(o, t);
    // Bound to the trustee report only if it is that report's var_data.
    let case = HclCase {
        name: "trustee report with the azure-cvm-tooling var_data",
        hcl,
        ..hcl_cases().remove(0)
    };
    compare(case.name, &case, &[], None);
    // var_data whose JSON has no HCLAkPub, or is not JSON: neither finds an AK.
    for text in [&br#"{"keys":[]}"#[..], b"not json", b""] {
        let hcl = with_var_data(&vector("trustee/az-snp-hcl-report.bin"), text);
        assert_eq!(
            ak_pair(&hcl),
            (None, None),
            "{}",
            String::from_utf8_lossy(text)
        );
    }
}

/// Offsets in the SNP report of its TCB_VERSION fields: current, reported, committed and launch
/// TCB. Bytes 2..=5 of each are reserved (Milan and Genoa).
const TCB_FIELDS: [usize; 4] = [0x38, 0x180, 0x1e0, 0x1f0];

/// The difference a flipped byte at `offset` of an HCL report is expected to show.
fn expected_for_offset(offset: usize) -> Option<&'static Difference> {
    let reserved_tcb = |o: usize| {
        TCB_FIELDS
            .iter()
            .any(|field| (0x20 + field + 2..=0x20 + field + 5).contains(&o))
    };
    match offset {
        0..=3 => Some(&HCL_MAGIC),
        o if reserved_tcb(o) => Some(&SIGNED_BYTES),
        // The request data's hash type (0x4c0 + 12).
        0x4cc..=0x4cf => Some(&HASH_TYPE),
        _ => None,
    }
}

#[test]
fn flipped_hcl_report_bytes_are_judged_alike() {
    let mut refused = 0;
    for case in hcl_cases().into_iter().take(2) {
        let len = case.hcl.len();
        let mut offsets: Vec<usize> = (0..len).step_by(13).collect();
        // Header, the report's signed part and signature, request data, var_data, the end.
        offsets.extend([
            0, 3, 4, 0x1f, 0x20, 0x2bf, 0x2c0, 0x307, 0x308, 0x350, 0x4bf,
        ]);
        offsets.extend([0x4c0, 0x4c4, 0x4c8, 0x4cc, 0x4d0, 0x4d4, len - 1]);
        offsets.sort();
        offsets.dedup();
        for offset in offsets {
            let mut altered = case.clone();
            altered.hcl[offset] ^= 0x01;
            let what = format!("{}, byte {offset:#x} flipped", case.name);
            compare(&what, &altered, &[], expected_for_offset(offset));
            refused += usize::from(ours(&altered, &[]).is_err());
        }
        // Truncated: shorter var_data than declared, or no request data at all.
        for cut in [len - 1, 0x4d4 + 10, 0x4c0, 0x100] {
            let mut altered = case.clone();
            altered.hcl.truncate(cut);
            compare(&format!("{} cut to {cut}", case.name), &altered, &[], None);
        }
    }
    assert!(refused > 150, "only {refused} flips refused");
}

#[test]
fn another_chips_vcek_or_a_swapped_chain_is_refused_alike() {
    let cases = hcl_cases();
    let (trustee, v2) = (&cases[0], &cases[1]);
    let swapped = HclCase {
        vcek: v2.vcek.clone(),
        ..trustee.clone()
    };
    compare("trustee report, v2's VCEK", &swapped, &[], None);
    assert!(ours(&swapped, &[]).is_err());
    // The Genoa VCEK under the Milan chain.
    let genoa = X509::from_pem(&vector("trustee/az-snp-vcek-genoa.pem")).unwrap();
    let genoa = HclCase {
        vcek: genoa,
        ..trustee.clone()
    };
    compare("trustee report, Genoa VCEK", &genoa, &[], None);
    // ASK and ARK swapped.
    let upside_down = HclCase {
        ask: trustee.ark.clone(),
        ark: trustee.ask.clone(),
        ..trustee.clone()
    };
    compare(
        "ASK and ARK swapped",
        &upside_down,
        &[],
        Some(&CHAIN_FROM_PINNED),
    );
}

#[test]
fn a_chain_of_fresh_keys_is_refused_only_by_ours() {
    let signer = SnpTestSigner::new().unwrap();
    let var_data = vector("azure-cvm-tooling/var-data.bin");
    let hcl = signer.hcl_report(&var_data, &[7; 48], 0x30000).unwrap();
    let case = HclCase {
        name: "TEST-ONLY chain",
        hcl,
        vcek: X509::from_der(&signer.vcek_der()).unwrap(),
        ask: signer.ask().clone(),
        ark: signer.ark().clone(),
    };
    compare(case.name, &case, &[], Some(&PINNED_ROOTS));
    // Naming its root as a TEST-ONLY root is the only way ours accepts it.
    let named = TrustedRoot {
        name: "TEST-ONLY SNP root".into(),
        certificate: signer.ark().clone(),
        test_only: true,
    };
    compare(
        "TEST-ONLY chain, root named",
        &case,
        std::slice::from_ref(&named),
        None,
    );
    // Both see the same AK in its var_data, and a changed var_data breaks the binding for both.
    let (o, t) = ak_pair(&case.hcl);
    assert!(o.is_some() && o == t);
    let mut altered = case.clone();
    let last = altered.hcl.len() - 2;
    altered.hcl[last] ^= 1;
    compare(
        "TEST-ONLY chain, var_data changed",
        &altered,
        &[named],
        None,
    );
}

/// A vTPM quote as Azure's tooling hands it over: TPMS_ATTEST, the AK's signature, the SHA-256
/// PCR values in index order, and the nonce the verifier asked for.
#[derive(Clone)]
struct QuoteCase {
    name: &'static str,
    message: Vec<u8>,
    signature: Vec<u8>,
    pcrs: Vec<Vec<u8>>,
    nonce: Vec<u8>,
}

/// bincode(Quote { signature, message, pcrs }) as azure-cvm-tooling writes it.
fn from_bincode(name: &'static str, bytes: &[u8], nonce: &[u8]) -> QuoteCase {
    let mut rest = bytes;
    let mut next = |len: usize| {
        let (head, tail) = rest.split_at(len);
        rest = tail;
        head.to_vec()
    };
    let length = |next: &mut dyn FnMut(usize) -> Vec<u8>| {
        u64::from_le_bytes(next(8).try_into().unwrap()) as usize
    };
    let len = length(&mut next);
    let signature = next(len);
    let len = length(&mut next);
    let message = next(len);
    let count = length(&mut next);
    let pcrs = (0..count).map(|_| next(32)).collect();
    QuoteCase {
        name,
        message,
        signature,
        pcrs,
        nonce: nonce.to_vec(),
    }
}

/// The AK in an HCL report's var_data.
fn hcl_ak(path: &str) -> PKey<Public> {
    let bytes = vector(path);
    ak_from_var_data(HclReport::parse(&bytes).unwrap().var_data).unwrap()
}

/// Every real vTPM quote with the AK that made it.
fn quote_cases() -> Vec<(QuoteCase, PKey<Public>)> {
    let tooling_ak =
        cvm_attestation::tpm::AkPublic::from_bytes(&vector("azure-cvm-tooling/akpub.pem"))
            .unwrap()
            .key;
    let trustee_ak = hcl_ak("trustee/az-snp-hcl-report.bin");
    let json: serde_json::Value =
        serde_json::from_slice(&vector("trustee/az-snp-tpm-quote-v1.json")).unwrap();
    let hex_field = |name: &str| hex::decode(json[name].as_str().unwrap()).unwrap();
    let v1 = QuoteCase {
        name: "trustee/az-snp-tpm-quote-v1.json",
        message: hex_field("message"),
        signature: hex_field("signature"),
        pcrs: json["pcrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| hex::decode(p.as_str().unwrap()).unwrap())
            .collect(),
        nonce: b"challenge".to_vec(),
    };
    let v2 = QuoteCase {
        name: "derived/v2-tpm-quote.msg",
        message: vector("derived/v2-tpm-quote.msg"),
        signature: vector("derived/v2-tpm-quote.sig"),
        pcrs: vector("derived/v2-pcrs.bin")
            .chunks(32)
            .map(<[u8]>::to_vec)
            .collect(),
        nonce: hex::decode(
            "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9a\
             a398f647caa2338748cd0fd9f5f819ef",
        )
        .unwrap(),
    };
    vec![
        (
            from_bincode(
                "azure-cvm-tooling/quote.bin",
                &vector("azure-cvm-tooling/quote.bin"),
                b"challenge",
            ),
            tooling_ak,
        ),
        (
            from_bincode(
                "trustee/az-snp-quote.bin",
                &vector("trustee/az-snp-quote.bin"),
                b"challenge",
            ),
            trustee_ak.clone(),
        ),
        (v1, trustee_ak),
        (v2, hcl_ak("derived/v2-hcl-report.bin")),
    ]
}

/// Ours: the AK's signature over TPMS_ATTEST, the nonce as extra data, the PCR digest of the
/// selected PCRs.
fn ours_quote(q: &QuoteCase, ak: &PKey<Public>) -> Result<(), String> {
    let signature = QuoteSignature::from_raw(&q.signature, ak).map_err(|e| e.to_string())?;
    if !signature
        .verify(ak, &q.message)
        .map_err(|e| e.to_string())?
    {
        return Err("signature".into());
    }
    let quote = Quote::parse(&q.message).map_err(|e| e.to_string())?;
    if quote.extra_data != q.nonce {
        return Err("nonce".into());
    }
    let bank: BTreeMap<u8, Vec<u8>> = (0u8..).zip(q.pcrs.iter().cloned()).collect();
    let banks = BTreeMap::from([(HashAlg::Sha256, bank)]);
    let digest = pcr_digest(&quote, &banks, signature.hash()).map_err(|e| e.to_string())?;
    (digest == quote.pcr_digest)
        .then_some(())
        .ok_or_else(|| "PCR digest".into())
}

/// az-cvm-vtpm's `Quote::verify` (signature, nonce, PCRs).
fn theirs_quote(q: &QuoteCase, ak: &PKey<Public>) -> Result<(), String> {
    let pcrs: Result<Vec<[u8; 32]>, _> = q.pcrs.iter().map(|p| p.as_slice().try_into()).collect();
    let pcrs = pcrs.map_err(|_| "a PCR value is not 32 bytes".to_string())?;
    let quote: AzQuote = serde_json::from_value(serde_json::json!({
        "signature": q.signature, "message": q.message, "pcrs": pcrs,
    }))
    .map_err(|e| e.to_string())?;
    catch_unwind(AssertUnwindSafe(|| quote.verify(ak, &q.nonce)))
        .map_err(|_| "panicked".to_string())?
        .map_err(|e| e.to_string())
}

fn compare_quote(what: &str, q: &QuoteCase, ak: &PKey<Public>, expected: Option<&Difference>) {
    judge(what, &ours_quote(q, ak), &theirs_quote(q, ak), expected);
}

#[test]
fn every_real_vtpm_quote_verifies_alike_with_its_ak() {
    let cases = quote_cases();
    for (q, ak) in &cases {
        compare_quote(q.name, q, ak, None);
        assert!(ours_quote(q, ak).is_ok(), "{}", q.name);
    }
    // Each with another quote's AK: refused by both.
    let (tooling_ak, trustee_ak) = (&cases[0].1, &cases[1].1);
    compare_quote("tooling quote, trustee AK", &cases[0].0, trustee_ak, None);
    compare_quote("trustee quote, tooling AK", &cases[1].0, tooling_ak, None);
    // The legacy message whose signer is unknown: no AK here verifies it, for either.
    let legacy = QuoteCase {
        name: "trustee/az-snp-tpm-quote.msg",
        message: vector("trustee/az-snp-tpm-quote.msg"),
        signature: vector("trustee/az-snp-tpm-quote.sig"),
        pcrs: Vec::new(),
        nonce: b"challenge".to_vec(),
    };
    for (_, ak) in &cases {
        compare_quote(legacy.name, &legacy, ak, None);
        assert!(ours_quote(&legacy, ak).is_err());
    }
}

#[test]
fn changed_vtpm_quotes_are_refused_alike() {
    for (q, ak) in quote_cases() {
        let mut refused = 0;
        for offset in (0..q.message.len()).step_by(5).chain([q.message.len() - 1]) {
            let mut altered = q.clone();
            altered.message[offset] ^= 1;
            compare_quote(
                &format!("{} message[{offset}]", q.name),
                &altered,
                &ak,
                None,
            );
            refused += usize::from(ours_quote(&altered, &ak).is_err());
        }
        for offset in [0, 1, q.signature.len() / 2, q.signature.len() - 1] {
            let mut altered = q.clone();
            altered.signature[offset] ^= 1;
            compare_quote(
                &format!("{} signature[{offset}]", q.name),
                &altered,
                &ak,
                None,
            );
        }
        let mut altered = q.clone();
        altered.pcrs[23][0] ^= 1;
        compare_quote(&format!("{} PCR 23 changed", q.name), &altered, &ak, None);
        let mut altered = q.clone();
        altered.pcrs.pop();
        compare_quote(&format!("{} PCR 23 missing", q.name), &altered, &ak, None);
        let mut altered = q.clone();
        altered.nonce = b"another nonce".to_vec();
        compare_quote(&format!("{} another nonce", q.name), &altered, &ak, None);
        let mut altered = q.clone();
        altered.pcrs.push(vec![0xaa; 32]);
        let what = format!("{} a 25th PCR value", q.name);
        compare_quote(&what, &altered, &ak, Some(&EXTRA_PCRS));
        assert!(
            refused * 10 >= q.message.len() / 5 * 9,
            "{}: {refused}",
            q.name
        );
    }
}

#[test]
fn every_difference_is_named() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/evidence.md"))
        .unwrap();
    for d in DIFFERENCES {
        println!("{}: ours {:?}: {}", d.name, d.ours, d.why);
        assert!(
            docs.contains(d.name),
            "docs/evidence.md does not name {}",
            d.name
        );
    }
}
