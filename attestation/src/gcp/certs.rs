//! Google's pinned EK/AK CA certificates. Every GCE Shielded/Confidential VM vTPM's AK
//! certificate is issued by "EK/AK CA Intermediate", which "EK/AK CA Root" signs. Only the root is
//! a trust anchor; the intermediate is pinned so evidence need not carry it, and any other
//! intermediate is accepted only when a trusted root signed it.

use crate::snp::TrustedRoot;
use openssl::x509::X509;
use std::sync::OnceLock;

/// Google "EK/AK CA Root" (C=US, ST=California, L=Mountain View, O=Google LLC, OU=Google Cloud,
/// CN=EK/AK CA Root), RSA-4096, valid 2022-07-08 to 2122-07-08, SHA-256 fingerprint
/// 59:47:59:59:4B:9B:61:52:4F:6C:8E:F6:68:F7:17:7F:7B:90:66:BC:06:74:F2:F4:9F:E9:E0:52:BE:78:BE:B2.
/// Published by Google in go-tpm-tools (`server/ca-certs/gcp_ek_ak_ca_root.crt`); a test checks
/// these bytes against that file, the subject and the self-signature.
pub const GOOGLE_EK_AK_CA_ROOT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIGATCCA+mgAwIBAgIUAKZdpPnjKPOANcOnPU9yQyvfFdwwDQYJKoZIhvcNAQEL
BQAwfjELMAkGA1UEBhMCVVMxEzARBgNVBAgTCkNhbGlmb3JuaWExFjAUBgNVBAcT
DU1vdW50YWluIFZpZXcxEzARBgNVBAoTCkdvb2dsZSBMTEMxFTATBgNVBAsTDEdv
b2dsZSBDbG91ZDEWMBQGA1UEAxMNRUsvQUsgQ0EgUm9vdDAgFw0yMjA3MDgwMDQw
MzRaGA8yMTIyMDcwODA1NTcyM1owfjELMAkGA1UEBhMCVVMxEzARBgNVBAgTCkNh
bGlmb3JuaWExFjAUBgNVBAcTDU1vdW50YWluIFZpZXcxEzARBgNVBAoTCkdvb2ds
ZSBMTEMxFTATBgNVBAsTDEdvb2dsZSBDbG91ZDEWMBQGA1UEAxMNRUsvQUsgQ0Eg
Um9vdDCCAiIwDQYJKoZIhvcNAQEBBQADggIPADCCAgoCggIBAJ0l9VCoyJZLSol8
KyhNpbS7pBnuicE6ptrdtxAWIR2TnLxSgxNFiR7drtofxI0ruceoCIpsa9NHIKrz
3sM/N/E8mFNHiJAuyVf3pPpmDpLJZQ1qe8yHkpGSs3Kj3s5YYWtEecCVfzNs4MtK
vGfA+WKB49A6Noi8R9R1GonLIN6wSXX3kP1ibRn0NGgdqgfgRe5HC3kKAhjZ6scT
8Eb1SGlaByGzE5WoGTnNbyifkyx9oUZxXVJsqv2q611W3apbPxcgev8z5JXQUbrr
Q7EbO0StK1DsKRsKLuD+YLxjrBRQ4UeIN5WHp6G0vgYiOptHm6YKZxQemO/kVMLR
zsm1AYH7eNOFekcBIKRjSqpk5m4ud04qum6f0hBj3iE/Pe+DvIbVhLh9ItAunISG
QPA9dYEgfA/qWir+pU7LV3phpLeGhull8G/zYmQhF3heg0buIR70aavzT8iLAQrx
VMNRZJEGMwIN/tq8YiT3+3EZIcSqq6GAGjiuVw3NIsXC3+CuSJGQ5GbDp49Lc6VW
PHeWeFvwSUGgxKXq5r1+PRsoYgK6S4hhecgXEX5c7Rta6TcFlEFb0XK9fpy1dr89
LeFGxUBpdDvKxDRLMm3FQen8rmR/PSReEcJsaqbUP/q7Pc7k0RfF9Mb6AfPZfnqg
pYJQ+IFSr9EjRSW1wPcL03zoTP47AgMBAAGjdTBzMA4GA1UdDwEB/wQEAwIBBjAQ
BgNVHSUECTAHBgVngQUIATAPBgNVHRMBAf8EBTADAQH/MB0GA1UdDgQWBBRJ50pb
Vin1nXm3pjA8A7KP5xTdTDAfBgNVHSMEGDAWgBRJ50pbVin1nXm3pjA8A7KP5xTd
TDANBgkqhkiG9w0BAQsFAAOCAgEAlfHRvOB3CJoLTl1YG/AvjGoZkpNMyp5X5je1
ICCQ68b296En9hIUlcYY/+nuEPSPUjDA3izwJ8DAfV4REgpQzqoh6XhR3TgyfHXj
J6DC7puzEgtzF1+wHShUpBoe3HKuL4WhB3rvwk2SEsudBu92o9BuBjcDJ/GW5GRt
pD/H71HAE8rI9jJ41nS0FvkkjaX0glsntMVUXiwcta8GI0QOE2ijsJBwk41uQGt0
YOj2SGlEwNAC5DBTB5kZ7+6X9xGE6/c+M3TAA0ONoX18rNfif94cCx/mPYOs8pUk
ANRAQ4aTRBvpBrryGT8R1ahTBkMeRQG3tdsLHRT8fJCFUANd5WLWsi83005y/WuM
z8/gFKc0PL+F+MubCsJ1ODPTRscH93QlS4zEMg5hDAIks+fDoRJ2QiROqo7GAqbT
c7STKfGcr9+pa63na7f3oy1sZPWPdxB8tx5z3lghiPP3ktQx/yK/1Fwf1hgxJHFy
/2UcaGuOXRRRTPyEnppZp82Kigs9aPHWtaVm2/LrXX2fvT9iM/k0CovNAj8rztHx
sUEoA0xJnSOJNPpe9PRdjsTj7/u3Xu6hQLNNidBHgI3Hcmi704HMMd/3yZ424OOr
S32ylpeU1oeQHFrLE6hYX4/ttMETbmESIKd2rTgstPotSvkuB5TljbKYPR+lq7hQ
av16U4E=
-----END CERTIFICATE-----
";

