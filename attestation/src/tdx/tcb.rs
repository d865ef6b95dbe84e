//! TCB level selection (Intel TDX DCAP Quote Verification, "TCB info" and "QE identity"):
//! the platform's level from the PCK certificate's SGX SVNs and PCESVN together with the TD's
//! TEE_TCB_SVN, the TDX module's level from its identity, and the Quoting Enclave's level.

use super::body::TdReportBody;
use super::collateral::{hex_field, HexFieldError, IsvTcbLevel, QeIdentity, TcbInfo};
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

/// Why no TCB level could be selected, or the TDX module or QE does not match its identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TcbError {
    #[error("a TCB level has no tdxtcbcomponents (not TDX TCB info)")]
    NoTdxComponents,
    #[error("a TCB level has {sgx} SGX and {tdx} TDX components, expected 16 each")]
    ComponentCount { sgx: usize, tdx: usize },
    #[error(
        "no TCB level matches: PCK SVNs {pck_svns:?} PCESVN {pcesvn}, TEE_TCB_SVN {} are below every level",
        hex::encode(.tee_tcb_svn)
    )]
    NoPlatformLevel {
        pck_svns: [u8; 16],
        pcesvn: u16,
        tee_tcb_svn: [u8; 16],
    },
    #[error("TCB info has no TDX module identity {0}")]
    NoModuleIdentity(String),
    #[error("TCB info has no tdxModule")]
    NoTdxModule,
    #[error(transparent)]
    HexField(#[from] HexFieldError),
    #[error(
        "MRSIGNERSEAM {} is not the TDX module signer {}",
        hex::encode(.actual),
        hex::encode(.expected)
    )]
    MrSignerSeam {
        actual: [u8; 48],
        expected: [u8; 48],
    },
    #[error(
        "SEAM attributes {} do not match the TDX module's {}",
        hex::encode(.actual),
        hex::encode(.expected)
    )]
    SeamAttributes { actual: [u8; 8], expected: [u8; 8] },
    #[error("the TDX module's SVN {svn} is below every level of TDX_{major:02X}")]
    ModuleSvnBelow { svn: u8, major: u8 },
    #[error("QE MRSIGNER {} is not {}", hex::encode(.actual), hex::encode(.expected))]
    QeMrSigner {
        actual: [u8; 32],
        expected: [u8; 32],
    },
    #[error("QE ISVPRODID {actual} is not {expected}")]
    QeIsvProdId { actual: u16, expected: u16 },
    #[error("QE MISCSELECT {actual:08x} does not match {expected}")]
    QeMiscSelect { actual: u32, expected: String },
    #[error("QE attributes {} do not match {expected}", hex::encode(.actual))]
    QeAttributes { actual: [u8; 16], expected: String },
    #[error("QE ISVSVN {0} is below every level")]
    QeIsvSvnBelow(u16),
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
) -> Result<TcbMatch, TcbError> {
    let first_tdx = if body.tee_tcb_svn[1] > 0 { 2 } else { 0 };
    for level in &tcb_info.tcb_levels {
        let sgx = &level.tcb.sgxtcbcomponents;
        let Some(tdx) = &level.tcb.tdxtcbcomponents else {
            return Err(TcbError::NoTdxComponents);
        };
        if sgx.len() != 16 || tdx.len() != 16 {
            return Err(TcbError::ComponentCount {
                sgx: sgx.len(),
                tdx: tdx.len(),
            });
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
    Err(TcbError::NoPlatformLevel {
        pck_svns: pck.tcb_components,
        pcesvn: pck.pcesvn,
        tee_tcb_svn: body.tee_tcb_svn,
    })
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
pub fn module_level(tcb_info: &TcbInfo, body: &TdReportBody) -> Result<Option<TcbMatch>, TcbError> {
    let major = body.tee_tcb_svn[1];
    let (mrsigner, attributes, mask, levels) = if major > 0 {
        let id = format!("TDX_{major:02X}");
        let identity = tcb_info
            .tdx_module_identities
            .iter()
            .find(|i| i.id.eq_ignore_ascii_case(&id))
            .ok_or(TcbError::NoModuleIdentity(id))?;
        (
            &identity.mrsigner,
            &identity.attributes,
            &identity.attributes_mask,
            Some(&identity.tcb_levels),
        )
    } else {
        let module = tcb_info.tdx_module.as_ref().ok_or(TcbError::NoTdxModule)?;
        (
            &module.mrsigner,
            &module.attributes,
            &module.attributes_mask,
            None,
        )
    };
    let mrsigner: [u8; 48] = hex_field("tdxModule mrsigner", mrsigner)?;
    if mrsigner != body.mrsignerseam {
        return Err(TcbError::MrSignerSeam {
            actual: body.mrsignerseam,
            expected: mrsigner,
        });
    }
    let attributes: [u8; 8] = hex_field("tdxModule attributes", attributes)?;
    let mask: [u8; 8] = hex_field("tdxModule attributesMask", mask)?;
    if !masked_eq(&body.seam_attributes, &attributes, &mask) {
        return Err(TcbError::SeamAttributes {
            actual: body.seam_attributes,
            expected: attributes,
        });
    }
    match levels {
        Some(levels) => isv_level(levels, u16::from(body.tee_tcb_svn[0]))
            .map(Some)
            .ok_or(TcbError::ModuleSvnBelow {
                svn: body.tee_tcb_svn[0],
                major,
            }),
        None => Ok(None),
    }
}

/// The Quoting Enclave against its identity: MRSIGNER, ISVPRODID, MISCSELECT and attributes
/// (masked) must match; its ISVSVN selects the level.
pub fn qe_level(identity: &QeIdentity, qe: &QeReport) -> Result<TcbMatch, TcbError> {
    let mrsigner: [u8; 32] = hex_field("QE identity mrsigner", &identity.mrsigner)?;
    if mrsigner != qe.mrsigner {
        return Err(TcbError::QeMrSigner {
            actual: qe.mrsigner,
            expected: mrsigner,
        });
    }
    if identity.isvprodid != qe.isvprodid {
        return Err(TcbError::QeIsvProdId {
            actual: qe.isvprodid,
            expected: identity.isvprodid,
        });
    }
    let misc: [u8; 4] = hex_field("QE identity miscselect", &identity.miscselect)?;
    let misc_mask: [u8; 4] = hex_field("QE identity miscselectMask", &identity.miscselect_mask)?;
    // Hex in the JSON is big-endian reading of the u32.
    if !masked_eq(&qe.miscselect.to_be_bytes(), &misc, &misc_mask) {
        return Err(TcbError::QeMiscSelect {
            actual: qe.miscselect,
            expected: identity.miscselect.clone(),
        });
    }
    let attributes: [u8; 16] = hex_field("QE identity attributes", &identity.attributes)?;
    let mask: [u8; 16] = hex_field("QE identity attributesMask", &identity.attributes_mask)?;
    if !masked_eq(&qe.attributes, &attributes, &mask) {
        return Err(TcbError::QeAttributes {
            actual: qe.attributes,
            expected: identity.attributes.clone(),
        });
    }
    isv_level(&identity.tcb_levels, qe.isvsvn).ok_or(TcbError::QeIsvSvnBelow(qe.isvsvn))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed errors read exactly as the strings they replaced (reports quote them).
    #[test]
    fn tcb_errors_read_as_before() {
        let svns = [1u8; 16];
        let tee = [0xabu8; 16];
        assert_eq!(
            TcbError::NoPlatformLevel {
                pck_svns: svns,
                pcesvn: 13,
                tee_tcb_svn: tee,
            }
            .to_string(),
            format!(
                "no TCB level matches: PCK SVNs {:?} PCESVN {}, TEE_TCB_SVN {} are below every level",
                svns,
                13,
                hex::encode(tee)
            )
        );
        assert_eq!(
            TcbError::MrSignerSeam {
                actual: [1; 48],
                expected: [2; 48],
            }
            .to_string(),
            format!(
                "MRSIGNERSEAM {} is not the TDX module signer {}",
                hex::encode([1u8; 48]),
                hex::encode([2u8; 48])
            )
        );
        assert_eq!(
            TcbError::ModuleSvnBelow { svn: 3, major: 10 }.to_string(),
            "the TDX module's SVN 3 is below every level of TDX_0A"
        );
        assert_eq!(
            TcbError::QeMiscSelect {
                actual: 0xab,
                expected: "00000000".into(),
            }
            .to_string(),
            "QE MISCSELECT 000000ab does not match 00000000"
        );
        assert_eq!(
            TcbError::from(hex_field::<4>("QE identity miscselect", "zz").unwrap_err()).to_string(),
            "QE identity miscselect \"zz\" is not 4 bytes of hex"
        );
    }
}
