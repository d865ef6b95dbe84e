//! Intel TDX: TD quotes (v4 and v5), the TD report body (1.0 and 1.5), Intel's DCAP PKI with a
//! pinned root, the collateral (TCB info, QE identity, CRLs) and TCB level selection. The checks
//! that combine them are in `verify/tdx.rs`.

pub mod body;
pub mod certs;
pub mod collateral;
pub mod crypto;
pub mod pck;
pub mod quote;
mod reader;
pub mod tcb;
pub mod x509;

pub use body::{Td15Fields, TdReportBody};
pub use certs::{intel_roots, INTEL_SGX_ROOT_CA_PEM};
pub use collateral::TdxCollateral;
pub use pck::{sgx_extensions, SgxExtensions};
pub use quote::{decode_hex_quote, looks_like_td_quote, QeReport, QuoteError, TdQuote};

pub use tcb::TcbStatus;

/// TCB statuses a verifier accepts unless told otherwise.
pub const DEFAULT_TCB_STATUSES: &[TcbStatus] = &[TcbStatus::UpToDate];
