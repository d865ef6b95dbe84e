//! TCB level selection (Intel TDX DCAP Quote Verification, "TCB info" and "QE identity"):
//! the platform's level from the PCK certificate's SGX SVNs and PCESVN together with the TD's
//! TEE_TCB_SVN, the TDX module's level from its identity, and the Quoting Enclave's level.

use super::body::TdReportBody;
use super::collateral::{hex_field, IsvTcbLevel, QeIdentity, TcbInfo};
use super::pck::SgxExtensions;
use super::quote::QeReport;

/// Intel's TCB status of a level (Intel PCS API v4, "tcbStatus"). An unknown status is kept
/// by name so a newer collateral never fails to parse, but no golden can allow it by default.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TcbStatus {
    UpToDate,
    SwHardeningNeeded,
    ConfigurationNeeded,
    ConfigurationAndSwHardeningNeeded,
    OutOfDate,
    OutOfDateConfigurationNeeded,
    Revoked,
    Other(String),
}

impl TcbStatus {
    /// Intel's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            TcbStatus::UpToDate => "UpToDate",
            TcbStatus::SwHardeningNeeded => "SWHardeningNeeded",
            TcbStatus::ConfigurationNeeded => "ConfigurationNeeded",
            TcbStatus::ConfigurationAndSwHardeningNeeded => "ConfigurationAndSWHardeningNeeded",
            TcbStatus::OutOfDate => "OutOfDate",
            TcbStatus::OutOfDateConfigurationNeeded => "OutOfDateConfigurationNeeded",
            TcbStatus::Revoked => "Revoked",
            TcbStatus::Other(name) => name,
        }
    }

    /// Every status Intel defines, for help texts and errors.
    pub const KNOWN: [&'static str; 7] = [
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "Revoked",
    ];
}

impl From<&str> for TcbStatus {
    fn from(text: &str) -> Self {
        match text {
            "UpToDate" => TcbStatus::UpToDate,
            "SWHardeningNeeded" => TcbStatus::SwHardeningNeeded,
            "ConfigurationNeeded" => TcbStatus::ConfigurationNeeded,
            "ConfigurationAndSWHardeningNeeded" => TcbStatus::ConfigurationAndSwHardeningNeeded,
            "OutOfDate" => TcbStatus::OutOfDate,
            "OutOfDateConfigurationNeeded" => TcbStatus::OutOfDateConfigurationNeeded,
            "Revoked" => TcbStatus::Revoked,
            other => TcbStatus::Other(other.to_owned()),
        }
    }
}

impl std::fmt::Display for TcbStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for TcbStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for TcbStatus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Ok(TcbStatus::from(text.as_ref()))
    }
}

/// The status Intel assigned to the matching level, with its date and advisories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcbMatch {
    pub status: TcbStatus,
    pub tcb_date: String,
    pub advisory_ids: Vec<String>,
}

/// The platform's TCB level: the first level (levels are listed from newest) whose 16 SGX
/// component SVNs and PCESVN are at or below the PCK certificate's, and whose TDX component SVNs
/// are at or below the TD's TEE_TCB_SVN (from index 2 when TEE_TCB_SVN[1], the TDX module's
/// major version, is set: the module's own SVN is then judged by its identity).
pub fn platform_level(
    tcb_info: &TcbInfo,
    pck: &SgxExtensions,
    body: &TdReportBody,
) -> Result<TcbMatch, String> {
    let first_tdx = if body.tee_tcb_svn[1] > 0 { 2 } else { 0 };
    for level in &tcb_info.tcb_levels {
        let sgx = &level.tcb.sgxtcbcomponents;
        let Some(tdx) = &level.tcb.tdxtcbcomponents else {
            return Err("a TCB level has no tdxtcbcomponents (not TDX TCB info)".into());
        };
        if sgx.len() != 16 || tdx.len() != 16 {
            return Err(format!(
                "a TCB level has {} SGX and {} TDX components, expected 16 each",
                sgx.len(),
                tdx.len()
            ));
        }
        let sgx_ok = sgx
            .iter()
            .zip(pck.tcb_components)
            .all(|(level, have)| u16::from(have) >= level.svn);
        let tdx_ok = tdx
            .iter()
            .zip(body.tee_tcb_svn)
            .skip(first_tdx)
            .all(|(level, have)| u16::from(have) >= level.svn);
        if sgx_ok && pck.pcesvn >= level.tcb.pcesvn && tdx_ok {
            return Ok(TcbMatch {
                status: level.tcb_status.clone(),
                tcb_date: level.tcb_date.clone(),
                advisory_ids: level.advisory_ids.clone(),
            });
        }
    }
    Err(format!(
        "no TCB level matches: PCK SVNs {:?} PCESVN {}, TEE_TCB_SVN {} are below every level",
        pck.tcb_components,
        pck.pcesvn,
        hex::encode(body.tee_tcb_svn)
    ))
}

