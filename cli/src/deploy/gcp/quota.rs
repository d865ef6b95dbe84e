//! Preflight's vCPU quota check: `regions.get` lists the region's quotas (`{metric, limit,
//! usage}`); the instance draws on its family's metric (`C3_CPUS`, `N2D_CPUS`). The regional
//! `CPUS` quota counts only the families without a metric of their own (E2, N1), so it is not
//! what limits a confidential VM; the project-wide `CPUS_ALL_REGIONS` is not in `regions.get`.
//! An insert over quota fails only after the upload; this refuses it before anything is made.
//! What the API does not tell (a role without `compute.regions.get`, a metric not listed, a
//! machine type without `guestCpus`) is a warning.

use super::gce::{Compute, Quota, Read, Region};
use crate::deploy::step;
use anyhow::{bail, Result};

/// What the region's quotas say about one metric the instance draws on.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    Fits {
        metric: String,
        free: f64,
    },
    Short {
        metric: String,
        usage: f64,
        limit: f64,
    },
    /// The API does not tell: why.
    Unknown(String),
}

/// The region of a zone (`asia-southeast1-b` -> `asia-southeast1`).
pub fn region_of(zone: &str) -> &str {
    zone.rsplit_once('-').map_or(zone, |(region, _)| region)
}

/// `vcpus` against `family_metric`.
pub fn judge(quotas: &[Quota], family_metric: &str, vcpus: u32, region: &str) -> Vec<Finding> {
    [family_metric]
        .into_iter()
        .map(|metric| match quotas.iter().find(|q| q.metric == metric) {
            None => Finding::Unknown(format!("region {region} lists no {metric} quota")),
            Some(quota) if f64::from(vcpus) > quota.limit - quota.usage => Finding::Short {
                metric: metric.to_owned(),
                usage: quota.usage,
                limit: quota.limit,
            },
            Some(quota) => Finding::Fits {
                metric: metric.to_owned(),
                free: quota.limit - quota.usage,
            },
        })
        .collect()
}

/// Refuses an instance the quota has no room for, naming the metric, its usage, its limit and
/// the machine type's vCPUs; warns about what it cannot tell.
pub async fn check(
    compute: &Compute<'_>,
    vm_type: &str,
    family_metric: &str,
    vcpus: Option<u32>,
) -> Result<()> {
    let region = region_of(&compute.zone);
    let unchecked = |why: &str| {
        crate::output::warn(format_args!(
            "vCPU quota not checked: {why}; the instance insert will fail after the upload if \
             {vm_type} does not fit"
        ))
    };
    let Some(vcpus) = vcpus else {
        unchecked(&format!(
            "the machine type {vm_type} does not say its guestCpus"
        ));
        return Ok(());
    };
    let what = format!("preflight: reading the quotas of region {region}");
    let quotas = match compute
        .read::<Region>(&format!("regions/{region}"), &what)
        .await?
    {
        Read::Found(found) => found.quotas,
        Read::NotFound => {
            unchecked(&format!("region {region} was not found"));
            return Ok(());
        }
        Read::Forbidden(why) => {
            unchecked(&format!("reading region {region} was refused ({why})"));
            return Ok(());
        }
    };
    let (mut short, mut fits) = (Vec::new(), Vec::new());
    for finding in judge(&quotas, family_metric, vcpus, region) {
        match finding {
            Finding::Fits { metric, free } => fits.push(format!("{metric}: {free} free")),
            Finding::Short {
                metric,
                usage,
                limit,
            } => short.push(format!("{metric} has {usage} of {limit} in use")),
            Finding::Unknown(why) => unchecked(&why),
        }
    }
    if !short.is_empty() {
        bail!(
            "not enough vCPU quota in {region} (project {}): {vm_type} needs {vcpus} vCPUs, but \
             {}. Ask for more (console: IAM & Admin > Quotas), free some, or pick a smaller \
             machine type or another region",
            compute.project,
            short.join("; ")
        );
    }
    if !fits.is_empty() {
        step(format!(
            "vCPU quota in {region}: {vm_type} needs {vcpus}; {} (the project-wide \
             CPUS_ALL_REGIONS is not checked)",
            fits.join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(metric: &str, usage: f64, limit: f64) -> Quota {
        Quota {
            metric: metric.into(),
            limit,
            usage,
        }
    }

    #[test]
    fn the_family_metric_must_have_room() {
        assert_eq!(region_of("asia-southeast1-b"), "asia-southeast1");
        // CPUS (E2, N1) full: not what a C3 draws on.
        let quotas = [quota("CPUS", 24.0, 24.0), quota("C3_CPUS", 0.0, 8.0)];
        assert_eq!(
            judge(&quotas, "C3_CPUS", 4, "r"),
            vec![Finding::Fits {
                metric: "C3_CPUS".into(),
                free: 8.0
            }]
        );
        let found = judge(&quotas, "C3_CPUS", 9, "r");
        assert!(
            matches!(&found[0], Finding::Short { metric, usage, limit }
                if metric == "C3_CPUS" && *usage == 0.0 && *limit == 8.0),
            "{found:?}"
        );
        let found = judge(&quotas, "N2D_CPUS", 2, "r");
        assert!(
            matches!(&found[0], Finding::Unknown(why) if why.contains("N2D_CPUS")),
            "{found:?}"
        );
    }
}
