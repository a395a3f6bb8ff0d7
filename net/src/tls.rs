//! TLS settings for the client port and the node link: rustls, TLS 1.3 only, the `ring`
//! crypto provider.
//!
//! Client port: the server side loads a certificate chain and its private key from PEM files
//! (`server_config`); the client side trusts the CA certificates of a PEM file (or any root
//! store) and checks the server's certificate against a server name (`ClientTls`).
//!
//! Node link: every node both accepts and dials, so `PeerTls` holds both halves, built from
//! one certificate + key per node and the one CA that signs every node's certificate. Both
//! ends are authenticated (mutual TLS): the dialer checks the acceptor's certificate against
//! the host of the address it dialed, and the acceptor requires a client certificate signed
//! by the same CA. The binary protocol (and, on the link, the peer-token handshake) runs
//! unchanged inside the TLS stream.

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
    let key = read_private_key(key_file)?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| key_error(e, cert_file, key_file))?;
    Ok(Arc::new(config))
}

/// The PEM private key (PKCS#8, PKCS#1 or SEC1) of `key_file`.
fn read_private_key(key_file: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(key_file).map_err(|e| match e {
        pem::Error::NoItemsFound => format!("{}: no private key found (PEM)", key_file.display()),
        e => format!("{}: {}", key_file.display(), pem_error(e)),
    })
}

/// One line for rustls' refusal of a certificate and key pair.
fn key_error(e: rustls::Error, cert_file: &Path, key_file: &Path) -> String {
    match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "{}: this key does not belong to the certificate in {}",
            key_file.display(),
            cert_file.display()
        ),
        e => format!("{} with {}: {e}", cert_file.display(), key_file.display()),
    }
}

/// The CA certificate(s) of `ca_file` as a root store.
fn read_roots(ca_file: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(ca_file)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca_file.display()))?;
    }
    Ok(roots)
}

/// TLS for the node link (`raft_link::LinkConfig::tls`): both halves, since every node
/// accepts its peers' connections and dials its own.
///
/// What is verified, both ways, is that the other end holds a certificate (and its key)
/// issued by the cluster's CA; the dialer also checks that the certificate is valid for the
/// host it dialed (the host part of the peer's `peer_addr`: an IP address needs an IP SAN).
/// The acceptor does not check the dialer's name (a dialer's source address says little),
/// so any holder of a certificate from that CA gets as far as the peer-token handshake,
/// which still runs inside TLS: the CA should sign nothing but this cluster's nodes.
#[derive(Clone, Debug)]
pub struct PeerTls {
    /// The accepting side: this node's certificate; client certificates required.
    pub server: Arc<rustls::ServerConfig>,
    /// The dialing side: trusts the CA; presents this node's certificate.
    pub client: Arc<rustls::ClientConfig>,
}

impl PeerTls {
    /// This node's certificate chain (`cert_file`, leaf first) and key (`key_file`), and the
    /// CA certificate(s) that sign every node's certificate (`ca_file`), all PEM. Errors are
    /// one line naming the file at fault.
    pub fn from_files(
        cert_file: &Path,
        key_file: &Path,
        ca_file: &Path,
    ) -> Result<PeerTls, String> {
        let certs = read_certificates(cert_file)?;
        let key = read_private_key(key_file)?;
        let roots = Arc::new(read_roots(ca_file)?);
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| format!("{}: {e}", ca_file.display()))?;
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS settings: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| key_error(e, cert_file, key_file))?;
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS settings: {e}"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| key_error(e, cert_file, key_file))?;
        Ok(PeerTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// The name a peer at `addr` (`host:port`, as in the membership) must carry in its
    /// certificate: its host, a DNS name or an IP address.
    pub fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
        let host = host_of(addr);
        ServerName::try_from(host.to_string())
            .map_err(|_| format!("{host:?} (of {addr}) is not a valid TLS server name"))
    }
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
        ClientTls::with_roots(read_roots(ca_file)?, server_name)
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
            let e = PeerTls::from_files(file, file, file).unwrap_err();
            assert!(e.starts_with(&file.display().to_string()), "{e}");
        }
        assert!(ClientTls::with_roots(RootCertStore::empty(), "not a name!").is_err());
        assert!(ClientTls::with_roots(RootCertStore::empty(), "127.0.0.1").is_ok());
    }

    #[test]
    fn a_peer_address_names_its_host() {
        assert!(matches!(
            PeerTls::server_name("127.0.0.1:7511"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            PeerTls::server_name("[::1]:7511"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            PeerTls::server_name("node1.example:7511"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(PeerTls::server_name("bad name!:7511").is_err());
    }
}
