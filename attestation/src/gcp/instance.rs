//! What a certificate's extensions say: Google's instance identity on an AK certificate, and
//! whether a certificate is a CA / may sign.
//!
//! The instance identity ("cloudComputeInstanceIdentifier", OID 1.3.6.1.4.1.11129.2.1.21) is,
//! as go-tpm-tools `server/verify.go` declares it (`gceInstanceInfo`, `gceSecurityProperties`):
//!
//! ```text
//! GceInstanceInfo ::= SEQUENCE {
//!     zone               UTF8String,
//!     projectNumber      INTEGER,
//!     projectId          UTF8String,
//!     instanceId         INTEGER,
//!     instanceName       UTF8String,
//!     securityProperties [0] EXPLICIT GceSecurityProperties OPTIONAL }
//! GceSecurityProperties ::= SEQUENCE {
//!     securityVersion    [0] EXPLICIT INTEGER OPTIONAL,
//!     isProduction       [1] EXPLICIT BOOLEAN OPTIONAL,
//!     ... }
//! ```
//!
//! Real AK certificates carry four more context-tagged BOOLEANs ([2]..[5]) in
//! `securityProperties` that no public source names; they are kept uninterpreted. Elements after
//! the known ones are allowed, as Go's `encoding/asn1` allows them (X.509 grows that way).

use super::GcpError;
use x509_cert::der::asn1::{AnyRef, Utf8StringRef};
use x509_cert::der::oid::{AssociatedOid, ObjectIdentifier};
use x509_cert::der::{Decode, Reader, Tag, Tagged};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};
use x509_cert::Certificate;

/// OID of Google's instance identity extension.
pub const INSTANCE_IDENTITY_OID: &str = "1.3.6.1.4.1.11129.2.1.21";
const INSTANCE_IDENTITY: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.11129.2.1.21");

/// The GCE instance an AK certificate was issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GceInstance {
    pub zone: String,
    pub project_id: String,
    pub project_number: u64,
    pub instance_id: u64,
    pub instance_name: String,
    pub security: Option<GceSecurityProperties>,
}

impl GceInstance {
    /// go-tpm-tools ignores the identity of a certificate that does not say it is production;
    /// a verifier should too.
    pub fn is_production(&self) -> bool {
        self.security
            .as_ref()
            .and_then(|s| s.is_production)
            .unwrap_or(false)
    }
}

/// `securityProperties` of the instance identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GceSecurityProperties {
    pub security_version: Option<u64>,
    pub is_production: Option<bool>,
    /// Elements this code does not interpret: (context tag number, DER of the tagged element's
    /// content), in certificate order.
    pub other: Vec<(u8, Vec<u8>)>,
}

/// What a certificate's extensions allow.
pub(crate) struct Profile {
    /// basicConstraints CA:TRUE.
    pub is_ca: bool,
    pub key_usage: Option<KeyUsage>,
    pub instance: Option<GceInstance>,
}

impl Profile {
    /// Whether keyUsage (when present) allows `usage`; absent keyUsage allows everything.
    pub fn allows(&self, usage: fn(&KeyUsage) -> bool) -> bool {
        self.key_usage.as_ref().is_none_or(usage)
    }
}

/// The extensions [`profile`] interprets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Known {
    BasicConstraints,
    KeyUsage,
    InstanceIdentity,
}

impl Known {
    fn of(oid: &ObjectIdentifier) -> Option<Self> {
        [
            (BasicConstraints::OID, Self::BasicConstraints),
            (KeyUsage::OID, Self::KeyUsage),
            (INSTANCE_IDENTITY, Self::InstanceIdentity),
        ]
        .into_iter()
        .find_map(|(known, which)| (known == *oid).then_some(which))
    }

    fn name(self) -> &'static str {
        match self {
            Self::BasicConstraints => "basicConstraints",
            Self::KeyUsage => "keyUsage",
            Self::InstanceIdentity => "instance identity (1.3.6.1.4.1.11129.2.1.21)",
        }
    }
}

