//! Reports, quotes and evidence: SEV-SNP report, Azure HCL report (SNP or TDX), TDX quote (v4
//! or v5, binary or hex), TPM quote (TPMS_ATTEST), container image archive, workload event log,
//! evidence.

use super::Found;
use anyhow::Result;
use cvm_attestation::azure::{HclReport, HclReportType};
use cvm_attestation::snp::policy::{chip_id_masked, signing_key, GuestPolicy, Tcb};
use cvm_attestation::snp::SnpReport;
use cvm_attestation::tdx::quote::body_type_name;
use cvm_attestation::tdx::{
    decode_hex_quote, looks_like_td_quote, sgx_extensions, TdQuote, TdReportBody,
};
use cvm_attestation::tpm::Quote;
use cvm_attestation::workload::WorkloadLog;
use cvm_attestation::Evidence;
use serde_json::{json, Value};

/// The binary formats, recognised by their magic or exact size; `None` when none matches.
pub fn binary(bytes: &[u8]) -> Option<Result<Found>> {
    if bytes.starts_with(b"HCLA") {
        return Some(hcl_report(bytes));
    }
    if looks_like_td_quote(bytes) {
        return Some(
            TdQuote::parse(bytes)
                .map_err(Into::into)
                .map(|quote| Found::new(td_quote_kind(&quote, false), td_quote(&quote))),
        );
    }
    if bytes.starts_with(&[0xff, 0x54, 0x43, 0x47]) {
        return Some(
            Quote::parse(bytes)
                .map_err(Into::into)
                .map(|quote| Found::new("TPM quote (TPMS_ATTEST)", tpm_quote(&quote))),
        );
    }
    if bytes.len() >= 512 && &bytes[257..262] == b"ustar" {
        return Some(image_archive(bytes));
    }
    if bytes.len() == cvm_attestation::snp::report::REPORT_LEN {
        return Some(
            SnpReport::parse(bytes)
                .map_err(Into::into)
                .map(|r| Found::new("SEV-SNP attestation report", snp_report(r))),
        );
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    if text.len() == 2 * cvm_attestation::snp::report::REPORT_LEN {
        if let Ok(decoded) = hex::decode(text) {
            return Some(
                SnpReport::parse(&decoded)
                    .map_err(Into::into)
                    .map(|r| Found::new("SEV-SNP attestation report (hex)", snp_report(r))),
            );
        }
    }
    let decoded = decode_hex_quote(bytes)?;
    Some(
        TdQuote::parse(&decoded)
            .map_err(Into::into)
            .map(|quote| Found::new(td_quote_kind(&quote, true), td_quote(&quote))),
    )
}

/// JSON this toolkit writes: evidence or a workload event log.
pub fn json_document(bytes: &[u8]) -> Option<Found> {
    if let Ok(evidence) = Evidence::from_json(bytes) {
        return Some(Found::new(
            "evidence (collaterals)",
            evidence_summary(&evidence),
        ));
    }
    serde_json::from_slice::<WorkloadLog>(bytes)
        .ok()
        .map(|log| Found::new("workload event log (PCR 23)", workload_log(&log)))
}

fn hcl_report(bytes: &[u8]) -> Result<Found> {
    let hcl = HclReport::parse(bytes)?;
    let inner = match hcl.report_type {
        HclReportType::Snp => snp_report(SnpReport::parse(hcl.hardware_report)?),
        HclReportType::Tdx => match TdReportBody::from_td_report(hcl.hardware_report) {
            Ok(body) => td_body(&body),
            Err(e) => {
                json!({ "error": e.to_string(), "td_report_data": hex::encode(hcl.report_data()) })
            }
        },
    };
    let var_data: Value =
        serde_json::from_slice(hcl.var_data).unwrap_or_else(|_| json!(hex::encode(hcl.var_data)));
    Ok(Found::new(
        "Azure HCL report",
        json!({
            "report_type": format!("{:?}", hcl.report_type),
            "var_data_sha256": hex::encode(openssl::sha::sha256(hcl.var_data)),
            "report_data_binds_var_data": cvm_attestation::binding::azure_var_data_bound(&hcl.report_data(), hcl.var_data),
            "var_data": var_data,
            "hardware_report": inner,
        }),
    ))
}

fn tpm_quote(quote: &Quote) -> Value {
    json!({
        "qualified_signer": hex::encode(&quote.qualified_signer),
        "extra_data": hex::encode(&quote.extra_data),
        "clock": quote.clock, "reset_count": quote.reset_count, "restart_count": quote.restart_count,
        "safe": quote.safe, "firmware_version": format!("{:#x}", quote.firmware_version),
        "pcr_selection": quote.selections.iter().map(|s| json!({"hash": s.hash, "pcrs": s.pcrs})).collect::<Vec<_>>(),
        "pcr_digest": hex::encode(&quote.pcr_digest),
    })
}

fn image_archive(bytes: &[u8]) -> Result<Found> {
    let images = cvm_attestation::workload::archived_images(bytes)?;
    Ok(Found::new(
        "container image archive",
        json!(images
            .iter()
            .map(|i| json!({ "tags": i.tags, "image_id": i.image_id }))
            .collect::<Vec<_>>()),
    ))
}

fn snp_report(report: SnpReport) -> Value {
    let f = &report.fields;
    let policy = GuestPolicy::from_raw(f.policy.0);
    json!({
        "version": f.version,
        "guest_svn": f.guest_svn,
        "policy": policy,
        "vmpl": f.vmpl,
        "signing_key": signing_key(&report),
        "current_tcb": Tcb::from_sev(&f.current_tcb),
        "reported_tcb": Tcb::from_sev(&f.reported_tcb),
        "committed_tcb": Tcb::from_sev(&f.committed_tcb),
        "launch_tcb": Tcb::from_sev(&f.launch_tcb),
        "measurement": hex::encode(f.measurement),
        "report_data": hex::encode(f.report_data),
        "host_data": hex::encode(f.host_data),
        "family_id": hex::encode(f.family_id),
        "image_id": hex::encode(f.image_id),
        "id_key_digest": hex::encode(f.id_key_digest),
        "author_key_digest": hex::encode(f.author_key_digest),
        "report_id": hex::encode(f.report_id),
        "chip_id": if chip_id_masked(&report) { json!("masked") } else { json!(hex::encode(f.chip_id)) },
        "firmware": format!("{}.{}.{}", f.current.major, f.current.minor, f.current.build),
    })
}

/// The TD report body's fields.
fn td_body(body: &TdReportBody) -> Value {
    json!({
        "mrtd": hex::encode(body.mrtd),
        "rtmr0": hex::encode(body.rtmr[0]),
        "rtmr1": hex::encode(body.rtmr[1]),
        "rtmr2": hex::encode(body.rtmr[2]),
        "rtmr3": hex::encode(body.rtmr[3]),
        "report_data": hex::encode(body.report_data),
        "td_attributes": hex::encode(body.td_attributes),
        "debug": body.debug(),
        "xfam": hex::encode(body.xfam),
        "mrconfigid": hex::encode(body.mrconfigid),
        "mrowner": hex::encode(body.mrowner),
        "mrownerconfig": hex::encode(body.mrownerconfig),
        "tee_tcb_svn": hex::encode(body.tee_tcb_svn),
        "mrseam": hex::encode(body.mrseam),
        "mrsignerseam": hex::encode(body.mrsignerseam),
        "seam_attributes": hex::encode(body.seam_attributes),
    })
}

/// "TDX quote (v4)", "TDX quote (v5, hex)".
fn td_quote_kind(quote: &TdQuote, hex: bool) -> &'static str {
    match (quote.header.version, hex) {
        (4, false) => "TDX quote (v4)",
        (4, true) => "TDX quote (v4, hex)",
        (_, false) => "TDX quote (v5)",
        (_, true) => "TDX quote (v5, hex)",
    }
}

