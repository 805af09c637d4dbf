//! QUIC with mutual TLS on loopback: only a certificate from the federation CA, unexpired, not
//! revoked, and naming an enrolled partner gets a connection; every other peer is refused.

use std::net::SocketAddr;
use std::time::Duration;

use liaison::ids::NodeId;
use liaison::pki::{Ca, NodeCert};
use liaison::transport::{self, identify_peer, TlsMaterial, TransportError};
use time::OffsetDateTime;

fn node(s: &str) -> NodeId {
    s.parse().unwrap()
}

fn days(n: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::days(n)
}

struct Pki {
    ca: Ca,
    it: NodeCert,
    crl: String,
}

fn material(ca: &Ca, crls: &[&str], cert: &NodeCert) -> TlsMaterial {
    TlsMaterial::from_pem(ca.cert_pem(), crls, &cert.cert_pem, &cert.key_pem).unwrap()
}

/// A server for IT-DCSA enrolled with ES-UDYCO and CO-DIJIN; returns what happened to one
/// incoming connection: the identified peer, or why it was refused.
async fn serve_once(pki: &Pki) -> (SocketAddr, tokio::task::JoinHandle<Result<NodeId, String>>) {
    serve_with(material(&pki.ca, &[&pki.crl], &pki.it)).await
}

/// The server's side of one connection: the partner identified, or why it was refused (what the
/// node logs: the verifier's reason, not what the client was told).
async fn serve_with(m: TlsMaterial) -> (SocketAddr, tokio::task::JoinHandle<Result<NodeId, String>>) {
    serve_with_options(m, Default::default()).await
}

async fn serve_with_options(
    m: TlsMaterial,
    options: transport::Options,
) -> (SocketAddr, tokio::task::JoinHandle<Result<NodeId, String>>) {
    let enrolled = [node("ES-UDYCO"), node("CO-DIJIN")];
    let reasons = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = reasons.clone();
    let on_refusal: transport::OnRefusal = std::sync::Arc::new(move |r: &str| sink.lock().unwrap().push(r.to_owned()));
    let config = transport::server_config(&m, &enrolled, on_refusal, options).unwrap();
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let incoming = endpoint.accept().await.ok_or("endpoint closed")?;
        let conn = match incoming.await {
            Ok(c) => c,
            Err(e) => {
                let why = reasons.lock().unwrap().pop();
                return Err(why.unwrap_or_else(|| format!("handshake: {e}")));
            }
        };
        match identify_peer(&conn, &enrolled) {
            Ok(peer) => Ok(peer),
            Err(e) => {
                conn.close(quinn::VarInt::from_u32(1), e.to_string().as_bytes());
                Err(e.to_string())
            }
        }
    });
    (addr, task)
}

async fn dial(client: quinn::ClientConfig, addr: SocketAddr, name: &str) -> Result<quinn::Connection, String> {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(client);
    let connecting = ep.connect(addr, name).map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

fn pki() -> Pki {
    let ca = Ca::generate("liaison demo federation CA", days(-1), days(365)).unwrap();
    let it = ca.issue(&node("IT-DCSA"), days(-1), days(90)).unwrap();
    let revoked_dummy = ca.issue(&node("ES-UDYCO"), days(-1), days(90)).unwrap();
    let crl = ca.crl(std::slice::from_ref(&revoked_dummy.serial), days(-1), days(7), 1).unwrap();
    Pki { ca, it, crl }
}

async fn attempt(
    pki: &Pki,
    client_cert: Option<&NodeCert>,
    dial_as: &str,
) -> (Result<quinn::Connection, String>, Result<NodeId, String>) {
    let (addr, server) = serve_once(pki).await;
    let client = match client_cert {
        Some(cert) => {
            // The client trusts the federation CA for the server, whatever CA issued its own cert.
            let m = TlsMaterial::from_pem(pki.ca.cert_pem(), &[&pki.crl], &cert.cert_pem, &cert.key_pem).unwrap();
            transport::client_config(&m, Default::default()).unwrap()
        }
        None => transport::client_config_without_certificate(&material(&pki.ca, &[], &pki.it)).unwrap(),
    };
    let client_result = dial(client, addr, dial_as).await;
    let server_result = match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(r) => r.unwrap(),
        Err(_) => Err("server timed out".into()),
    };
    (client_result, server_result)
}

