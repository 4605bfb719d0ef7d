//! TLS to the broker (`mqtts://`, `wss://`): the files (CA, client certificate and key, each
//! PEM), reading them, and the rustls client configuration. rustls with the ring crypto provider
//! (the one webrtc uses), trusting the system's root certificates or the CA file given, and
//! presenting a client certificate when one is configured. Errors name the file, never quote it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Files for a TLS connection to the broker, each PEM. The configuration checks them when it is
/// loaded ([`load_certs`], [`load_key`]); the key's contents are never logged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MqttTls {
    /// CA certificate(s) to trust instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// Client certificate (chain), for brokers that authenticate devices by certificate.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key.
    pub key: Option<PathBuf>,
}

/// The certificates in a PEM file; an error (naming the file) if it cannot be read or holds none.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {}", path.display(), pem_error(e)))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate (BEGIN CERTIFICATE) in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1); an error naming the file, never
/// quoting it.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => format!(
            "{}: no PEM private key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) in it",
            path.display()
        ),
        e => format!("{}: {}", path.display(), pem_error(e)),
    })
}

fn pem_error(e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        // The other variants describe the structure, not the contents.
        other => format!("not a valid PEM file ({other:?})"),
    }
}

/// The rustls client configuration for `mqtts://` and `wss://`.
pub fn client_config(tls: &MqttTls) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca {
        Some(path) => {
            for cert in load_certs(path).map_err(anyhow::Error::msg)? {
                roots
                    .add(cert)
                    .map_err(|e| anyhow::anyhow!("MQTT CA file {}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                anyhow::bail!(
                    "no system root certificates found for the TLS broker ({} errors); name a CA \
                     file with --mqtt-ca",
                    found.errors.len()
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(
                load_certs(cert).map_err(anyhow::Error::msg)?,
                load_key(key).map_err(anyhow::Error::msg)?,
            )
            .map_err(|e| {
                anyhow::anyhow!(
                    "MQTT client certificate {} and key {}: {e}",
                    cert.display(),
                    key.display()
                )
            })?,
        _ => builder.with_no_client_auth(),
    })
}