/// Google "EK/AK CA Intermediate" (v3), RSA-4096, signed by the root above, valid 2022-08-23 to
/// 2122-07-08, SHA-256 fingerprint
/// C8:4D:E8:11:6D:FA:F5:A9:08:F2:1E:81:04:87:79:1F:54:37:E2:06:D0:0A:D8:02:50:50:CC:A6:BD:2F:F6:27.
/// From go-tpm-tools `server/ca-certs/gcp_ek_ak_ca_intermediate_v3.crt`; its subject key
/// identifier (E9:66:73:54:...) is the authority key identifier of the AK certificates it issues.
pub const GOOGLE_EK_AK_CA_INTERMEDIATE_V3_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIHIjCCBQqgAwIBAgITZ2viLuozn1JgaG2giK96ZF5cPzANBgkqhkiG9w0BAQsF
ADB+MQswCQYDVQQGEwJVUzETMBEGA1UECBMKQ2FsaWZvcm5pYTEWMBQGA1UEBxMN
TW91bnRhaW4gVmlldzETMBEGA1UEChMKR29vZ2xlIExMQzEVMBMGA1UECxMMR29v
Z2xlIENsb3VkMRYwFAYDVQQDEw1FSy9BSyBDQSBSb290MCAXDTIyMDgyMzIyMjYy
OVoYDzIxMjIwNzA4MDU1NzIzWjCBhjELMAkGA1UEBhMCVVMxEzARBgNVBAgTCkNh
bGlmb3JuaWExFjAUBgNVBAcTDU1vdW50YWluIFZpZXcxEzARBgNVBAoTCkdvb2ds
ZSBMTEMxFTATBgNVBAsTDEdvb2dsZSBDbG91ZDEeMBwGA1UEAxMVRUsvQUsgQ0Eg
SW50ZXJtZWRpYXRlMIICIjANBgkqhkiG9w0BAQEFAAOCAg8AMIICCgKCAgEAoGMe
14Bhqh9kWnHW0VnqNl+Iake9KUANTgC12z+8ULqciIvDoiw0ezQ1fP/pwKhNRxcV
wP5+JgbJJluZw1lu1uV5trLs5yA/Er9CfVGX8CQF1TB7Zfv6Hf7hv7lv7eE986rd
a1oM55hJXEt0L3BvWfVpPibBloktSqqbSVzrBJrtSFi9P+Hhku6Bw6Zt1T/8/z6O
VdMbPNEhbPtCGFxmwyzKfb3wWU2YCIzZd7h53pV0ea1VJL3iGmRBJhC3Rkwvs3Qc
SZYYENft6x42jWSK/t2WrrZknP2Q67OFlhVL/gMo0NJ6bczovY03yRTnoDcN6YXK
qlc7iwPdUJn86jJHPL2s9KCWR/UDUGtb4PqZSaHQXA58N/tZSyQ48T0v+ar9CYVV
AIOV93VJDn13j0lZLax1bAkbzl0I7il1S+W2wEVx+K3WUf/29aBhRLZ3Ddkyj/Ta
8HxhMXpdOciddEXh2G4o/WaQAh3XCW8FGkKXjW8Ao7kBDBbpmCvlRvOtTBWetx9d
IOGzUkX53s3R1soUvMeZAP8208fe06+TOj+k7Mcn5qY1XuALzAKhZlR9hGw1pjKE
IUCKTJbfL+L2QDdP7OS2Kc2mBVQAcLu9PmaG++OZoVTlUrGd/6DBfKTEsN+aytWo
CRkJKu8kTWYyaMhXAYD1C4yp5xLQMKyFImNXumUCAwEAAaOCAYwwggGIMA4GA1Ud
DwEB/wQEAwIBBjAQBgNVHSUECTAHBgVngQUIATAPBgNVHRMBAf8EBTADAQH/MB0G
A1UdDgQWBBTpZnNUZ2Yb791lv+XoXOORC5sFUjAfBgNVHSMEGDAWgBRJ50pbVin1
nXm3pjA8A7KP5xTdTDCBjQYIKwYBBQUHAQEEgYAwfjB8BggrBgEFBQcwAoZwaHR0
cDovL3ByaXZhdGVjYS1jb250ZW50LTYyZDcxNzczLTAwMDAtMjFkYS04NTJlLWY0
ZjVlODBkNzc3OC5zdG9yYWdlLmdvb2dsZWFwaXMuY29tLzAzMmJmOWQzOWRiNGZh
MDZhYWRlL2NhLmNydDCBggYDVR0fBHsweTB3oHWgc4ZxaHR0cDovL3ByaXZhdGVj
YS1jb250ZW50LTYyZDcxNzczLTAwMDAtMjFkYS04NTJlLWY0ZjVlODBkNzc3OC5z
dG9yYWdlLmdvb2dsZWFwaXMuY29tLzAzMmJmOWQzOWRiNGZhMDZhYWRlL2NybC5j
cmwwDQYJKoZIhvcNAQELBQADggIBAJOunRNQRR4hxBRpzVWhAaSftC7mwvvys+p6
ZmUpbYAObjsaxRX+aucZF2jofS1VDPQy7j0aj8wTIhz0qv6jEvkMZH/E5fb2rC/S
Siqui51RwiTWi7Ry2XMuAbgG2suCirTL6O/iYed6vyJf07iysMK0o0bEeChEh3XP
QNrl+Dcdrff4fUG6SGGgx0IXWJHD9qqU895rYXCyFhJe+QCtPHg/HnYX//yGlm7x
hESYl0hgEVCITvu0YjNlKoBEiBMtHk0BHCeFkUm+pBydOjSl0BHUJs3UAJXuaYDp
/CjpnnYfRo8EF2Xy5/bCqFU+jrjYLz1xbOh28H4kNudZ3KV9jQoM+lDqmeM7rq79
r5ie1XfpC21tjxcAJktmxJP1hRpOtWoVtSJFLj05avqpDwt6AWDq2azquN7gjZFF
/vNB6fbK+w/Yi7ArSLyo2z18vABWNEiV032NG0jrXXYWoc6l8bfXUxwG6Ntkj2L8
p35ynxjR0mA73l7z920iBAl6rp15FfoR3LSzo1l+VaucnrWcnHow/kEFGqjtP8uE
mzQc5Rq+5Xd5/64jEcomGKNh+6b0gY3Y67q2NlrFa6Fo9vfzDwqdYSYzENb/PR3u
GFhkvoJzTWFXdsVypk0frMsX1chdbHOM4jzDNhHAbQNumH82E8avyKjepIf+EPC6
1pmPeRHX
-----END CERTIFICATE-----
";

