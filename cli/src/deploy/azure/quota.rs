//! Preflight's vCPU quota check: the Compute usages of the location (`GET /subscriptions/S/
//! providers/Microsoft.Compute/locations/L/usages`) against the size's vCPUs, for the size's
//! family and for `cores` (Total Regional vCPUs). A VM create over quota fails only after the
//! upload; this refuses it before anything is made. What the API does not tell (a role without
//! `Microsoft.Compute/locations/usages/read`, a family we cannot name) is a warning.

use super::arm::{Arm, ArmList, Read, API_VMS};
use crate::deploy::step;
use anyhow::{bail, Result};
use serde::Deserialize;

/// The usage family of each confidential series, as the usages API names it (matched without
/// regard to case, as ARM does). Series missing here are warned about, never guessed.
const FAMILIES: &[(&str, &str)] = &[
    ("dcas_v5", "standardDCASv5Family"),
    ("dcads_v5", "standardDCADSv5Family"),
    ("ecas_v5", "standardECASv5Family"),
    ("ecads_v5", "standardECADSv5Family"),
    ("dces_v5", "standardDCEV5Family"),
    ("dceds_v5", "standardDCEDV5Family"),
    ("eces_v5", "standardECEV5Family"),
    ("eceds_v5", "standardECEDV5Family"),
    ("dcas_v6", "standardDCasv6Family"),
    ("dcads_v6", "standardDCadsv6Family"),
    ("ecas_v6", "standardECasv6Family"),
    ("ecads_v6", "standardECadsv6Family"),
    ("dces_v6", "standardDCESv6Family"),
];

/// The usage counting every vCPU of the location.
const REGIONAL: &str = "cores";

/// What a confidential size takes from the quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeQuota {
    /// `None`: a series whose family name we do not know.
    pub family: Option<&'static str>,
    pub vcpus: i64,
}

/// From the size's name: `Standard_DC<n><as|ads|es|eds>_v<5|6>` has n vCPUs.
pub fn size_quota(vm_type: &str) -> Option<SizeQuota> {
    let lower = vm_type.to_ascii_lowercase();
    let (size, version) = lower.strip_prefix("standard_")?.split_once('_')?;
    let (series, after) = (size.get(..2)?, size.get(2..)?);
    let digits = after.chars().take_while(char::is_ascii_digit).count();
    let vcpus = after[..digits].parse().ok()?;
    let key = format!("{series}{}_{version}", &after[digits..]);
    let family = FAMILIES
        .iter()
        .find(|(known, _)| *known == key)
        .map(|(_, family)| *family);
    Some(SizeQuota { family, vcpus })
}

/// One entry of the usages list.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub name: UsageName,
    pub current_value: i64,
    pub limit: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageName {
    pub value: String,
    #[serde(default)]
    pub localized_value: String,
}

/// What the usages say about one quota the VM draws on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    Fits {
        quota: String,
        free: i64,
    },
    Short {
        quota: String,
        used: i64,
        limit: i64,
    },
    /// The API does not tell: why.
    Unknown(String),
}

/// The VM's vCPUs against `cores` and its family.
pub fn judge(usages: &[Usage], vm_type: &str, location: &str) -> Vec<Finding> {
    let Some(size) = size_quota(vm_type) else {
        return vec![Finding::Unknown(format!(
            "cannot tell the vCPUs of {vm_type} from its name"
        ))];
    };
    let find = |name: &str| {
        let found = usages
            .iter()
            .find(|usage| usage.name.value.eq_ignore_ascii_case(name));
        match found {
            None => Finding::Unknown(format!("the usages of {location} do not list {name}")),
            Some(usage) => {
                let quota = match usage.name.localized_value.as_str() {
                    "" => usage.name.value.clone(),
                    localized => format!("{} ({localized})", usage.name.value),
                };
                let free = usage.limit.saturating_sub(usage.current_value);
                if size.vcpus > free {
                    Finding::Short {
                        quota,
                        used: usage.current_value,
                        limit: usage.limit,
                    }
                } else {
                    Finding::Fits { quota, free }
                }
            }
        }
    };
    let family = match size.family {
        Some(family) => find(family),
        None => Finding::Unknown(format!(
            "the quota family of {vm_type} is not known to cvm-cli"
        )),
    };
    vec![find(REGIONAL), family]
}

