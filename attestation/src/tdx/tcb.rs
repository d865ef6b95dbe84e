//! TCB level selection (Intel TDX DCAP Quote Verification, "TCB info" and "QE identity"):
//! the platform's level from the PCK certificate's SGX SVNs and PCESVN together with the TD's
//! TEE_TCB_SVN, the TDX module's level from its identity, and the Quoting Enclave's level. For a
//! TD report 1.5 body, Intel's TD relaunch rule on TEE_TCB_SVN2 ([`relaunch_status`]).

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
    /// Not in TCB info: Intel's verdict for a TD report 1.5 body whose TD was launched under an
    /// out-of-date TDX module while the module running now is at the newest level
    /// ([`relaunch_status`]).
    TdRelaunchAdvised,
    TdRelaunchAdvisedConfigurationNeeded,
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
            TcbStatus::TdRelaunchAdvised => "TDRelaunchAdvised",
            TcbStatus::TdRelaunchAdvisedConfigurationNeeded => {
                "TDRelaunchAdvisedConfigurationNeeded"
            }
            TcbStatus::Other(name) => name,
        }
    }

    /// Every status Intel defines, for help texts and errors.
    pub const KNOWN: [&'static str; 9] = [
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "Revoked",
        "TDRelaunchAdvised",
        "TDRelaunchAdvisedConfigurationNeeded",
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
            "TDRelaunchAdvised" => TcbStatus::TdRelaunchAdvised,
            "TDRelaunchAdvisedConfigurationNeeded" => {
                TcbStatus::TdRelaunchAdvisedConfigurationNeeded
            }
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
    #[error("TDX module identity {0} has no TCB levels")]
    NoModuleLevels(String),
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

/// The SGX part of the platform's level: the status of the first level whose 16 SGX component
/// SVNs and PCESVN are at or below the PCK certificate's, TDX components ignored (Intel's "SGX
/// TCB level"; the TD relaunch rule needs it).
pub fn sgx_level(tcb_info: &TcbInfo, pck: &SgxExtensions) -> Option<TcbMatch> {
    tcb_info
        .tcb_levels
        .iter()
        .find(|level| {
            level.tcb.sgxtcbcomponents.len() == 16
                && pck.pcesvn >= level.tcb.pcesvn
                && level
                    .tcb
                    .sgxtcbcomponents
                    .iter()
                    .zip(pck.tcb_components)
                    .all(|(level, have)| u16::from(have) >= level.svn)
        })
        .map(|level| TcbMatch {
            status: level.tcb_status.clone(),
            tcb_date: level.tcb_date.clone(),
            advisory_ids: level.advisory_ids.clone(),
        })
}

/// Intel's combination of the platform level's status with the TDX module's (QVL
/// `convergeTcbStatusWithTdxModuleStatus`): an out-of-date module makes the TD out of date, a
/// revoked one revoked.
pub fn converge_with_module(platform: &TcbStatus, module: Option<&TcbStatus>) -> TcbStatus {
    use TcbStatus::*;
    match (module, platform) {
        (Some(OutOfDate), UpToDate | SwHardeningNeeded) => OutOfDate,
        (Some(OutOfDate), ConfigurationNeeded | ConfigurationAndSwHardeningNeeded) => {
            OutOfDateConfigurationNeeded
        }
        (Some(Revoked), _) => Revoked,
        _ => platform.clone(),
    }
}

/// The statuses the launch-time evaluation (with TEE_TCB_SVN) found.
#[derive(Debug, Clone, Copy)]
pub struct LaunchStatuses<'a> {
    /// [`sgx_level`]'s status.
    pub sgx: &'a TcbStatus,
    /// The platform level's ([`platform_level`]).
    pub platform: &'a TcbStatus,
    /// The TDX module's ([`module_level`]; `None` for module version 0).
    pub module: Option<&'a TcbStatus>,
    /// The QE's ([`qe_level`]; `None` when it has no level).
    pub qe: Option<&'a TcbStatus>,
}

