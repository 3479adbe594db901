//! Keys and certificates made fresh for each test with `rcgen`: a CA and a server
//! certificate for `127.0.0.1`/`localhost` (TLS tests), and a token-signing CA with a leaf
//! whose key signs JWTs (token auth tests; the leaf goes in the token's `x5c` header, the
//! CA in distribution's `rootcertbundle`).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A TLS server certificate signed by a test CA, written as PEM files.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// A CA and a server certificate for `127.0.0.1` and `localhost`, in `dir`.
pub fn tls(dir: &Path) -> TlsFiles {
    let ca_key = KeyPair::generate().expect("CA key");
    let params = ca_params("orasfs test CA");
    let ca_cert = params.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let mut sp = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params");
    sp.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let cert = sp.signed_by(&key, &issuer).expect("server cert");
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    std::fs::write(&files.ca, ca_cert.pem()).expect("write CA");
    std::fs::write(&files.cert, cert.pem()).expect("write cert");
    std::fs::write(&files.key, key.serialize_pem()).expect("write key");
    files
}

/// What a token service needs to sign JWTs distribution trusts.
pub struct TokenSigner {
    /// The root bundle for distribution's `rootcertbundle`.
    pub bundle: PathBuf,
    /// The signing certificate (DER), for the `x5c` header.
    pub cert_der: Vec<u8>,
    /// The signing key, PKCS#8 DER (ECDSA P-256).
    pub key_pkcs8: Vec<u8>,
}

/// A token-signing CA (written to `dir`) and a leaf signed by it.
pub fn token_signer(dir: &Path) -> TokenSigner {
    let ca_key = KeyPair::generate().expect("token CA key");
    let params = ca_params("orasfs test token CA");
    let ca_cert = params.self_signed(&ca_key).expect("token CA cert");
    let issuer = Issuer::new(params, ca_key);
    let key = KeyPair::generate().expect("token key");
    let mut lp = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
    lp.distinguished_name
        .push(DnType::CommonName, "orasfs test token signer");
    lp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let leaf = lp.signed_by(&key, &issuer).expect("token leaf");
    let bundle = dir.join("token-ca.pem");
    std::fs::write(&bundle, ca_cert.pem()).expect("write token CA");
    TokenSigner {
        bundle,
        cert_der: leaf.der().to_vec(),
        key_pkcs8: key.serialize_der(),
    }
}