/// Reads the usages (all pages); `Err(why)` when the API does not tell.
async fn usages(arm: &Arm, location: &str) -> Result<std::result::Result<Vec<Usage>, String>> {
    let mut next = format!(
        "/subscriptions/{}/providers/Microsoft.Compute/locations/{location}/usages",
        arm.subscription
    );
    let mut api = Some(API_VMS);
    let mut found = Vec::new();
    for _ in 0..20 {
        let page: ArmList<Usage> = match arm.read(&next, api).await? {
            Read::Found(page) => page,
            Read::NotFound => return Ok(Err(format!("no usages for location {location}"))),
            Read::Refused(detail) => return Ok(Err(detail)),
        };
        found.extend(page.value);
        match page.next_link.filter(|link| !link.is_empty()) {
            Some(link) => (next, api) = (link, None),
            None => return Ok(Ok(found)),
        }
    }
    bail!("reading the vCPU usages of {location}: too many pages")
}

/// Refuses a VM the quota has no room for, naming the quota, its use, its limit and the
/// size's vCPUs; warns about what it cannot tell.
pub async fn check(arm: &Arm, location: &str, vm_type: &str) -> Result<()> {
    let usages = match usages(arm, location).await? {
        Ok(usages) => usages,
        Err(why) => {
            crate::output::warn(format_args!(
                "vCPU quota not checked: reading the Compute usages of {location} failed ({why}); \
                 the VM create will fail after the upload if {vm_type} does not fit"
            ));
            return Ok(());
        }
    };
    let vcpus = size_quota(vm_type).map_or(0, |size| size.vcpus);
    let mut short = Vec::new();
    let mut fits = Vec::new();
    for finding in judge(&usages, vm_type, location) {
        match finding {
            Finding::Fits { quota, free } => fits.push(format!("{quota}: {free} free")),
            Finding::Short { quota, used, limit } => {
                short.push(format!("{quota} has {used} of {limit} vCPUs in use"))
            }
            Finding::Unknown(why) => crate::output::warn(format_args!(
                "vCPU quota not fully checked: {why}; the VM create will fail after the upload \
                 if {vm_type} does not fit"
            )),
        }
    }
    if !short.is_empty() {
        bail!(
            "not enough vCPU quota in {location}: {vm_type} needs {vcpus} vCPUs, but {}. Ask for \
             more (Azure portal: Quotas > Compute), free some, or pick a smaller size or another \
             region",
            short.join("; ")
        );
    }
    if !fits.is_empty() {
        step(format!(
            "vCPU quota in {location}: {vm_type} needs {vcpus}; {}",
            fits.join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(value: &str, used: i64, limit: i64) -> Usage {
        Usage {
            name: UsageName {
                value: value.into(),
                localized_value: String::new(),
            },
            current_value: used,
            limit,
        }
    }

    #[test]
    fn sizes_name_their_family_and_vcpus() {
        let tdx = size_quota("Standard_DC4es_v5").unwrap();
        assert_eq!((tdx.family, tdx.vcpus), (Some("standardDCEV5Family"), 4));
        let snp = size_quota("standard_ec16ads_v5").unwrap();
        assert_eq!((snp.family, snp.vcpus), (Some("standardECADSv5Family"), 16));
        assert_eq!(size_quota("Standard_EC8eds_v6").unwrap().family, None);
        assert_eq!(size_quota("Standard_DCas_v5"), None);
    }

    #[test]
    fn both_quotas_must_have_room() {
        let usages = [usage("cores", 8, 10), usage("STANDARDDCEV5FAMILY", 0, 4)];
        let found = judge(&usages, "Standard_DC2es_v5", "eastus2");
        assert!(
            matches!(
                found[..],
                [Finding::Fits { free: 2, .. }, Finding::Fits { free: 4, .. }]
            ),
            "{found:?}"
        );
        let found = judge(&usages, "Standard_DC4es_v5", "eastus2");
        assert!(
            matches!(
                &found[..],
                [
                    Finding::Short {
                        used: 8,
                        limit: 10,
                        ..
                    },
                    Finding::Fits { .. }
                ]
            ),
            "{found:?}"
        );
        let found = judge(&usages[..1], "Standard_DC2as_v5", "eastus2");
        assert!(
            matches!(&found[1], Finding::Unknown(why) if why.contains("standardDCASv5Family")),
            "{found:?}"
        );
        let found = judge(&usages, "Standard_EC2eds_v6", "eastus2");
        assert!(
            matches!(&found[1], Finding::Unknown(why) if why.contains("not known")),
            "{found:?}"
        );
    }
}
