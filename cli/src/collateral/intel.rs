//! Intel PCS v4 (or a PCCS): TCB info for the quote's FMSPC, the TDX QE identity, the PCK CRL of
//! the CA that issued the quote's PCK certificate, and the root CA CRL; assembled into the
//! collateral structure `verify --collateral` reads ([`TdxCollateral`]).

use super::cache::{Key, Kind};
use super::fetch::{FetchError, Fetcher, Got, Item};
use super::Sources;
use cvm_attestation::tdx::certs::parse_pck_certs;
use cvm_attestation::tdx::{TdQuote, TdxCollateral};

/// The CA that issued a PCK certificate (and its CRL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PckCa {
    Platform,
    Processor,
}

impl PckCa {
    pub fn name(self) -> &'static str {
        match self {
            PckCa::Platform => "platform",
            PckCa::Processor => "processor",
        }
    }
}

/// What a quote needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxNeeds {
    pub fmspc: [u8; 6],
    pub ca: PckCa,
}

#[derive(Debug, thiserror::Error)]
pub enum IntelError {
    #[error("the TD quote: {0}")]
    Quote(#[from] cvm_attestation::tdx::QuoteError),
    #[error("the quote's PCK chain: {0}")]
    Chain(String),
    #[error("the PCK certificate's issuer {0:?} is neither Intel's PCK Platform CA nor its Processor CA")]
    UnknownCa(String),
}

/// The FMSPC and PCK CA of a quote, from the PCK certificate it carries.
pub fn needs(quote: &[u8]) -> Result<TdxNeeds, IntelError> {
    let quote = TdQuote::parse(quote)?;
    let chain =
        parse_pck_certs(&quote.pck_chain_pem).map_err(|e| IntelError::Chain(e.to_string()))?;
    let extensions = chain
        .extensions
        .as_ref()
        .map_err(|e| IntelError::Chain(e.to_string()))?;
    let issuer = chain
        .certs
        .first()
        .map(|leaf| leaf.issuer.clone())
        .unwrap_or_default();
    let ca = if issuer.contains("Platform") {
        PckCa::Platform
    } else if issuer.contains("Processor") {
        PckCa::Processor
    } else {
        return Err(IntelError::UnknownCa(issuer));
    };
    Ok(TdxNeeds {
        fmspc: extensions.fmspc,
        ca,
    })
}

/// TCB info, QE identity, PCK CRL, root CA CRL, in that order.
pub fn items(sources: &Sources, needs: &TdxNeeds) -> [Item; 4] {
    let fmspc = hex::encode(needs.fmspc);
    let ca = needs.ca.name();
    let base = &sources.pcs;
    let root_crl_url = match &sources.root_ca_crl {
        Some(url) => url.clone(),
        None => format!("{base}/sgx/certification/v4/rootcacrl"),
    };
    [
        Item {
            key: key(format!("intel/tdx/tcb/{fmspc}")),
            kind: Kind::IntelTcbInfo,
            url: format!("{base}/tdx/certification/v4/tcb?fmspc={fmspc}"),
            what: format!("TDX TCB info for FMSPC {fmspc}"),
        },
        Item {
            key: key("intel/tdx/qe_identity".into()),
            kind: Kind::IntelQeIdentity,
            url: format!("{base}/tdx/certification/v4/qe/identity"),
            what: "TDX QE identity".into(),
        },
        Item {
            key: key(format!("intel/pckcrl/{ca}")),
            kind: Kind::IntelPckCrl,
            url: format!("{base}/sgx/certification/v4/pckcrl?ca={ca}&encoding=der"),
            what: format!("PCK CRL ({ca} CA)"),
        },
        Item {
            key: key("intel/root_ca_crl".into()),
            kind: Kind::IntelRootCaCrl,
            url: root_crl_url,
            what: "Intel SGX root CA CRL".into(),
        },
    ]
}

fn key(path: String) -> Key {
    Key::new(path).expect("Intel cache keys are plain paths")
}

/// The collateral for `needs`, each document from the cache or fetched.
pub async fn collateral(
    fetcher: &Fetcher,
    sources: &Sources,
    needs: &TdxNeeds,
) -> Result<(TdxCollateral, Vec<Got>), FetchError> {
    let items = items(sources, needs);
    let got = futures_util::future::join_all(items.iter().map(|item| fetcher.get(item))).await;
    let got: Vec<Got> = got.into_iter().collect::<Result<_, _>>()?;
    Ok((assemble(&got), got))
}

/// [`TdxCollateral`] from the four documents of [`items`].
pub fn assemble(got: &[Got]) -> TdxCollateral {
    let signed = |i: usize| {
        got[i]
            .parsed
            .signed
            .clone()
            .map(|s| (s.body, s.signature))
            .unwrap_or_default()
    };
    let chain = |i: usize| got[i].entry.issuer_chain.clone().unwrap_or_default();
    let (tcb_info, tcb_info_signature) = signed(0);
    let (qe_identity, qe_identity_signature) = signed(1);
    TdxCollateral {
        pck_crl_issuer_chain: chain(2),
        root_ca_crl: Some(hex::encode(got[3].entry.body.as_slice())),
        pck_crl: Some(hex::encode(got[2].entry.body.as_slice())),
        tcb_info_issuer_chain: chain(0),
        tcb_info,
        tcb_info_signature,
        qe_identity_issuer_chain: chain(1),
        qe_identity,
        qe_identity_signature,
    }
}