#[tokio::test]
async fn an_enrolled_partner_with_a_valid_certificate_connects() {
    let pki = pki();
    let es = pki.ca.issue(&node("ES-UDYCO"), days(-1), days(90)).unwrap();
    let (client, server) = attempt(&pki, Some(&es), &transport::server_name(&node("IT-DCSA"))).await;
    assert!(client.is_ok(), "{client:?}");
    assert_eq!(server.unwrap(), node("ES-UDYCO"));
    let conn = client.unwrap();
    assert_eq!(
        conn.handshake_data().unwrap().downcast::<quinn::crypto::rustls::HandshakeData>().unwrap().protocol.unwrap(),
        transport::ALPN
    );
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let pki = pki();
    let rogue = Ca::generate("rogue CA", days(-1), days(365)).unwrap();
    let es = rogue.issue(&node("ES-UDYCO"), days(-1), days(90)).unwrap();
    let (_, server) = attempt(&pki, Some(&es), &transport::server_name(&node("IT-DCSA"))).await;
    let err = server.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn a_certificate_for_a_node_that_is_not_enrolled_is_refused() {
    let pki = pki();
    let bka = pki.ca.issue(&node("DE-BKA"), days(-1), days(90)).unwrap();
    let (_, server) = attempt(&pki, Some(&bka), &transport::server_name(&node("IT-DCSA"))).await;
    // The refusing node's log names the reason and the certificate: subject, serial, issuer.
    let why = server.unwrap_err();
    assert!(why.starts_with("peer certificate names no enrolled partner: certificate of DE-BKA"), "{why}");
    assert!(why.contains(&format!("serial {}", liaison::encoding::hex(bka.serial.as_ref()))), "{why}");
}

#[tokio::test]
async fn a_certificate_naming_two_partners_is_refused() {
    let pki = pki();
    let names = [transport::server_name(&node("ES-UDYCO")), transport::server_name(&node("CO-DIJIN"))];
    let both = pki.ca.issue_for_names("ES-UDYCO", &names, days(-1), days(90)).unwrap();
    let (_, server) = attempt(&pki, Some(&both), &transport::server_name(&node("IT-DCSA"))).await;
    assert!(server.unwrap_err().contains("names several nodes"));
}

#[tokio::test]
async fn no_client_certificate_is_refused() {
    let pki = pki();
    let (_, server) = attempt(&pki, None, &transport::server_name(&node("IT-DCSA"))).await;
    let err = server.unwrap_err();
    assert!(err.contains("peer sent no certificates"), "{err}");
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let pki = pki();
    let old = pki.ca.issue(&node("ES-UDYCO"), days(-100), days(-10)).unwrap();
    let (_, server) = attempt(&pki, Some(&old), &transport::server_name(&node("IT-DCSA"))).await;
    let err = server.unwrap_err();
    assert!(err.contains("certificate expired"), "{err}");
}

#[tokio::test]
async fn a_revoked_certificate_is_refused() {
    let ca = Ca::generate("liaison demo federation CA", days(-1), days(365)).unwrap();
    let it = ca.issue(&node("IT-DCSA"), days(-1), days(90)).unwrap();
    let es = ca.issue(&node("ES-UDYCO"), days(-1), days(90)).unwrap();
    let crl = ca.crl(std::slice::from_ref(&es.serial), days(-1), days(7), 2).unwrap();
    let pki = Pki { ca, it, crl };
    let (_, server) = attempt(&pki, Some(&es), &transport::server_name(&node("IT-DCSA"))).await;
    let err = server.unwrap_err();
    assert!(err.contains("Revoked"), "{err}");
}

#[tokio::test]
async fn the_client_refuses_a_server_that_is_not_the_node_it_dialled() {
    let pki = pki();
    let es = pki.ca.issue(&node("ES-UDYCO"), days(-1), days(90)).unwrap();
    // IT-DCSA answers, but the client meant to reach CO-DIJIN.
    let (client, _) = attempt(&pki, Some(&es), &transport::server_name(&node("CO-DIJIN"))).await;
    let err = client.unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

/// A refused client is told one thing, whatever the reason: not that its certificate passed
/// the CA check, not the server's clock, not that it is revoked or unknown. The reason is the
/// server's (logged there).
#[tokio::test]
async fn a_refused_client_learns_nothing_but_the_refusal() {
    let pki = pki();
    let rogue = Ca::generate("rogue CA", days(-1), days(365)).unwrap();
    let cases = [
        ("another CA", rogue.issue(&node("ES-UDYCO"), days(-1), days(90)).unwrap(), "UnknownIssuer"),
        ("not enrolled", pki.ca.issue(&node("DE-BKA"), days(-1), days(90)).unwrap(), "no enrolled partner"),
        ("expired", pki.ca.issue(&node("ES-UDYCO"), days(-100), days(-10)).unwrap(), "expired"),
    ];
    let mut told = std::collections::BTreeSet::new();
    for (what, cert, reason) in cases {
        let (client, server) = attempt(&pki, Some(&cert), &transport::server_name(&node("IT-DCSA"))).await;
        assert!(server.unwrap_err().contains(reason), "{what}: the server knows why");
        let seen = match client {
            Err(e) => e,
            Ok(conn) => tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.unwrap().to_string(),
        };
        for secret in ["UnknownIssuer", "enrolled", "xpired", "verification time", "not valid", "DE-BKA", "Revoked"] {
            assert!(!seen.contains(secret), "{what}: the client was told {seen:?}");
        }
        told.insert(seen.replace(char::is_numeric, ""));
    }
    assert_eq!(told.len(), 1, "one answer for every refusal: {told:?}");
}

/// The committed demo material (certs-example/tls) works, and its bad/ cases are refused.
#[tokio::test]
async fn the_demo_material_in_certs_example() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs-example/tls");
    let private = tempfile::tempdir().unwrap();
    let load = |cert: &str, key: &str| {
        // git does not keep the 0600 mode of the keys, and TlsMaterial refuses any other.
        let copy = private.path().join(key.replace('/', "_"));
        std::fs::copy(dir.join(key), &copy).unwrap();
        std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        TlsMaterial::load(&dir.join("ca.crt"), &[&dir.join("crl.pem")], &dir.join(cert), &copy).unwrap()
    };
    let it_name = transport::server_name(&node("IT-DCSA"));
    let cases = [
        ("ES-UDYCO.crt", "ES-UDYCO.key", Ok(node("ES-UDYCO"))),
        ("CO-DIJIN.crt", "CO-DIJIN.key", Ok(node("CO-DIJIN"))),
        ("bad/revoked.crt", "bad/revoked.key", Err("Revoked")),
        ("bad/expired.crt", "bad/expired.key", Err("certificate expired")),
        ("bad/foreign.crt", "bad/foreign.key", Err("not issued by the federation CA")),
        ("bad/not-enrolled.crt", "bad/not-enrolled.key", Err("names no enrolled partner")),
    ];
    for (cert, key, want) in cases {
        let (addr, server) = serve_with(load("IT-DCSA.crt", "IT-DCSA.key")).await;
        let _client =
            dial(transport::client_config(&load(cert, key), Default::default()).unwrap(), addr, &it_name).await;
        let got = tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap();
        match (want, got) {
            (Ok(w), Ok(g)) => assert_eq!(w, g, "{cert}"),
            (Err(w), Err(g)) => assert!(g.contains(w), "{cert}: {g}"),
            (w, g) => panic!("{cert}: wanted {w:?}, got {g:?}"),
        }
    }
}

/// The TLS private key is held to the same rule as the node's own keys: 0600 or refused.
#[test]
fn a_tls_key_readable_by_others_is_refused() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs-example/tls");
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("IT-DCSA.key");
    std::fs::copy(dir.join("IT-DCSA.key"), &key).unwrap();
    for (mode, ok) in [(0o644, false), (0o640, false), (0o604, false), (0o600, true), (0o400, true)] {
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        let r = TlsMaterial::load(&dir.join("ca.crt"), &[&dir.join("crl.pem")], &dir.join("IT-DCSA.crt"), &key);
        match r {
            Ok(_) => assert!(ok, "{mode:o} accepted"),
            Err(e) => {
                assert!(!ok, "{mode:o} refused: {e}");
                assert!(matches!(e, TransportError::Permissions { .. }), "{e}");
                assert!(e.to_string().contains("chmod 600"), "{e}");
            }
        }
    }
}

