//! `liaison serve`: one node, from validated settings, until SIGINT or SIGTERM.
//!
//! Order of shutdown: stop accepting API requests and connections, let in-flight work finish
//! (up to a grace period), close the QUIC endpoint, then close the store (every commit already
//! answered is on disk). Every step is bounded, so SIGTERM stops the node even when its disk
//! does not complete a write.
//!
//! **A store that cannot go on.** A full disk is a state the store handles itself (see
//! [`crate::store::space`]). But if the disk refuses a write behind the store's back (another
//! process took the last of the headroom) or fails (an I/O error), sled stops for good in this
//! process: its flush never returns, or every write fails. The node then stops in order, with
//! the reason in the log, and exits 75 for its service manager to start it again (systemd:
//! `Restart=on-failure`); a restart reopens the store, and nothing acknowledged is lost (see
//! `tests/store_crash.rs`). "For good" is [`STORE_GIVE_UP`] of writes stuck or failing.

use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Settings;
use crate::keys::{Keyring, NodeKeys};
use crate::node::{Node, NodeConfig, Partner, PartnerSet};
use crate::policy::PolicyBook;
use crate::seal::SealContext;
use crate::transport::TlsMaterial;

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Keys could not be loaded.
    #[error("keys: {0}")]
    Keys(#[from] crate::keys::KeyError),
    /// TLS material could not be loaded.
    #[error("tls: {0}")]
    Tls(#[from] crate::transport::TransportError),
    /// The node failed to start.
    #[error(transparent)]
    Node(#[from] crate::node::NodeError),
    /// The API address could not be bound.
    #[error("api: cannot listen on {addr}: {source}")]
    Api {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The web workspace's TLS material could not be read.
    #[error("web: TLS: {0}")]
    WebTls(String),
    /// The web workspace's address could not be bound.
    #[error("web: cannot listen on {addr}: {source}")]
    Web {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The store stopped completing writes while the node ran (see the module doc): the node
    /// stopped in order, to be started again.
    #[error("the store stopped: {0}; the node stopped so that its service manager starts it again")]
    StoreFailed(String),
    /// A partner has no public keys in the keyring.
    #[error("partner {0} has no public keys in the keyring")]
    PartnerWithoutKeys(crate::ids::NodeId),
    /// The node's own files do not hold ([`crate::selfcheck`]): every problem, one a line.
    #[error("the node's files are not usable ({} problem(s)):\n  - {}", .0.len(), .0.join("\n  - "))]
    SelfCheck(Vec<String>),
}

impl ServeError {
    /// Whether the administrator's files are at fault (a key file, the TLS material, a partner
    /// missing from the keyring, a data directory another node has open) rather than the
    /// machine (a port taken, the store failing): the
    /// binary exits 64 for these, as for any configuration error.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            Self::Keys(_)
                | Self::Tls(_)
                | Self::PartnerWithoutKeys(_)
                | Self::SelfCheck(_)
                | Self::Node(crate::node::NodeError::Store(crate::store::StoreError::InUse(_)))
        )
    }
}

/// Loads what the settings name and builds the node's configuration.
pub fn node_config(s: &Settings) -> Result<NodeConfig, ServeError> {
    let keys = NodeKeys::load_generations(&s.keys_dir, &s.node)?.into_iter().map(|(_, k)| k).collect();
    let keyring = Keyring::load(&s.keyring)?;
    for p in &s.partners {
        if keyring.node(&p.id).is_none() {
            return Err(ServeError::PartnerWithoutKeys(p.id));
        }
    }
    let crls: Vec<&std::path::Path> = s.tls_crls.iter().map(|p| p.as_path()).collect();
    let tls = TlsMaterial::load(&s.tls_ca, &crls, &s.tls_cert, &s.tls_key)?;
    let store = crate::store::Store::open(&s.data_dir).map_err(crate::node::NodeError::from)?;
    store.set_headroom(s.headroom);
    Ok(NodeConfig {
        seal: SealContext::with_generations(keys, keyring)?,
        tls,
        listen: s.listen,
        socket: None,
        store,
        partners: s.partners.iter().map(|p| Partner { node: p.id, addr: p.addr }).collect(),
        policies: PolicyBook::new(s.partners.iter().filter_map(|p| p.policy.clone())),
        retry: s.retry,
        limits: s.limits,
        transport: s.transport,
        partners_dir: Some(s.partners_dir.clone()),
    })
}

/// The partners, keyring and policies the settings name, and this node's own keys (every
/// generation: a rotation is taken on SIGHUP), for [`Node::set_partners`].
pub fn partner_set(s: &Settings) -> Result<PartnerSet, ServeError> {
    Ok(PartnerSet {
        partners: s.partners.iter().map(|p| Partner { node: p.id, addr: p.addr }).collect(),
        keyring: Keyring::load(&s.keyring)?,
        policies: PolicyBook::new(s.partners.iter().filter_map(|p| p.policy.clone())),
        own: Some(NodeKeys::load_generations(&s.keys_dir, &s.node)?.into_iter().map(|(_, k)| k).collect()),
    })
}

/// Runs the node and its API until `stop` resolves (the binary passes SIGINT/SIGTERM). With
/// `config_file`, SIGHUP reloads the sharing policies it names.
pub async fn run(
    settings: Settings,
    config_file: Option<std::path::PathBuf>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let findings = crate::selfcheck::check(&settings, crate::timestamp::Timestamp::now());
    for w in &findings.warnings {
        warn!(warning = %w, "self-check");
    }
    if !findings.ok() {
        return Err(ServeError::SelfCheck(findings.problems));
    }
    let config = node_config(&settings)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let node = Node::start(config, shutdown_rx).await?;
    if let Some(file) = config_file {
        tokio::spawn(reload_on_hangup(node.clone(), file, shutdown_tx.subscribe()));
    }
    let listener = tokio::net::TcpListener::bind(settings.api_listen)
        .await
        .map_err(|source| ServeError::Api { addr: settings.api_listen, source })?;
    let api_addr = listener.local_addr().unwrap_or(settings.api_listen);
    // Ends the workspace's live-alert streams at shutdown (a graceful shutdown waits for them).
    let web_closing = tokio_util::sync::CancellationToken::new();
    let web = match &settings.web {
        Some(w) => {
            let l = tokio::net::TcpListener::bind(w.listen)
                .await
                .map_err(|source| ServeError::Web { addr: w.listen, source })?;
            let addr = l.local_addr().unwrap_or(w.listen);
            let tls = match &w.tls {
                Some(t) => Some(crate::web::tls::server_config(t).map_err(ServeError::WebTls)?),
                None => None,
            };
            Some((l, addr, crate::web::router(node.clone(), w, web_closing.clone()), tls))
        }
        None => None,
    };
    // The line tests and the demo wait for; it names every address.
    let web_addr = web
        .as_ref()
        .map(|(_, a, _, tls)| format!("{}://{a}", if tls.is_some() { "https" } else { "http" }))
        .unwrap_or_else(|| "off".into());
    info!(node = %settings.node, quic = %node.local_addr(), api = %api_addr, web = %web_addr, "ready");
    let app = crate::api::router(node.clone(), settings.api_clients.clone());
    let mut api_stop = shutdown_tx.subscribe();
    let mut web_stop = shutdown_tx.subscribe();
    let web_tls_closing = web_closing.clone();
    let server = tokio::spawn(async move {
        let api = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = api_stop.changed().await;
        });
        match web {
            Some((l, _, router, Some(tls))) => {
                let web = crate::web::tls::serve(l, router, tls, web_tls_closing);
                let _ = tokio::join!(std::future::IntoFuture::into_future(api), web);
            }
            Some((l, _, router, None)) => {
                let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
                let web = axum::serve(l, service).with_graceful_shutdown(async move {
                    let _ = web_stop.changed().await;
                });
                let _ =
                    tokio::join!(std::future::IntoFuture::into_future(api), std::future::IntoFuture::into_future(web));
            }
            None => {
                let _ = api.await;
            }
        }
    });
    let failed = tokio::select! {
        () = stop => None,
        why = store_failure(&node) => Some(why),
    };
    match &failed {
        None => info!("shutting down: no new requests or connections"),
        Some(why) => {
            tracing::error!(reason = %why, "the store cannot go on in this process; stopping so that the service manager starts the node again")
        }
    }
    let _ = shutdown_tx.send(true);
    web_closing.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    node.shutdown().await;
    failed.map_or(Ok(()), |why| Err(ServeError::StoreFailed(why)))
}

