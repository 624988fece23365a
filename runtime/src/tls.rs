//! Mutual TLS between sidecars, with SPIFFE identities.
//!
//! A sidecar started with `--tls-cert`, `--tls-key` and `--tls-ca` holds one workload
//! certificate (its URI SAN `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`) and the mesh's roots.
//! Inbound ports in `strict` or `permissive` mode accept TLS with a client certificate and
//! hand the caller's identity to authorization; clusters in `istio_mutual` mode present the
//! certificate and check that the upstream proves an identity of the trust domain (one of
//! the service's workloads, when meshc knows them).
//!
//! The rustls configurations are built once; what they consult (key, chain, roots) lives
//! behind a lock that [`MeshTls::watch`] swaps when the files change, so a rotated
//! certificate applies to the next handshake without a restart. A bad new file is reported
//! and the last good material stays.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};

/// How often the certificate files are checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// Where the workload's certificate material lives.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The mesh's root certificates, PEM.
    pub ca: PathBuf,
}

/// What the files held when last read.
#[derive(Debug)]
struct Material {
    key: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    clients: Arc<dyn ClientCertVerifier>,
    /// The files' sizes and modification times, to notice a change.
    stamp: Vec<(u64, Option<SystemTime>)>,
    /// This sidecar's own identity, from its certificate.
    identity: Option<String>,
}

/// The workload's TLS state, shared by every listener and cluster.
#[derive(Debug)]
pub struct MeshTls {
    files: TlsFiles,
    trust_domain: &'static str,
    provider: Arc<CryptoProvider>,
    material: RwLock<Arc<Material>>,
}

impl MeshTls {
    /// Reads the files; the error names the file and what is wrong with it.
    pub fn load(files: TlsFiles, trust_domain: &'static str) -> Result<Arc<MeshTls>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let material = read_material(&files, &provider)?;
        Ok(Arc::new(MeshTls { files, trust_domain, provider, material: RwLock::new(Arc::new(material)) }))
    }

    fn current(&self) -> Arc<Material> {
        self.material.read().unwrap_or_else(|it| it.into_inner()).clone()
    }

    /// This sidecar's identity as its certificate states it (`<td>/ns/<ns>/sa/<sa>`).
    pub fn identity(&self) -> Option<String> {
        self.current().identity.clone()
    }

    /// Rereads the files when their sizes or times changed: `Ok(true)` when new material is
    /// in use, `Err` (the old material stays) when the new files are unusable.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        if stamp(&self.files) == self.current().stamp {
            return Ok(false);
        }
        let material = read_material(&self.files, &self.provider)?;
        *self.material.write().unwrap_or_else(|it| it.into_inner()) = Arc::new(material);
        Ok(true)
    }

    /// Checks the files every [`RELOAD_EVERY`], forever, reporting each reload on stderr.
    pub async fn watch(self: Arc<Self>, workload: &'static str) {
        let mut failed_stamp = None;
        loop {
            tokio::time::sleep(RELOAD_EVERY).await;
            let now = stamp(&self.files);
            if failed_stamp.as_ref() == Some(&now) {
                continue;
            }
            match self.reload_if_changed() {
                Ok(true) => {
                    failed_stamp = None;
                    let identity = self.identity().unwrap_or_else(|| "no SPIFFE identity".to_owned());
                    crate::server::say(&format!("{workload}: TLS certificate reloaded ({identity})"));
                }
                Ok(false) => {}
                Err(err) => {
                    // Reported once per change of the files, not every second.
                    failed_stamp = Some(now);
                    crate::server::say(&format!("{workload}: error: TLS files changed but cannot be used, keeping the old ones: {err}"));
                }
            }
        }
    }

    /// The configuration of inbound ports: a client certificate is required, chained to the
    /// roots and naming an identity of the trust domain.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, String> {
        let verifier = Arc::new(PeerClients { tls: self.clone() });
        let builder = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|err| err.to_string())?;
        let mut config = builder.with_client_cert_verifier(verifier).with_cert_resolver(Arc::new(OwnCert { tls: self.clone() }));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The configuration towards a cluster. `Mesh` checks SPIFFE identities; `Simple` and
    /// `Mutual` check the server's name against the roots like any TLS client.
    pub fn client_config(self: &Arc<Self>, check: UpstreamCheck, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, String> {
        let verifier = Arc::new(Upstreams { tls: self.clone(), check });
        let builder = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|err| err.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match check {
            UpstreamCheck::Name => builder.with_no_client_auth(),
            UpstreamCheck::Mesh(_) | UpstreamCheck::NameWithClientCert => {
                builder.with_client_cert_resolver(Arc::new(OwnCert { tls: self.clone() }))
            }
        };
        config.alpn_protocols = alpn.iter().map(|it| it.to_vec()).collect();
        Ok(Arc::new(config))
    }

    fn algorithms(&self) -> WebPkiSupportedAlgorithms {
        self.provider.signature_verification_algorithms
    }

    /// Whether `identity` (`<td>/ns/...`) belongs to this mesh's trust domain.
    fn in_trust_domain(&self, identity: &str) -> bool {
        identity.split_once('/').is_some_and(|(domain, _)| domain == self.trust_domain)
    }
}

