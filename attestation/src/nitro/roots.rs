//! The AWS Nitro Attestation PKI root, pinned: a document's own cabundle[0] is only accepted when it
//! is byte for byte this certificate (or a TEST-ONLY root the caller names).

use crate::snp::TrustedRoot;
use openssl::x509::X509;

/// AWS Nitro root G1 (C=US, O=Amazon, OU=AWS, CN=aws.nitro-enclaves), ECDSA P-384, valid
/// 2019-10-28 13:28:05Z to 2049-10-28 14:28:05Z, SHA-256 fingerprint
/// 64:1A:03:21:A3:E2:44:EF:E4:56:46:31:95:D6:06:31:7E:D7:CD:CC:3C:17:56:E0:98:93:F3:C6:8F:79:BB:5B.
/// AWS publishes it as AWS_NitroEnclaves_Root-G1.zip (see the Nitro Enclaves and NitroTPM
/// "validate the attestation document" guides); it roots both Nitro Enclaves (NSM) and NitroTPM
/// attestation documents in the commercial partitions. A test checks subject, self-signature and
/// fingerprint.
pub const AWS_NITRO_ROOT_G1_PEM: &str = "-----BEGIN CERTIFICATE-----
MIICETCCAZagAwIBAgIRAPkxdWgbkK/hHUbMtOTn+FYwCgYIKoZIzj0EAwMwSTEL
MAkGA1UEBhMCVVMxDzANBgNVBAoMBkFtYXpvbjEMMAoGA1UECwwDQVdTMRswGQYD
VQQDDBJhd3Mubml0cm8tZW5jbGF2ZXMwHhcNMTkxMDI4MTMyODA1WhcNNDkxMDI4
MTQyODA1WjBJMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGQW1hem9uMQwwCgYDVQQL
DANBV1MxGzAZBgNVBAMMEmF3cy5uaXRyby1lbmNsYXZlczB2MBAGByqGSM49AgEG
BSuBBAAiA2IABPwCVOumCMHzaHDimtqQvkY4MpJzbolL//Zy2YlES1BR5TSksfbb
48C8WBoyt7F2Bw7eEtaaP+ohG2bnUs990d0JX28TcPQXCEPZ3BABIeTPYwEoCWZE
h8l5YoQwTcU/9KNCMEAwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUkCW1DdkF
R+eWw5b6cp3PmanfS5YwDgYDVR0PAQH/BAQDAgGGMAoGCCqGSM49BAMDA2kAMGYC
MQCjfy+Rocm9Xue4YnwWmNJVA44fA0P5W2OpYow9OYCVRaEevL8uO1XYru5xtMPW
rfMCMQCi85sWBbJwKKXdS6BptQFuZbT73o/gBh1qUxl/nNr12UO8Yfwr6wPLb+6N
IwLz3/Y=
-----END CERTIFICATE-----
";

/// The name reports give the pinned root.
pub const AWS_NITRO_ROOT_G1_NAME: &str = "AWS Nitro root G1";

/// AWS's pinned Nitro root as a trust anchor.
pub fn aws_nitro_roots() -> Vec<TrustedRoot> {
    // Parsed once per process: every VerifyOptions starts from it.
    static ROOTS: std::sync::OnceLock<Vec<TrustedRoot>> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            X509::from_pem(AWS_NITRO_ROOT_G1_PEM.as_bytes())
                .map(|certificate| TrustedRoot {
                    name: AWS_NITRO_ROOT_G1_NAME.into(),
                    certificate,
                    test_only: false,
                })
                .into_iter()
                .collect()
        })
        .clone()
}
