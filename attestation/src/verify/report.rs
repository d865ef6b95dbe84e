//! The verification report: one entry per check, by name, with a reason and, where values are
//! compared, the expected and the actual value.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    /// Not applicable to this evidence or not requested by the golden document; the reason says
    /// which. A skipped check never makes a report pass that would otherwise fail.
    Skip,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<String>,
}

/// Every check that ran, in order. `verified` is true only when none failed and at least one
/// passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationReport {
    pub verified: bool,
    pub platform: String,
    pub checks: Vec<Check>,
}

impl VerificationReport {
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status == Status::Fail)
    }

    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// What a comparison says under PASS and under FAIL: a FAIL line states what failed, never the
/// requirement as if it held ("PCR 4 equals the golden value" printed under FAIL misleads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claim {
    pass: String,
    fail: String,
}

impl Claim {
    /// Both wordings, e.g. "PCR 4 equals the golden value" / "PCR 4 differs from the golden
    /// value".
    pub fn new(pass: impl Into<String>, fail: impl Into<String>) -> Self {
        Self {
            pass: pass.into(),
            fail: fail.into(),
        }
    }

    /// A text already worded for the outcome it is given with (computed after the comparison).
    pub fn outcome(text: impl Into<String>) -> Self {
        let text = text.into();
        Self::new(text.clone(), text)
    }

    fn text(self, ok: bool) -> String {
        if ok {
            self.pass
        } else {
            self.fail
        }
    }
}

/// A bare requirement: under FAIL it is printed as not met.
impl From<String> for Claim {
    fn from(requirement: String) -> Self {
        let fail = format!("not met: {requirement}");
        Self::new(requirement, fail)
    }
}

impl From<&str> for Claim {
    fn from(requirement: &str) -> Self {
        requirement.to_owned().into()
    }
}

/// Collects checks while verification runs.
#[derive(Debug, Default)]
pub(crate) struct Checks {
    checks: Vec<Check>,
}

impl Checks {
    pub fn push(&mut self, name: impl Into<String>, status: Status, reason: impl Into<String>) {
        self.checks.push(Check {
            name: name.into(),
            status,
            reason: reason.into(),
            expected: None,
            actual: None,
        });
    }

    pub fn pass(&mut self, name: impl Into<String>, reason: impl Into<String>) {
        self.push(name, Status::Pass, reason);
    }

    pub fn fail(&mut self, name: impl Into<String>, reason: impl Into<String>) {
        self.push(name, Status::Fail, reason);
    }

    pub fn skip(&mut self, name: impl Into<String>, reason: impl Into<String>) {
        self.push(name, Status::Skip, reason);
    }

    /// Pass when `ok`, with both values recorded either way; the reason worded for the outcome.
    pub fn compare(
        &mut self,
        name: impl Into<String>,
        ok: bool,
        claim: impl Into<Claim>,
        expected: impl Into<String>,
        actual: impl Into<String>,
    ) {
        self.checks.push(Check {
            name: name.into(),
            status: if ok { Status::Pass } else { Status::Fail },
            reason: claim.into().text(ok),
            expected: Some(expected.into()),
            actual: Some(actual.into()),
        });
    }

    /// Records `result` as pass (its Ok text) or fail (its Err text).
    pub fn result(&mut self, name: impl Into<String>, result: Result<String, String>) {
        match result {
            Ok(reason) => self.pass(name, reason),
            Err(reason) => self.fail(name, reason),
        }
    }

    /// The status of the latest check named `name` so far; `None` when it has not run. For a
    /// check whose meaning rests on an earlier one (`boot.events` on `tdx.ccel`).
    pub fn status(&self, name: &str) -> Option<Status> {
        self.checks
            .iter()
            .rev()
            .find(|c| c.name == name)
            .map(|c| c.status)
    }

    pub fn finish(self, platform: String) -> VerificationReport {
        let verified = !self.checks.is_empty()
            && self.checks.iter().all(|c| c.status != Status::Fail)
            && self.checks.iter().any(|c| c.status == Status::Pass);
        VerificationReport {
            verified,
            platform,
            checks: self.checks,
        }
    }
}

impl fmt::Display for VerificationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for check in &self.checks {
            let status = match check.status {
                Status::Pass => "PASS",
                Status::Fail => "FAIL",
                Status::Skip => "SKIP",
            };
            writeln!(f, "{status}  {:width$}  {}", check.name, check.reason)?;
            if let Some(expected) = &check.expected {
                writeln!(f, "      {:width$}  expected: {expected}", "")?;
            }
            if let Some(actual) = &check.actual {
                writeln!(f, "      {:width$}  actual:   {actual}", "")?;
            }
        }
        let failed = self.failures().count();
        if self.verified {
            write!(
                f,
                "VERIFIED: {} checks passed ({})",
                self.checks.len() - failed,
                self.platform
            )
        } else {
            write!(
                f,
                "NOT VERIFIED: {failed} of {} checks failed ({})",
                self.checks.len(),
                self.platform
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_comparison_does_not_state_the_requirement_as_met() {
        let mut checks = Checks::default();
        checks.compare(
            "pcr.4",
            false,
            Claim::new(
                "PCR 4 equals the golden value",
                "PCR 4 differs from the golden value",
            ),
            "aa",
            "bb",
        );
        checks.compare("platform", false, "the platform is the golden's", "x", "y");
        checks.compare("pcr.9", true, "PCR 9 equals the golden value", "cc", "cc");
        let text = checks.finish("test".into()).to_string();
        assert!(
            text.contains("FAIL  pcr.4     PCR 4 differs from the golden value"),
            "{text}"
        );
        assert!(
            text.contains("FAIL  platform  not met: the platform is the golden's"),
            "{text}"
        );
        assert!(
            text.contains("PASS  pcr.9     PCR 9 equals the golden value"),
            "{text}"
        );
        assert!(!text.contains("FAIL  pcr.4     PCR 4 equals"), "{text}");
    }
}