#[test]
fn unreadable_material_is_a_clear_error() {
    let err = TlsMaterial::from_pem("not a pem", &[], "", "").unwrap_err();
    assert!(matches!(err, TransportError::Pem { .. }), "{err}");
    assert!(err.to_string().contains("CA certificate"), "{err}");
}

/// Both sides of one TLS 1.3 handshake in memory, with the handshake providers of `server` and
/// `client`: the group they agreed on.
fn negotiated(server: transport::KeyExchange, client: transport::KeyExchange) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject as _;
    let pki = pki();
    let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(pki.it.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(pki.it.key_pem.as_bytes()).unwrap();
    let server_config = rustls::ServerConfig::builder_with_provider(transport::provider_for(server))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(pki.ca.cert_pem().as_bytes()).unwrap()).unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(transport::provider_for(client))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(transport::server_name(&node("IT-DCSA"))).unwrap();
    let mut c = rustls::ClientConnection::new(std::sync::Arc::new(client_config), name).unwrap();
    let mut s = rustls::ServerConnection::new(std::sync::Arc::new(server_config)).unwrap();
    for _ in 0..10 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        s.read_tls(&mut buf.as_slice()).unwrap();
        s.process_new_packets().map_err(|e| format!("server: {e}"))?;
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        c.read_tls(&mut buf.as_slice()).unwrap();
        c.process_new_packets().map_err(|e| format!("client: {e}"))?;
        if !c.is_handshaking() && !s.is_handshaking() {
            let group = c.negotiated_key_exchange_group().unwrap().name();
            assert_eq!(Some(group), s.negotiated_key_exchange_group().map(|g| g.name()));
            return Ok(format!("{group:?}"));
        }
    }
    Err("no handshake after 10 rounds".into())
}

