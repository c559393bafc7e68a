//! Loading PEM files and building TLS client settings, with errors that name the file.
//!
//! The gateway has one TLS stack (rustls with the ring provider), shared by Pingora's listeners
//! and upstream connections and by rskafka's broker connections.

use pingora::tls::CertificateDer;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{pem::PemObject, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::Arc;
use streamgate_config::model::UpstreamTls;

/// The crypto provider every TLS configuration of the gateway uses.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file (at least one).
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a private key from {}: {e}", path.display()))
}

/// A root store from a PEM file, every certificate checked.
pub(crate) fn root_store(path: &Path) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for cert in read_certs(path)? {
        store
            .add(cert)
            .map_err(|e| format!("{} holds an unusable CA certificate: {e}", path.display()))?;
    }
    Ok(store)
}

/// CA certificates in the form Pingora's upstream peers take.
pub(crate) fn pingora_ca(path: &Path) -> Result<Arc<[WrappedX509]>, String> {
    // Validate with rustls first: Pingora's parser panics on malformed DER.
    root_store(path)?;
    let certs = read_certs(path)?;
    Ok(certs
        .into_iter()
        .map(|c| WrappedX509::new(c.to_vec(), parse_x509))
        .collect::<Vec<_>>()
        .into())
}

/// A client certificate and key in the form Pingora's upstream peers take.
pub(crate) fn pingora_client_cert(cert: &Path, key: &Path) -> Result<Arc<CertKey>, String> {
    let certs = read_certs(cert)?;
    let key = read_key(key)?;
    for c in &certs {
        check_x509(c).map_err(|e| format!("{}: {e}", cert.display()))?;
    }
    Ok(Arc::new(CertKey::new(
        certs.into_iter().map(|c| c.to_vec()).collect(),
        key.secret_der().to_vec(),
    )))
}

/// Parses a certificate's structure without trusting it (Pingora's own parser panics on bad DER).
fn check_x509(cert: &CertificateDer<'_>) -> Result<(), String> {
    RootCertStore::empty()
        .add(cert.clone())
        .map_err(|e| format!("not a usable X.509 certificate: {e}"))
}

/// The rustls client configuration for TLS to Kafka brokers.
pub(crate) fn kafka_client_config(tls: &UpstreamTls) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let builder = if tls.verify {
        let roots = match &tls.ca_file {
            Some(path) => root_store(path)?,
            None => {
                let native = rustls_native_certs::load_native_certs();
                let mut store = RootCertStore::empty();
                store.add_parsable_certificates(native.certs);
                store
            }
        };
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
    };
    let config = match &tls.client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|e| format!("client certificate {}: {e}", cert.display()))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// `verify = false`: the handshake still checks signatures, but trusts any certificate.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
