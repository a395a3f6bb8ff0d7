//! TLS settings for the client port: rustls, TLS 1.3 only, the `ring` crypto provider.
//!
//! The server side loads a certificate chain and its private key from PEM files
//! (`server_config`); the client side trusts the CA certificates of a PEM file (or any root
//! store) and checks the server's certificate against a server name (`ClientTls`). The binary
//! protocol runs unchanged inside the TLS stream.

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::RootCertStore;
use std::path::Path;
use std::sync::Arc;

pub use rustls;

/// The one crypto provider walletd uses, on both sides (explicit, so the process-wide default
/// never matters).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's TLS configuration from a PEM certificate chain (leaf first, then any
/// intermediates) and the PEM private key (PKCS#8, PKCS#1 or SEC1) that goes with it.
/// Errors are one line naming the file at fault.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = read_certificates(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| match e {
        pem::Error::NoItemsFound => format!("{}: no private key found (PEM)", key_file.display()),
        e => format!("{}: {}", key_file.display(), pem_error(e)),
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "{}: this key does not belong to the certificate in {}",
                key_file.display(),
                cert_file.display()
            ),
            e => format!("{} with {}: {e}", cert_file.display(), key_file.display()),
        })?;
    Ok(Arc::new(config))
}

/// Every certificate of a PEM file, in order; at least one.
pub fn read_certificates(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| format!("{}: {}", file.display(), pem_error(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {}", file.display(), pem_error(e)))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found (PEM)", file.display()));
    }
    Ok(certs)
}

fn pem_error(e: pem::Error) -> String {
    match e {
        pem::Error::Io(e) => e.to_string(),
        e => format!("not valid PEM: {e}"),
    }
}

/// What a client needs to speak TLS to walletd: whom to trust and which name the server's
/// certificate must carry.
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    /// The DNS name or IP address the server's certificate must be valid for.
    pub server_name: ServerName<'static>,
}

impl ClientTls {
    /// Trusts the CA certificate(s) in `ca_file` (PEM). `server_name`: a DNS name or an IP
    /// address (e.g. the host part of the address, `host_of`).
    pub fn from_ca_file(ca_file: &Path, server_name: &str) -> Result<ClientTls, String> {
        let mut roots = RootCertStore::empty();
        for cert in read_certificates(ca_file)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca_file.display()))?;
        }
        ClientTls::with_roots(roots, server_name)
    }

    /// Trusts the given root store.
    pub fn with_roots(roots: RootCertStore, server_name: &str) -> Result<ClientTls, String> {
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|_| format!("{server_name:?} is not a valid TLS server name"))?;
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS settings: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls {
            config: Arc::new(config),
            server_name,
        })
    }
}

/// The host part of `HOST:PORT` (`[v6]:PORT` gives `v6`): the default server name.
pub fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => addr,
    };
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_an_address() {
        assert_eq!(host_of("127.0.0.1:7400"), "127.0.0.1");
        assert_eq!(host_of("wallet.example:7400"), "wallet.example");
        assert_eq!(host_of("[::1]:7400"), "::1");
        assert_eq!(host_of("wallet.example"), "wallet.example");
    }

    #[test]
    fn bad_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for file in [&missing, &empty, &garbage] {
            let e = server_config(file, file).unwrap_err();
            assert!(e.starts_with(&file.display().to_string()), "{e}");
            assert!(!e.contains('\n'), "{e}");
            let e = ClientTls::from_ca_file(file, "localhost").unwrap_err();
            assert!(e.starts_with(&file.display().to_string()), "{e}");
        }
        assert!(ClientTls::with_roots(RootCertStore::empty(), "not a name!").is_err());
        assert!(ClientTls::with_roots(RootCertStore::empty(), "127.0.0.1").is_ok());
    }
}