#[test]
fn two_nodes_agree_on_the_post_quantum_hybrid() {
    use transport::KeyExchange::{Classic, PostQuantum, PreferPostQuantum};
    assert_eq!(negotiated(PostQuantum, PostQuantum).unwrap(), "X25519MLKEM768");
    // A node that still accepts X25519 gets the hybrid all the same from a node that offers it.
    assert_eq!(negotiated(PreferPostQuantum, PostQuantum).unwrap(), "X25519MLKEM768");
    assert_eq!(negotiated(PostQuantum, PreferPostQuantum).unwrap(), "X25519MLKEM768");
    // An old peer that offers only X25519: refused by default, accepted where allowed.
    let refused = negotiated(PostQuantum, Classic).unwrap_err();
    assert!(refused.contains("server") && refused.to_lowercase().contains("group"), "{refused}");
    assert_eq!(negotiated(PreferPostQuantum, Classic).unwrap(), "X25519");
}

#[tokio::test]
async fn over_quic_a_node_that_cannot_do_the_hybrid_is_refused_by_default() {
    use transport::{KeyExchange, Options};
    let pki = pki();
    let es = pki.ca.issue(&node("ES-UDYCO"), days(-1), days(90)).unwrap();
    let m = || TlsMaterial::from_pem(pki.ca.cert_pem(), &[&pki.crl], &es.cert_pem, &es.key_pem).unwrap();
    let it_name = transport::server_name(&node("IT-DCSA"));
    for (server, client, connects) in [
        (KeyExchange::PostQuantum, KeyExchange::PostQuantum, true),
        (KeyExchange::PostQuantum, KeyExchange::Classic, false),
        (KeyExchange::PreferPostQuantum, KeyExchange::Classic, true),
    ] {
        let (addr, served) = serve_with_options(
            material(&pki.ca, &[&pki.crl], &pki.it),
            Options { key_exchange: server, ..Default::default() },
        )
        .await;
        let options = Options { key_exchange: client, ..Default::default() };
        let dialled = dial(transport::client_config(&m(), options).unwrap(), addr, &it_name).await;
        let served = tokio::time::timeout(Duration::from_secs(10), served).await.unwrap().unwrap();
        assert_eq!(dialled.is_ok(), connects, "{server:?} <- {client:?}: {dialled:?}");
        assert_eq!(served.is_ok(), connects, "{server:?} <- {client:?}: {served:?}");
        if connects {
            assert_eq!(served.unwrap(), node("ES-UDYCO"));
        }
    }
}