/// Google's pinned root as a trust anchor.
pub fn google_ak_roots() -> Vec<TrustedRoot> {
    // Parsed once per process: every VerifyOptions starts from it.
    static ROOTS: OnceLock<Vec<TrustedRoot>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            X509::from_pem(GOOGLE_EK_AK_CA_ROOT_PEM.as_bytes())
                .map(|certificate| TrustedRoot {
                    name: "Google EK/AK CA Root".into(),
                    certificate,
                    test_only: false,
                })
                .into_iter()
                .collect()
        })
        .clone()
}

/// Google's pinned intermediate(s), used whether or not the evidence carries one.
pub fn google_ak_intermediates() -> Vec<X509> {
    pinned_intermediates()
        .iter()
        .map(|(cert, _)| cert.clone())
        .collect()
}

/// The pinned intermediates with their DER, parsed once per process.
pub(crate) fn pinned_intermediates() -> &'static [(X509, Vec<u8>)] {
    static PINNED: OnceLock<Vec<(X509, Vec<u8>)>> = OnceLock::new();
    PINNED.get_or_init(|| {
        [GOOGLE_EK_AK_CA_INTERMEDIATE_V3_PEM]
            .into_iter()
            .filter_map(|pem| {
                let cert = X509::from_pem(pem.as_bytes()).ok()?;
                let der = cert.to_der().ok()?;
                Some((cert, der))
            })
            .collect()
    })
}