/// A TD quote: header, (v5) body descriptor, TD report body (with TEE_TCB_SVN2 and MRSERVICETD
/// for a 1.5 body), QE and the PCK certificate's platform (FMSPC, TCB SVNs).
fn td_quote(quote: &TdQuote) -> Value {
    let pck = openssl::x509::X509::stack_from_pem(&quote.pck_chain_pem)
        .ok()
        .and_then(|chain| chain.first().and_then(|leaf| leaf.to_der().ok()));
    let platform = match pck.as_deref().map(sgx_extensions) {
        Some(Ok(ext)) => json!({
            "fmspc": hex::encode_upper(ext.fmspc),
            "pce_id": hex::encode_upper(ext.pce_id),
            "sgx_tcb_svns": ext.tcb_components.to_vec(),
            "pcesvn": ext.pcesvn,
            "cpusvn": hex::encode(ext.cpusvn),
        }),
        Some(Err(e)) => json!(e.to_string()),
        None => json!("no PCK certificate in the quote"),
    };
    let mut td = td_body(&quote.body);
    if let (Some(td15), Some(fields)) = (&quote.td15, td.as_object_mut()) {
        fields.insert("tee_tcb_svn2".into(), json!(hex::encode(td15.tee_tcb_svn2)));
        fields.insert("mrservicetd".into(), json!(hex::encode(td15.mrservicetd)));
    }
    let body = quote.body_descriptor.map(
        |d| json!({ "type": d.body_type, "name": body_type_name(d.body_type), "size": d.size }),
    );
    let mut out = json!({
        "version": quote.header.version,
        "tee_type": format!("{:#x}", quote.header.tee_type),
        "qe_vendor_id": hex::encode(quote.header.qe_vendor_id),
        "td": td,
        "qe": {
            "mrsigner": hex::encode(quote.qe_report.mrsigner),
            "isvprodid": quote.qe_report.isvprodid,
            "isvsvn": quote.qe_report.isvsvn,
        },
        "pck_platform": platform,
    });
    if let Some(body) = body {
        out["body"] = body; // v5: the body descriptor
    }
    out
}