/// Intel's TD relaunch rule for a TD report 1.5 body (QVL `TDRelaunchCheck`, "4.1.2.4.17.4.3").
/// Levels are matched with TEE_TCB_SVN, the TDX module the TD was launched under; TEE_TCB_SVN2 is
/// the module running now, after TD-preserving updates. When the QE is neither out of date nor
/// revoked, the SGX level is UpToDate, SWHardeningNeeded or ConfigurationNeeded (and SW
/// hardening), the launch evaluation is OutOfDate(ConfigurationNeeded) with the module OutOfDate,
/// and TEE_TCB_SVN2 reaches the newest level (its module SVN at least the newest level of its
/// module identity, or of TCB info's TDX component 0 for module version 0; its component 2 at
/// least the newest level's), the verdict is `TDRelaunchAdvised` (or
/// `TDRelaunchAdvisedConfigurationNeeded` when either status needs configuration). Ok(None):
/// the rule does not apply. Err: TEE_TCB_SVN2 names a module identity TCB info lacks.
pub fn relaunch_status(
    tcb_info: &TcbInfo,
    launch: LaunchStatuses,
    tee_tcb_svn2: &[u8; 16],
) -> Result<Option<TcbStatus>, TcbError> {
    use TcbStatus::*;
    let qe_ok = launch
        .qe
        .is_some_and(|s| !matches!(s, OutOfDate | OutOfDateConfigurationNeeded | Revoked));
    let sgx_ok = matches!(
        launch.sgx,
        UpToDate | SwHardeningNeeded | ConfigurationNeeded | ConfigurationAndSwHardeningNeeded
    );
    let tdx = converge_with_module(launch.platform, launch.module);
    let tdx_out_of_date = matches!(tdx, OutOfDate | OutOfDateConfigurationNeeded);
    if !(qe_ok && sgx_ok && tdx_out_of_date && launch.module == Some(&OutOfDate)) {
        return Ok(None);
    }
    let Some(latest) = tcb_info.tcb_levels.first() else {
        return Ok(None);
    };
    let latest_tdx = |index: usize| -> u16 {
        let components = latest.tcb.tdxtcbcomponents.as_deref().unwrap_or_default();
        components.get(index).map_or(u16::MAX, |c| c.svn)
    };
    let module_svn_needed = if tee_tcb_svn2[1] == 0 {
        latest_tdx(0)
    } else {
        let id = format!("TDX_{:02X}", tee_tcb_svn2[1]);
        let identity = tcb_info
            .tdx_module_identities
            .iter()
            .find(|i| i.id.eq_ignore_ascii_case(&id))
            .ok_or_else(|| TcbError::NoModuleIdentity(id.clone()))?;
        let newest = identity.tcb_levels.first();
        newest.ok_or(TcbError::NoModuleLevels(id))?.tcb.isvsvn
    };
    let current_is_newest = u16::from(tee_tcb_svn2[0]) >= module_svn_needed
        && u16::from(tee_tcb_svn2[2]) >= latest_tdx(2);
    if !current_is_newest {
        return Ok(None);
    }
    let configuration = |s: &TcbStatus| {
        matches!(
            s,
            ConfigurationNeeded
                | OutOfDateConfigurationNeeded
                | ConfigurationAndSwHardeningNeeded
                | TdRelaunchAdvisedConfigurationNeeded
        )
    };
    Ok(Some(if configuration(launch.sgx) || configuration(&tdx) {
        TdRelaunchAdvisedConfigurationNeeded
    } else {
        TdRelaunchAdvised
    }))
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

    /// TCB info whose newest level wants TDX component 0 at 5 and component 2 at 3, with module
    /// identity TDX_01 at ISVSVN 7 (newest) then 6.
    fn tcb_info() -> TcbInfo {
        let svns = |values: [u16; 3]| {
            let mut all = vec![
                serde_json::json!({"svn": values[0]}),
                serde_json::json!({"svn": values[1]}),
                serde_json::json!({"svn": values[2]}),
            ];
            all.resize(16, serde_json::json!({"svn": 0}));
            all
        };
        let level = |tdx: [u16; 3], status: &str| {
            serde_json::json!({"tcb": {"sgxtcbcomponents": svns([0, 0, 0]), "pcesvn": 0, "tdxtcbcomponents": svns(tdx)},
                "tcbDate": "2024-01-01T00:00:00Z", "tcbStatus": status})
        };
        serde_json::from_value(serde_json::json!({
            "id": "TDX", "version": 3, "issueDate": "2024-01-01T00:00:00Z",
            "nextUpdate": "2049-01-01T00:00:00Z", "fmspc": "00906ED50000", "pceId": "0000",
            "tdxModuleIdentities": [{"id": "TDX_01", "mrsigner": "00", "attributes": "00",
                "attributesMask": "FF", "tcbLevels": [
                    {"tcb": {"isvsvn": 7}, "tcbDate": "2024-01-01T00:00:00Z", "tcbStatus": "UpToDate"},
                    {"tcb": {"isvsvn": 6}, "tcbDate": "2023-01-01T00:00:00Z", "tcbStatus": "OutOfDate"}]}],
            "tcbLevels": [level([5, 0, 3], "UpToDate"), level([0, 0, 0], "OutOfDate")]
        }))
        .unwrap()
    }

    /// TEE_TCB_SVN2 at the newest level: module version 1 at SVN 7, or version 0 with TDX
    /// component 0 at 5; component 2 at 3.
    const NEWEST_V1: [u8; 16] = [7, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    const NEWEST_V0: [u8; 16] = [5, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    fn launch<'a>(
        sgx: &'a TcbStatus,
        platform: &'a TcbStatus,
        module: Option<&'a TcbStatus>,
        qe: Option<&'a TcbStatus>,
    ) -> LaunchStatuses<'a> {
        LaunchStatuses {
            sgx,
            platform,
            module,
            qe,
        }
    }

    #[test]
    fn the_relaunch_rule_advises_a_relaunch_as_intels_does() {
        use TcbStatus::*;
        let info = tcb_info();
        let (newest_v1, newest_v0) = (NEWEST_V1, NEWEST_V0);
        let out_of_date = launch(&UpToDate, &UpToDate, Some(&OutOfDate), Some(&UpToDate));
        for svn2 in [newest_v1, newest_v0] {
            let verdict = relaunch_status(&info, out_of_date, &svn2);
            assert_eq!(verdict, Ok(Some(TdRelaunchAdvised)), "{svn2:?}");
        }
        // Configuration needed on the SGX side or the platform: the configuration variant.
        for statuses in [
            launch(
                &ConfigurationNeeded,
                &UpToDate,
                Some(&OutOfDate),
                Some(&UpToDate),
            ),
            launch(
                &UpToDate,
                &ConfigurationNeeded,
                Some(&OutOfDate),
                Some(&UpToDate),
            ),
        ] {
            let verdict = relaunch_status(&info, statuses, &newest_v1);
            assert_eq!(verdict, Ok(Some(TdRelaunchAdvisedConfigurationNeeded)));
        }
    }

    #[test]
    fn the_relaunch_rule_applies_only_where_intels_does() {
        use TcbStatus::*;
        let info = tcb_info();
        let newest_v1 = NEWEST_V1;
        let out_of_date = launch(&UpToDate, &UpToDate, Some(&OutOfDate), Some(&UpToDate));
        // The rule does not apply: the module running now is not the newest (module SVN or
        // component 2 below), the module was not out of date, the QE or SGX side is, a level
        // is revoked, or there is no module level.
        let mut older = newest_v1;
        older[0] = 6;
        let mut old_microcode = newest_v1;
        old_microcode[2] = 2;
        let mut old_v0 = NEWEST_V0;
        old_v0[0] = 4;
        for (statuses, svn2) in [
            (out_of_date, older),
            (out_of_date, old_microcode),
            (out_of_date, old_v0),
            (
                launch(&UpToDate, &UpToDate, Some(&UpToDate), Some(&UpToDate)),
                newest_v1,
            ),
            (
                launch(&UpToDate, &OutOfDate, Some(&UpToDate), Some(&UpToDate)),
                newest_v1,
            ),
            (
                launch(&UpToDate, &UpToDate, Some(&OutOfDate), Some(&OutOfDate)),
                newest_v1,
            ),
            (
                launch(&UpToDate, &UpToDate, Some(&OutOfDate), None),
                newest_v1,
            ),
            (
                launch(&OutOfDate, &UpToDate, Some(&OutOfDate), Some(&UpToDate)),
                newest_v1,
            ),
            (
                launch(&UpToDate, &Revoked, Some(&OutOfDate), Some(&UpToDate)),
                newest_v1,
            ),
            (
                launch(&UpToDate, &UpToDate, None, Some(&UpToDate)),
                newest_v1,
            ),
        ] {
            assert_eq!(
                relaunch_status(&info, statuses, &svn2),
                Ok(None),
                "{statuses:?} {svn2:?}"
            );
        }
        // A module major version TCB info does not list is an error, as in Intel's QVL.
        let mut unknown = newest_v1;
        unknown[1] = 2;
        assert_eq!(
            relaunch_status(&info, out_of_date, &unknown),
            Err(TcbError::NoModuleIdentity("TDX_02".into()))
        );
    }

    #[test]
    fn module_statuses_converge_and_every_status_reads_back() {
        use TcbStatus::*;
        assert_eq!(
            converge_with_module(&ConfigurationNeeded, Some(&OutOfDate)),
            OutOfDateConfigurationNeeded
        );
        assert_eq!(converge_with_module(&UpToDate, Some(&Revoked)), Revoked);
        assert_eq!(
            converge_with_module(&SwHardeningNeeded, None),
            SwHardeningNeeded
        );
        for name in TcbStatus::KNOWN {
            assert_eq!(TcbStatus::from(name).as_str(), name);
            assert!(
                !matches!(TcbStatus::from(name), TcbStatus::Other(_)),
                "{name}"
            );
        }
    }

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
