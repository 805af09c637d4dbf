//! Seal and open of a 1 KiB packet, beside the raw cost of the primitives they are made of.
//!
//! `cargo bench --bench packet` (add `-- --quick` for a short run). Prints the median time per
//! operation over 31 batches, each batch ~1/60 s, after a warm-up; and the ratios that matter:
//! how much of seal/open is the cryptography itself, and how many packets/s one core could seal
//! and open. No assertion: figures depend on the machine and its load.

use std::hint::black_box;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use liaison::keys::{Keyring, NodeKeys};
use liaison::packet::{Body, Packet};
use liaison::seal::aead;
use liaison::seal::SealContext;
use liaison::timestamp::Timestamp;
use rand_core::{OsRng, RngCore};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let batch_time = if quick { Duration::from_millis(5) } else { Duration::from_millis(16) };
    let mut results = Vec::new();
    let mut bench = |name: &str, f: &mut dyn FnMut()| {
        let ns = measure(batch_time, f);
        println!("{name:<44} {:>10.2} µs", ns / 1000.0);
        results.push((name.to_owned(), ns));
        ns
    };

    // The packet: the information-request example, padded to a 1 KiB CBOR payload.
    let text = include_str!("../schemas/examples/information-request.json");
    let mut packet = Packet::from_json(text).unwrap();
    let pad = 1024usize.saturating_sub(packet.to_cbor().len());
    if let Body::InformationRequest(r) = &mut packet.body {
        r.reasons.push_str(&"x".repeat(pad));
    }
    let payload = packet.to_cbor();
    println!("packet: {} bytes CBOR, {} bytes JSON", payload.len(), packet.to_json().len());

    let it = NodeKeys::generate("IT-DCSA".parse().unwrap(), &mut OsRng);
    let es = NodeKeys::generate("ES-UDYCO".parse().unwrap(), &mut OsRng);
    let mut ring = Keyring::new();
    ring.add(it.public().clone()).unwrap();
    ring.add(es.public().clone()).unwrap();
    let sender = SealContext::new(it, ring.clone()).unwrap();
    let receiver = SealContext::new(es, ring).unwrap();
    let sealed = sender.seal(&packet, &mut OsRng).unwrap().remove(0).bytes;
    println!("sealed: {} bytes (overhead {} bytes)\n", sealed.len(), sealed.len() - payload.len());
    let now = Timestamp::from_unix(packet.envelope.created.unix() + 60).unwrap();

    println!("-- primitives (1 KiB message)");
    let sk = SigningKey::generate(&mut OsRng);
    let vk = sk.verifying_key();
    let sig = sk.sign(&payload);
    let sign = bench("Ed25519 sign", &mut || {
        black_box(sk.sign(black_box(&payload)));
    });
    let verify = bench("Ed25519 verify_strict", &mut || {
        vk.verify_strict(black_box(&payload), &sig).unwrap();
    });
    let key = [7u8; 32];
    let nonce = [1u8; 12];
    let ct = aead::seal(&key, &nonce, &payload, b"aad").unwrap();
    let seal_aead = bench("ChaCha20-Poly1305 encrypt", &mut || {
        black_box(aead::seal(&key, &nonce, black_box(&payload), b"aad").unwrap());
    });
    let open_aead = bench("ChaCha20-Poly1305 decrypt", &mut || {
        black_box(aead::open(&key, &nonce, black_box(&ct), b"aad").unwrap());
    });
    let xs = x25519_dalek::StaticSecret::random_from_rng(OsRng);
    let xp = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::random_from_rng(OsRng));
    let x25519 = bench("X25519 agreement (avoided per packet)", &mut || {
        black_box(xs.diffie_hellman(black_box(&xp)));
    });
    let mut salt = [0u8; 32];
    OsRng.fill_bytes(&mut salt);
    bench("HKDF-SHA-256 content key (per packet)", &mut || {
        let mut okm = [0u8; 32];
        hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt), &[9u8; 32]).expand(b"kdf context of ~20 bytes", &mut okm).unwrap();
        black_box(okm);
    });

    println!("\n-- packet core");
    bench("packet to CBOR", &mut || {
        black_box(packet.to_cbor());
    });
    bench("packet from CBOR (parse + check)", &mut || {
        black_box(Packet::from_cbor(black_box(&payload)).unwrap());
    });
    let json = packet.to_json();
    bench("packet from JSON (parse + check)", &mut || {
        black_box(Packet::from_json(black_box(&json)).unwrap());
    });
    let mut rng = OsRng; // what a node uses
    let seal = bench("seal (sign + encrypt, 1 recipient)", &mut || {
        black_box(sender.seal(black_box(&packet), &mut rng).unwrap());
    });
    let open = bench("open (decrypt + verify + parse + checks)", &mut || {
        black_box(receiver.open(black_box(&sealed), now).unwrap());
    });

    println!("\n-- ratios");
    println!("seal / (sign + AEAD encrypt)       {:>6.2}x", seal / (sign + seal_aead));
    println!("open / (verify + AEAD decrypt)     {:>6.2}x", open / (verify + open_aead));
    println!(
        "per-packet ECDH-ES would add        {:>6.2}x seal, {:.2}x open (2 and 1 X25519)",
        (seal + 2.0 * x25519) / seal,
        (open + x25519) / open
    );
    println!("one core: {:.0} seals/s, {:.0} opens/s", 1e9 / seal, 1e9 / open);
}

/// Median nanoseconds per call over 31 batches of about `batch` each.
fn measure(batch: Duration, f: &mut dyn FnMut()) -> f64 {
    // Warm up and size the batch.
    let mut n = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        if t.elapsed() >= batch / 4 {
            break;
        }
        n *= 2;
    }
    let per_batch = (n * 4).max(1);
    let mut samples: Vec<f64> = (0..31)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            t.elapsed().as_nanos() as f64 / per_batch as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}