/// Reads basicConstraints, keyUsage and the instance identity. Each may appear once (RFC 5280
/// 4.2): with two, which one a relying party reads would decide what the certificate says.
pub(crate) fn profile(cert: &Certificate, which: &str, subject: &str) -> Result<Profile, GcpError> {
    let mut out = Profile {
        is_ca: false,
        key_usage: None,
        instance: None,
    };
    let mut seen = Vec::new();
    for ext in cert.tbs_certificate.extensions.iter().flatten() {
        let Some(known) = Known::of(&ext.extn_id) else {
            continue;
        };
        let malformed = |reason: String| GcpError::Extension {
            which: which.to_owned(),
            subject: subject.to_owned(),
            extension: known.name(),
            reason,
        };
        if seen.contains(&known) {
            return Err(malformed("appears more than once".into()));
        }
        seen.push(known);
        let value = ext.extn_value.as_bytes();
        let der_error = |e: x509_cert::der::Error| malformed(e.to_string());
        match known {
            Known::BasicConstraints => {
                out.is_ca = BasicConstraints::from_der(value).map_err(der_error)?.ca
            }
            Known::KeyUsage => out.key_usage = Some(KeyUsage::from_der(value).map_err(der_error)?),
            Known::InstanceIdentity => {
                out.instance = Some(instance_identity(value).map_err(malformed)?)
            }
        }
    }
    Ok(out)
}

/// Parses the instance identity extension's value (see the module documentation).
pub fn instance_identity(der: &[u8]) -> Result<GceInstance, String> {
    let outer = AnyRef::from_der(der).map_err(|e| e.to_string())?;
    outer
        .sequence(|r| {
            let zone = r.decode::<Utf8StringRef<'_>>()?.to_string();
            let project_number = r.decode::<u64>()?;
            let project_id = r.decode::<Utf8StringRef<'_>>()?.to_string();
            let instance_id = r.decode::<u64>()?;
            let instance_name = r.decode::<Utf8StringRef<'_>>()?.to_string();
            // Only the element right after instanceName can be securityProperties; anything
            // else there, and everything after it, is a later addition this code ignores.
            let mut security = None;
            let mut first = true;
            while !r.is_finished() {
                let element = r.decode::<AnyRef<'_>>()?;
                if first && is_context(element.tag(), 0) {
                    security = Some(element.value());
                }
                first = false;
            }
            Ok((
                GceInstance {
                    zone,
                    project_id,
                    project_number,
                    instance_id,
                    instance_name,
                    security: None,
                },
                security,
            ))
        })
        .map_err(|e| e.to_string())
        .and_then(|(mut instance, security)| {
            instance.security = security.map(security_properties).transpose()?;
            Ok(instance)
        })
}

fn is_context(tag: Tag, number: u8) -> bool {
    matches!(tag, Tag::ContextSpecific { constructed: true, number: n } if n.value() == number)
}

/// `GceSecurityProperties` from the DER inside its `[0] EXPLICIT` wrapper. Tags must ascend, as
/// DER requires of a SEQUENCE's optional components.
fn security_properties(der: &[u8]) -> Result<GceSecurityProperties, String> {
    let outer = AnyRef::from_der(der).map_err(|e| format!("securityProperties: {e}"))?;
    let elements = outer
        .sequence(|r| {
            let mut elements = Vec::new();
            while !r.is_finished() {
                elements.push(r.decode::<AnyRef<'_>>()?);
            }
            Ok(elements)
        })
        .map_err(|e| format!("securityProperties: {e}"))?;
    let mut out = GceSecurityProperties::default();
    let mut last = None;
    for element in elements {
        let Tag::ContextSpecific {
            constructed: true,
            number,
        } = element.tag()
        else {
            return Err(format!(
                "securityProperties: unexpected element {}",
                element.tag()
            ));
        };
        let number = number.value();
        if last.is_some_and(|last| number <= last) {
            return Err(format!("securityProperties: [{number}] out of order"));
        }
        last = Some(number);
        let inner = element.value();
        let context = |e: x509_cert::der::Error| format!("securityProperties [{number}]: {e}");
        match number {
            0 => out.security_version = Some(u64::from_der(inner).map_err(context)?),
            1 => out.is_production = Some(bool::from_der(inner).map_err(context)?),
            _ => out.other.push((number, inner.to_vec())),
        }
    }
    Ok(out)
}