fn workload_log(log: &WorkloadLog) -> Value {
    json!({
        "pcr": log.pcr,
        "replayed_value": log.replay().to_hex(),
        "structure": match log.generations() { Ok(g) => format!("{} measurement(s)", g.len()), Err(e) => e.to_string() },
        "events": log.events.iter().map(|e| json!({
            "kind": e.kind, "name": e.name, "payload_digest": e.payload_digest.to_hex(),
            "payload": e.payload, "extend_digest": e.extend_digest().to_hex(),
        })).collect::<Vec<_>>(),
    })
}

fn evidence_summary(evidence: &Evidence) -> Value {
    let quote = Quote::parse(evidence.tpm.quote.as_slice()).ok();
    json!({
        "platform": evidence.platform().to_string(),
        "nonce": hex::encode(evidence.nonce.as_slice()),
        "sev_snp": evidence.sev_snp.as_ref().map(|s| {
            let report = s.hcl_report.as_ref()
                .and_then(|h| HclReport::parse(h.as_slice()).ok().map(|h| h.hardware_report.to_vec()))
                .unwrap_or_else(|| s.attestation_report.0.clone());
            SnpReport::parse(&report).map(snp_report).unwrap_or_else(|e| json!(e.to_string()))
        }),
        "tdx": evidence.tdx.as_ref().map(|t| {
            TdQuote::parse(t.quote.as_slice()).map(|q| td_quote(&q)).unwrap_or_else(|e| json!(e.to_string()))
        }),
        "tpm": {
            "quote_extra_data": quote.as_ref().map(|q| hex::encode(&q.extra_data)),
            "quote_pcr_digest": quote.as_ref().map(|q| hex::encode(&q.pcr_digest)),
            "pcrs": evidence.tpm.pcrs.pcrs.iter().map(|(i, v)| (i.to_string(), json!(hex::encode(v.as_slice())))).collect::<serde_json::Map<_, _>>(),
        },
        "workload_log": evidence.event_logs.workload.as_ref().map(workload_log),
    })
}
