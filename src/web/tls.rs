//! The workspace served over TLS by the node itself (`[web] tls_cert`, `tls_key`): any address,
//! `Secure` cookies, and — with `[web] client_ca` — officers' smart-card certificates: a browser
//! may present one (never required), and an account that holds its fingerprint signs in with
//! it ([`crate::accounts::Accounts::sign_in_certificate`]). The chain is checked against the
//! officers' CA during the handshake (validity, signature); the fingerprint maps it to exactly
//! one account.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::{Extension, Router};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{debug, warn};

use crate::config::WebTls;
use crate::encoding::Digest;

/// The certificate a browser presented in the TLS handshake, if any (its SHA-256 and subject).
#[derive(Debug, Clone, Default)]
pub struct ClientCertificate(pub Option<(Digest, String)>);

/// The rustls configuration of the workspace: its certificate, TLS 1.2 and 1.3 (what browsers
/// speak), ALPN `http/1.1`, and client certificates from the officers' CA if one is configured
/// (offered, not required: password and TOTP remain).
pub fn server_config(tls: &WebTls) -> Result<rustls::ServerConfig, String> {
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&tls.cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", tls.cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate", tls.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&tls.key)?).map_err(|e| format!("{}: {e}", tls.key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&read(ca)?) {
                roots.add(c.map_err(|e| format!("{}: {e}", ca.display()))?).map_err(|e| e.to_string())?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves `router` over TLS on `listener` until `closing` is cancelled: each connection's
/// address and client certificate go into its requests' extensions.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    config: rustls::ServerConfig,
    closing: tokio_util::sync::CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = closing.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "web: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (acceptor, router, closing) = (acceptor.clone(), router.clone(), closing.clone());
        connections.spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "web: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let presented = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|leaf| {
                let subject = x509_parser::parse_x509_certificate(leaf.as_ref())
                    .map(|(_, c)| c.subject().to_string())
                    .unwrap_or_default();
                (Digest::of(leaf.as_ref()), subject)
            });
            let app = router.layer(Extension(ConnectInfo(peer))).layer(Extension(ClientCertificate(presented)));
            let service = hyper_util::service::TowerToHyperService::new(app);
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = closing.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), connections.wait()).await;
}