/// What a client checks of an upstream's certificate, beyond its chain.
#[derive(Clone, Copy, Debug)]
pub enum UpstreamCheck {
    /// A SPIFFE identity of the trust domain, one of these when any are listed.
    Mesh(&'static [&'static str]),
    /// The server name, as a browser would; no client certificate (`simple`).
    Name,
    /// The server name, presenting the workload's certificate (`mutual`).
    NameWithClientCert,
}

/// The identity a certificate states in its `spiffe://` URI SAN, without the scheme:
/// `cluster.local/ns/default/sa/reviews`, as Istio's authorization rules write principals.
pub fn spiffe_identity(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let names = parsed.subject_alternative_name().ok()??;
    names.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix("spiffe://").map(str::to_owned),
        _ => None,
    })
}

fn stamp(files: &TlsFiles) -> Vec<(u64, Option<SystemTime>)> {
    [&files.cert, &files.key, &files.ca]
        .iter()
        .map(|path| std::fs::metadata(path).map_or((u64::MAX, None), |it| (it.len(), it.modified().ok())))
        .collect()
}

fn read_material(files: &TlsFiles, provider: &Arc<CryptoProvider>) -> Result<Material, String> {
    // The stamp is taken first: a change while reading shows as a change next time.
    let stamp = stamp(files);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|err| format!("{}: {err}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|err| format!("{}: {err}", files.cert.display()))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("{}: no certificate in the file", files.cert.display()));
    };
    let identity = spiffe_identity(leaf);
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|err| format!("{}: {err}", files.key.display()))?;
    let key = provider.key_provider.load_private_key(key).map_err(|err| format!("{}: {err}", files.key.display()))?;
    let certified = CertifiedKey::new(chain, key);
    certified.keys_match().map_err(|err| format!("{} and {} do not belong together: {err}", files.cert.display(), files.key.display()))?;
    let mut roots = RootCertStore::empty();
    let mut count = 0;
    for cert in CertificateDer::pem_file_iter(&files.ca).map_err(|err| format!("{}: {err}", files.ca.display()))? {
        let cert = cert.map_err(|err| format!("{}: {err}", files.ca.display()))?;
        roots.add(cert).map_err(|err| format!("{}: {err}", files.ca.display()))?;
        count += 1;
    }
    if count == 0 {
        return Err(format!("{}: no root certificate in the file", files.ca.display()));
    }
    let roots = Arc::new(roots);
    let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|err| format!("{}: {err}", files.ca.display()))?;
    Ok(Material { key: Arc::new(certified), roots, clients, stamp, identity })
}

/// Presents the workload's current certificate, as a server and as a client.
#[derive(Debug)]
struct OwnCert {
    tls: Arc<MeshTls>,
}

impl ResolvesServerCert for OwnCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.tls.current().key.clone())
    }
}

impl ResolvesClientCert for OwnCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.tls.current().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Checks callers' certificates against the current roots and the trust domain.
#[derive(Debug)]
struct PeerClients {
    tls: Arc<MeshTls>,
}

impl ClientCertVerifier for PeerClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a mesh peer has one certificate and sends it.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.tls.current().clients.verify_client_cert(end_entity, intermediates, now)?;
        match spiffe_identity(end_entity) {
            Some(identity) if self.tls.in_trust_domain(&identity) => Ok(ClientCertVerified::assertion()),
            Some(identity) => {
                Err(rustls::Error::General(format!("peer identity {identity} is outside trust domain {}", self.tls.trust_domain)))
            }
            None => Err(rustls::Error::General("the peer's certificate has no SPIFFE identity".to_owned())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.tls.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.tls.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.tls.algorithms().supported_schemes()
    }
}

/// Checks upstreams' certificates against the current roots, then their identity or name.
#[derive(Debug)]
struct Upstreams {
    tls: Arc<MeshTls>,
    check: UpstreamCheck,
}

impl ServerCertVerifier for Upstreams {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let material = self.tls.current();
        match self.check {
            UpstreamCheck::Mesh(principals) => {
                let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_cert_signed_by_trust_anchor(
                    &parsed,
                    &material.roots,
                    intermediates,
                    now,
                    self.tls.algorithms().all,
                )?;
                let Some(identity) = spiffe_identity(end_entity) else {
                    return Err(rustls::Error::General("the upstream's certificate has no SPIFFE identity".to_owned()));
                };
                let expected =
                    if principals.is_empty() { self.tls.in_trust_domain(&identity) } else { principals.contains(&identity.as_str()) };
                if expected {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::General(format!("the upstream proved identity {identity}, which may not serve this cluster")))
                }
            }
            UpstreamCheck::Name | UpstreamCheck::NameWithClientCert => {
                let verifier = WebPkiServerVerifier::builder_with_provider(material.roots.clone(), self.tls.provider.clone())
                    .build()
                    .map_err(|err| rustls::Error::General(err.to_string()))?;
                verifier.verify_server_cert(end_entity, intermediates, server_name, &[], now)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.tls.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.tls.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.tls.algorithms().supported_schemes()
    }
}
