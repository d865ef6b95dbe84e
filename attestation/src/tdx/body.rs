//! The TD report body: what a TD quote (v4, 584 bytes after the header; v5, after the header and
//! a body descriptor) and a TDREPORT (the 1024-byte structure TDG.MR.REPORT returns, as inside
//! Azure's HCL report) both state about a trust domain: MRTD, RTMR0-3, the TDX module (MRSEAM),
//! TD attributes and `report_data`. A TD report 1.5 body (quote v5, body type 3) appends
//! TEE_TCB_SVN2 and MRSERVICETD ([`Td15Fields`]).

use super::reader::LeReader;
use crate::tpm::wire::WireError;

/// Bytes of the body in a v4 quote (a TD report 1.0 body).
pub const BODY_LEN: usize = 584;
/// Bytes of a TD report 1.5 body: the 1.0 body, TEE_TCB_SVN2 (16) and MRSERVICETD (48).
pub const BODY15_LEN: usize = BODY_LEN + 16 + 48;
/// Bytes of a TDREPORT.
pub const TD_REPORT_LEN: usize = 1024;
/// TD attributes bit 0: the TD may be debugged (its memory and state are readable by the host).
pub const TD_ATTRIBUTES_DEBUG: u64 = 1;

/// The measured identity of a trust domain and the TDX module that runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdReportBody {
    /// SVNs of the TDX module and its components (TEE_TCB_SVN), compared with TCB info.
    pub tee_tcb_svn: [u8; 16],
    pub mrseam: [u8; 48],
    pub mrsignerseam: [u8; 48],
    pub seam_attributes: [u8; 8],
    pub td_attributes: [u8; 8],
    pub xfam: [u8; 8],
    /// The TD's build-time measurement (initial memory and configuration).
    pub mrtd: [u8; 48],
    pub mrconfigid: [u8; 48],
    pub mrowner: [u8; 48],
    pub mrownerconfig: [u8; 48],
    /// Run-time measurement registers 0..=3.
    pub rtmr: [[u8; 48]; 4],
    pub report_data: [u8; 64],
}

/// What a TD report 1.5 body (TDX module 1.5, quote v5 body type 3) adds to the 1.0 body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Td15Fields {
    /// SVNs of the TDX module running now (TEE_TCB_SVN2). After a TD-preserving module update it
    /// differs from TEE_TCB_SVN, the SVNs of the module the TD was launched under.
    pub tee_tcb_svn2: [u8; 16],
    /// SHA-384 of the service TDs bound to this TD (MRSERVICETD, e.g. a migration TD); zero when
    /// none is bound.
    pub mrservicetd: [u8; 48],
}

impl Td15Fields {
    /// Reads the 64 bytes after the 1.0 body.
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = LeReader::new("TD report 1.5 body", bytes);
        let fields = Self {
            tee_tcb_svn2: r.array("tee_tcb_svn2")?,
            mrservicetd: r.array("mrservicetd")?,
        };
        r.finish()?;
        Ok(fields)
    }

    /// The 64 bytes as they follow the 1.0 body in a quote.
    pub fn to_bytes(&self) -> Vec<u8> {
        [&self.tee_tcb_svn2[..], &self.mrservicetd].concat()
    }
}

impl TdReportBody {
    /// Reads a 584-byte TD report 1.0 body (a v4 quote's body, the start of a 1.5 body).
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = LeReader::new("TD quote body", bytes);
        let body = Self {
            tee_tcb_svn: r.array("tee_tcb_svn")?,
            mrseam: r.array("mrseam")?,
            mrsignerseam: r.array("mrsignerseam")?,
            seam_attributes: r.array("seam_attributes")?,
            td_attributes: r.array("td_attributes")?,
            xfam: r.array("xfam")?,
            mrtd: r.array("mrtd")?,
            mrconfigid: r.array("mrconfigid")?,
            mrowner: r.array("mrowner")?,
            mrownerconfig: r.array("mrownerconfig")?,
            rtmr: [
                r.array("rtmr0")?,
                r.array("rtmr1")?,
                r.array("rtmr2")?,
                r.array("rtmr3")?,
            ],
            report_data: r.array("report_data")?,
        };
        r.finish()?;
        Ok(body)
    }

    /// Reads a TDREPORT (REPORTMACSTRUCT at 0, TEE_TCB_INFO at 256, TDINFO at 512). Longer input
    /// (Azure's 1184-byte hardware report area) is accepted; bytes after 1024 are ignored. The
    /// report type at byte 0 must be 0x81 (TDX). The MAC is not checked: only the CPU can, and on
    /// Azure a quote over the same fields is what is verified.
    pub fn from_td_report(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = LeReader::new("TDREPORT", bytes);
        let report_type = r.array::<4>("report_type")?;
        if report_type[0] != 0x81 {
            return Err(WireError::Unsupported {
                structure: "TDREPORT",
                field: "report_type",
                value: u32::from(report_type[0]),
            });
        }
        r.take("reserved", 12 + 16 + 48 + 48)?; // reserved, cpusvn, tee_tcb_info_hash, tee_info_hash
        let report_data = r.array("report_data")?;
        r.take("reserved and mac", 32 + 32)?;
        // TEE_TCB_INFO
        r.take("valid", 8)?;
        let tee_tcb_svn = r.array("tee_tcb_svn")?;
        let mrseam = r.array("mrseam")?;
        let mrsignerseam = r.array("mrsignerseam")?;
        let seam_attributes = r.array("seam_attributes")?;
        let to_td_info = 512 - r.offset();
        r.take("reserved", to_td_info)?;
        // TDINFO
        let body = Self {
            td_attributes: r.array("td_attributes")?,
            xfam: r.array("xfam")?,
            mrtd: r.array("mrtd")?,
            mrconfigid: r.array("mrconfigid")?,
            mrowner: r.array("mrowner")?,
            mrownerconfig: r.array("mrownerconfig")?,
            rtmr: [
                r.array("rtmr0")?,
                r.array("rtmr1")?,
                r.array("rtmr2")?,
                r.array("rtmr3")?,
            ],
            tee_tcb_svn,
            mrseam,
            mrsignerseam,
            seam_attributes,
            report_data,
        };
        if bytes.len() < TD_REPORT_LEN {
            return Err(WireError::Truncated {
                structure: "TDREPORT",
                field: "reserved",
                offset: r.offset(),
                needed: TD_REPORT_LEN - r.offset(),
                available: r.remaining(),
            });
        }
        Ok(body)
    }

    /// The body as it appears in a quote (584 bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(BODY_LEN);
        for part in [
            &self.tee_tcb_svn[..],
            &self.mrseam,
            &self.mrsignerseam,
            &self.seam_attributes,
            &self.td_attributes,
            &self.xfam,
            &self.mrtd,
            &self.mrconfigid,
            &self.mrowner,
            &self.mrownerconfig,
            &self.rtmr[0],
            &self.rtmr[1],
            &self.rtmr[2],
            &self.rtmr[3],
            &self.report_data,
        ] {
            out.extend_from_slice(part);
        }
        out
    }

    pub fn td_attributes_u64(&self) -> u64 {
        u64::from_le_bytes(self.td_attributes)
    }

    /// TD attributes bit 0.
    pub fn debug(&self) -> bool {
        self.td_attributes_u64() & TD_ATTRIBUTES_DEBUG != 0
    }
}