/// How long the store's writes may be stuck, or all fail, before the node gives up on the store
/// in this process.
pub const STORE_GIVE_UP: Duration = Duration::from_secs(60);

/// Returns (with the reason) once the store's writes have been stuck or failing for
/// [`STORE_GIVE_UP`].
async fn store_failure(node: &Node) -> String {
    let limit = STORE_GIVE_UP.as_millis() as u64;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let h = node.store_health();
        if let Some(ms) = h.stuck_ms.filter(|ms| *ms >= limit) {
            return format!("the disk has not completed a write for {} s", ms / 1000);
        }
        if let Some(ms) = h.failing_ms.filter(|ms| *ms >= limit) {
            return format!("every write has failed for {} s", ms / 1000);
        }
    }
}

/// On SIGHUP: reads the configuration again and puts in force, if the files changed, its TLS
/// material (a new CRL after a revocation, a renewed certificate), then its partners (enrolled,
/// removed, moved: in the file's `[[partners]]` or the partners directory), the keyring and the
/// sharing policies, saying what changed. A configuration, policy, key or TLS file with any
/// problem is refused as a whole (every problem logged) and what is in force stays. This node's
/// own keys, addresses and ports need a restart.
async fn reload_on_hangup(node: Node, file: std::path::PathBuf, mut shutdown: watch::Receiver<bool>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
        let mut tls_files = Settings::load(&file).ok().and_then(|s| tls_fingerprint(&s));
        loop {
            tokio::select! {
                _ = hup.recv() => {}
                _ = shutdown.changed() => return,
            }
            // The files are read under the admin lock: an enrolment through the API in between
            // cannot be undone by what was read before it.
            let held = node.admin_lock().await;
            if let Err(why) = reload(&node, &held, &file, &mut tls_files).await {
                tracing::error!(error = %why, "reload refused; the TLS material, partners, keys and policies in force stay");
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (node, file, shutdown.changed().await);
    }
}

/// One SIGHUP's reload (see [`reload_on_hangup`]): everything is read and checked before
/// anything is put in force, so a file with a problem leaves everything as it was.
async fn reload(
    node: &Node,
    held: &crate::node::AdminLock<'_>,
    file: &std::path::Path,
    tls_files: &mut Option<crate::encoding::Digest>,
) -> Result<(), String> {
    let s = Settings::load(file).map_err(|e| e.to_string())?;
    if Some(s.partners_dir.as_path()) != node.partners_dir() {
        return Err(format!(
            "node.partners_dir changed to {}: that needs a restart (partners enrolled through the API are in the directory of the start)",
            s.partners_dir.display()
        ));
    }
    let now = tls_fingerprint(&s);
    let tls = if now.is_some() && now != *tls_files {
        // New TLS files are held to the start's rules: a certificate for another node,
        // expired or revoked, a key of another certificate, a foreign CRL are refused.
        let findings = crate::selfcheck::check_tls(&s, crate::timestamp::Timestamp::now());
        for w in &findings.warnings {
            warn!(warning = %w, "self-check");
        }
        if !findings.ok() {
            return Err(findings.problems.join("; "));
        }
        let crls: Vec<&std::path::Path> = s.tls_crls.iter().map(|p| p.as_path()).collect();
        Some(TlsMaterial::load(&s.tls_ca, &crls, &s.tls_cert, &s.tls_key).map_err(|e| e.to_string())?)
    } else {
        None
    };
    let target = partner_set(&s).map_err(|e| e.to_string())?;
    node.check_partners(&target).map_err(|e| e.to_string())?;
    if let Some(tls) = tls {
        let detail = format!("CA, certificate and {} CRL file(s) read again", s.tls_crls.len());
        node.reload_tls_locked(held, tls, "SIGHUP", detail).await.map_err(|e| format!("TLS reload failed: {e}"))?;
        *tls_files = now;
    }
    match node.set_partners_locked(held, target, "SIGHUP").await {
        Ok(changes) if changes.is_empty() => info!("reload: partners, keys and policies did not change"),
        Ok(changes) => info!(changes = %changes.join("; "), "reload: in force"),
        Err(e) => return Err(e.to_string()),
    }
    Ok(())
}

/// A digest of the TLS files the settings name (to reload them only when they changed); `None`
/// if one cannot be read.
fn tls_fingerprint(s: &Settings) -> Option<crate::encoding::Digest> {
    let mut all = zeroize::Zeroizing::new(Vec::new()); // holds the TLS key for a moment
    for p in [&s.tls_ca, &s.tls_cert, &s.tls_key].into_iter().chain(s.tls_crls.iter()) {
        all.extend(std::fs::read(p).ok()?);
        all.push(0);
    }
    Some(crate::encoding::Digest::of(&all))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signals() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
