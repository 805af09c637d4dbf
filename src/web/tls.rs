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
    if tls.client_ca.is_some() {
        // No resumption: a resumed session would carry the card's certificate from an earlier
        // handshake, without the card (or its PIN) in the reader now.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(config)
}

/// Connections open at once, in all.
pub const CONNECTIONS: usize = 512;
/// Connections open at once from one address.
pub const CONNECTIONS_PER_ADDRESS: usize = 32;
/// Time a connection has to send a request's headers (also the longest a kept-alive connection
/// stays idle).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(15);

/// Serves `router` over TLS on `listener` until `closing` is cancelled: each connection's
/// address and client certificate go into its requests' extensions. Connections are capped (in
/// all and per address), have [`HEADER_TIMEOUT`] for each request's headers, and are closed at
/// shutdown (gracefully for 3 s, then aborted).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    config: rustls::ServerConfig,
    closing: tokio_util::sync::CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS));
    let per_address: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>> = Arc::default();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (tcp, peer) = tokio::select! {
            biased;
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "web: too many connections; this one is closed");
            continue;
        };
        {
            let mut m = per_address.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = m.entry(peer.ip()).or_insert(0);
            if *n >= CONNECTIONS_PER_ADDRESS {
                debug!(%peer, "web: too many connections from this address; this one is closed");
                continue;
            }
            *n += 1;
        }
        let left = AddressSlot(per_address.clone(), peer.ip());
        let (acceptor, router, closing) = (acceptor.clone(), router.clone(), closing.clone());
        connections.spawn(async move {
            let _slots = (slot, left);
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
            if closing.is_cancelled() {
                return;
            }
            let app = router.layer(Extension(ConnectInfo(peer))).layer(Extension(ClientCertificate(presented)));
            let service = hyper_util::service::TowerToHyperService::new(app);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            tokio::pin!(conn);
            tokio::select! {
                biased;
                () = closing.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(3), conn).await;
                }
                _ = conn.as_mut() => {}
            }
        });
    }
    // What has not closed 5 s after the stop began is aborted (within the node's 10 s).
    let all = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), all).await.is_err() {
        connections.abort_all();
    }
}

/// A connection's place in its address's count, given back when it closes.
struct AddressSlot(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>, std::net::IpAddr);

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut m = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.1) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}
