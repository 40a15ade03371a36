//! Whom the role trusts when it posts to `https://` receivers: the system's root certificates
//! (`rustls-native-certs`: `/etc/ssl/certs` on Debian, `SSL_CERT_FILE` and `SSL_CERT_DIR`
//! honoured) and, with `--webhook-ca-file`, the CA certificates of a PEM file (a private CA).
//! Certificates and host names are always verified; there is no switch to turn that off.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{pem::PemObject, CertificateDer};
use rustls::{ClientConfig, RootCertStore};

/// A trust configuration that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read or parsed.
    #[error("reading --webhook-ca-file {path}: {source}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The CA file holds no usable certificate.
    #[error("--webhook-ca-file {path}: no CA certificate in it ({rejected} rejected)")]
    NoCa {
        /// The file.
        path: PathBuf,
        /// Certificates found but not usable as roots.
        rejected: usize,
    },
    /// rustls refused the protocol versions (a build without TLS 1.2 and 1.3).
    #[error("building the TLS client configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The client configuration every endpoint uses: the system's roots, plus those of `ca_file`.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "reading the system's root certificates");
    }
    let (system, _) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|source| TlsError::CaFile {
                path: path.into(),
                source,
            })?;
        let (added, rejected) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(TlsError::NoCa {
                path: path.into(),
                rejected,
            });
        }
        tracing::info!(path = %path.display(), roots = added, "trusting the CA file's certificates");
    }
    if roots.is_empty() {
        tracing::warn!("no root certificate found: https:// receivers will fail their TLS handshake (give --webhook-ca-file)");
    }
    tracing::debug!(system, "system root certificates loaded");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_a_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(matches!(
            client_config(Some(&empty)),
            Err(TlsError::NoCa { rejected: 0, .. })
        ));
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            client_config(Some(&missing)),
            Err(TlsError::CaFile { .. })
        ));
    }
}