fn masked_eq(actual: &[u8], expected: &[u8], mask: &[u8]) -> bool {
    actual.len() == expected.len()
        && actual.len() == mask.len()
        && actual
            .iter()
            .zip(expected)
            .zip(mask)
            .all(|((a, e), m)| a & m == e & m)
}

fn isv_level(levels: &[IsvTcbLevel], isvsvn: u16) -> Option<TcbMatch> {
    levels
        .iter()
        .find(|level| isvsvn >= level.tcb.isvsvn)
        .map(|level| TcbMatch {
            status: level.tcb_status.clone(),
            tcb_date: level.tcb_date.clone(),
            advisory_ids: level.advisory_ids.clone(),
        })
}

/// The TDX module: MRSIGNERSEAM and SEAM attributes must match the identity Intel lists; with a
/// module major version > 0 (TEE_TCB_SVN[1]) its identity `TDX_<major>` also gives a TCB level
/// for the module's SVN (TEE_TCB_SVN[0]). Ok(None): no module level applies (version 0).
pub fn module_level(tcb_info: &TcbInfo, body: &TdReportBody) -> Result<Option<TcbMatch>, String> {
    let major = body.tee_tcb_svn[1];
    let (mrsigner, attributes, mask, levels) = if major > 0 {
        let id = format!("TDX_{major:02X}");
        let identity = tcb_info
            .tdx_module_identities
            .iter()
            .find(|i| i.id.eq_ignore_ascii_case(&id))
            .ok_or_else(|| format!("TCB info has no TDX module identity {id}"))?;
        (
            &identity.mrsigner,
            &identity.attributes,
            &identity.attributes_mask,
            Some(&identity.tcb_levels),
        )
    } else {
        let module = tcb_info
            .tdx_module
            .as_ref()
            .ok_or("TCB info has no tdxModule")?;
        (
            &module.mrsigner,
            &module.attributes,
            &module.attributes_mask,
            None,
        )
    };
    let mrsigner: [u8; 48] = hex_field("tdxModule mrsigner", mrsigner)?;
    if mrsigner != body.mrsignerseam {
        return Err(format!(
            "MRSIGNERSEAM {} is not the TDX module signer {}",
            hex::encode(body.mrsignerseam),
            hex::encode(mrsigner)
        ));
    }
    let attributes: [u8; 8] = hex_field("tdxModule attributes", attributes)?;
    let mask: [u8; 8] = hex_field("tdxModule attributesMask", mask)?;
    if !masked_eq(&body.seam_attributes, &attributes, &mask) {
        return Err(format!(
            "SEAM attributes {} do not match the TDX module's {}",
            hex::encode(body.seam_attributes),
            hex::encode(attributes)
        ));
    }
    match levels {
        Some(levels) => isv_level(levels, u16::from(body.tee_tcb_svn[0]))
            .map(Some)
            .ok_or_else(|| {
                format!(
                    "the TDX module's SVN {} is below every level of TDX_{major:02X}",
                    body.tee_tcb_svn[0]
                )
            }),
        None => Ok(None),
    }
}

/// The Quoting Enclave against its identity: MRSIGNER, ISVPRODID, MISCSELECT and attributes
/// (masked) must match; its ISVSVN selects the level.
pub fn qe_level(identity: &QeIdentity, qe: &QeReport) -> Result<TcbMatch, String> {
    let mrsigner: [u8; 32] = hex_field("QE identity mrsigner", &identity.mrsigner)?;
    if mrsigner != qe.mrsigner {
        return Err(format!(
            "QE MRSIGNER {} is not {}",
            hex::encode(qe.mrsigner),
            hex::encode(mrsigner)
        ));
    }
    if identity.isvprodid != qe.isvprodid {
        return Err(format!(
            "QE ISVPRODID {} is not {}",
            qe.isvprodid, identity.isvprodid
        ));
    }
    let misc: [u8; 4] = hex_field("QE identity miscselect", &identity.miscselect)?;
    let misc_mask: [u8; 4] = hex_field("QE identity miscselectMask", &identity.miscselect_mask)?;
    // Hex in the JSON is big-endian reading of the u32.
    if !masked_eq(&qe.miscselect.to_be_bytes(), &misc, &misc_mask) {
        return Err(format!(
            "QE MISCSELECT {:08x} does not match {}",
            qe.miscselect, identity.miscselect
        ));
    }
    let attributes: [u8; 16] = hex_field("QE identity attributes", &identity.attributes)?;
    let mask: [u8; 16] = hex_field("QE identity attributesMask", &identity.attributes_mask)?;
    if !masked_eq(&qe.attributes, &attributes, &mask) {
        return Err(format!(
            "QE attributes {} do not match {}",
            hex::encode(qe.attributes),
            identity.attributes
        ));
    }
    isv_level(&identity.tcb_levels, qe.isvsvn)
        .ok_or_else(|| format!("QE ISVSVN {} is below every level", qe.isvsvn))
}
