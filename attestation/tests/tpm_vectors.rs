//! Real Azure vTPM quotes from ../shared/vectors verify with their real AKs; tampering fails.

use cvm_attestation::tpm::{pcr_digest, AkPublic, HashAlg, Quote, QuoteSignature};
use std::collections::BTreeMap;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors");

fn vector(path: &str) -> Vec<u8> {
    std::fs::read(format!("{VECTORS}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// bincode(Quote { signature, message, pcrs }) as written by azure-cvm-tooling.
fn split_bincode_quote(bytes: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<Vec<u8>>) {
    let mut offset = 0;
    let mut next = |len: usize| {
        let slice = bytes[offset..offset + len].to_vec();
        offset += len;
        slice
    };
    let len = u64::from_le_bytes(next(8).try_into().unwrap()) as usize;
    let signature = next(len);
    let len = u64::from_le_bytes(next(8).try_into().unwrap()) as usize;
    let message = next(len);
    let count = u64::from_le_bytes(next(8).try_into().unwrap()) as usize;
    let pcrs = (0..count).map(|_| next(32)).collect();
    (signature, message, pcrs)
}

fn sha256_bank(pcrs: &[Vec<u8>]) -> BTreeMap<HashAlg, BTreeMap<u8, Vec<u8>>> {
    let bank = pcrs
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u8, v.clone()))
        .collect();
    BTreeMap::from([(HashAlg::Sha256, bank)])
}

#[test]
fn azure_vtpm_quote_verifies_with_its_ak() {
    let (signature, message, pcrs) = split_bincode_quote(&vector("azure-cvm-tooling/quote.bin"));
    let ak = AkPublic::from_bytes(&vector("azure-cvm-tooling/akpub.pem")).unwrap();
    let sig = QuoteSignature::from_raw(&signature, &ak.key).unwrap();
    assert!(sig.verify(&ak.key, &message).unwrap());

    let quote = Quote::parse(&message).unwrap();
    assert_eq!(quote.extra_data, b"challenge");
    assert_eq!(quote.selections[0].hash, HashAlg::Sha256);
    assert_eq!(quote.selections[0].pcrs, (0..24).collect::<Vec<u8>>());
    let digest = pcr_digest(&quote, &sha256_bank(&pcrs), sig.hash()).unwrap();
    assert_eq!(digest, quote.pcr_digest);

    // One flipped byte anywhere in the message breaks the signature.
    for index in [0, 10, message.len() / 2, message.len() - 1] {
        let mut tampered = message.clone();
        tampered[index] ^= 1;
        assert!(!sig.verify(&ak.key, &tampered).unwrap(), "byte {index}");
    }
    // An altered PCR value no longer matches the quoted digest.
    let mut altered = pcrs.clone();
    altered[23][0] ^= 1;
    assert_ne!(
        pcr_digest(&quote, &sha256_bank(&altered), sig.hash()).unwrap(),
        quote.pcr_digest
    );
}

#[test]
fn truncated_or_padded_quotes_are_errors_not_panics() {
    let (_, message, _) = split_bincode_quote(&vector("azure-cvm-tooling/quote.bin"));
    for len in 0..message.len() {
        assert!(
            Quote::parse(&message[..len]).is_err(),
            "prefix {len} parsed"
        );
    }
    let mut padded = message.clone();
    padded.push(0);
    assert!(Quote::parse(&padded)
        .unwrap_err()
        .to_string()
        .contains("trailing"));
}

#[test]
fn azure_hcl_reports_parse_and_bind_var_data() {
    use cvm_attestation::azure::{ak_from_var_data, HclReport, HclReportType};
    use cvm_attestation::binding::azure_var_data_bound;
    for (path, kind) in [
        ("azure-cvm-tooling/hcl-report-snp.bin", HclReportType::Snp),
        ("azure-cvm-tooling/hcl-report-tdx.bin", HclReportType::Tdx),
        ("trustee/az-snp-hcl-report.bin", HclReportType::Snp),
        ("derived/v2-hcl-report.bin", HclReportType::Snp),
    ] {
        let bytes = vector(path);
        let hcl = HclReport::parse(&bytes).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(hcl.report_type, kind, "{path}");
        assert!(
            azure_var_data_bound(&hcl.report_data(), hcl.var_data),
            "{path}"
        );
        ak_from_var_data(hcl.var_data).unwrap_or_else(|e| panic!("{path}: {e}"));
        // Truncations are errors, never panics.
        for len in [0, 4, 0x20, 0x4c0, 0x4d3, bytes.len() - 1] {
            let _ = HclReport::parse(&bytes[..len]);
        }
    }
}

#[test]
fn trustee_quote_verifies_with_the_ak_from_its_hcl_report() {
    use cvm_attestation::azure::{ak_from_var_data, HclReport};
    let hcl_bytes = vector("trustee/az-snp-hcl-report.bin");
    let hcl = HclReport::parse(&hcl_bytes).unwrap();
    let key = ak_from_var_data(hcl.var_data).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&vector("trustee/az-snp-tpm-quote-v1.json")).unwrap();
    let message = hex::decode(json["message"].as_str().unwrap()).unwrap();
    let signature = hex::decode(json["signature"].as_str().unwrap()).unwrap();
    let sig = QuoteSignature::from_raw(&signature, &key).unwrap();
    assert!(sig.verify(&key, &message).unwrap());
    let quote = Quote::parse(&message).unwrap();
    let pcrs: Vec<Vec<u8>> = json["pcrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| hex::decode(p.as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(
        pcr_digest(&quote, &sha256_bank(&pcrs), sig.hash()).unwrap(),
        quote.pcr_digest
    );
}
