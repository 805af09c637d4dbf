//! liaison — a secure cross-border intelligence exchange broker.
//!
//! Police units in different countries each run one node; nodes sign, encrypt and route
//! structured intelligence packets to each other. This crate is the whole node: the typed
//! packets and their sealing (COSE sign-then-encrypt), the delivery core, the QUIC transport with
//! mutual TLS, the durable store with signed receipts, per-partner sharing policies, onward
//! transmission with consent, answer deadlines, the audit trail, the local API and the CLI. The
//! pure parts (`packet`, `delivery`, `policy`, `onward`, `deadlines`, `audit`) do no I/O; `node`
//! drives them.
//!
//! # Layout
//!
//! - [`ids`] — identifier newtypes: `NodeId` (`IT-DCSA`), `PacketId` (UUIDv7), `CaseRef`...
//! - [`timestamp`] — `Timestamp` (RFC 3339 in JSON, CBOR tag 1 on the wire) and `Date`.
//! - [`markings`] — priority, classification, TLP, handling codes, 4x4 grading, urgency reasons.
//! - [`packet`] — the envelope and the bodies, parsing of both faces, the validation rules,
//!   answer deadlines. No I/O, no keys.
//! - [`encoding`] — strict CBOR decoding (size, depth, no trailing bytes), byte strings, digests.
//! - [`faultproxy`] — a UDP fault proxy (loss, delay, jitter, duplicates, partitions): a test
//!   tool for the process tests and `examples/faultproxy.rs`.
//! - [`keys`] — node keys (Ed25519 + X25519), key files, the keyring of partners' public keys.
//! - [`seal`] — COSE_Sign1 + COSE_Encrypt: sign, encrypt per recipient, open with every check.
//! - [`delivery`] — every delivery decision without I/O: the sender machine per partner (outbox,
//!   link, lanes, receipts), the receiver machine (a batch in, verdicts, receipt and writes out),
//!   submit; state changes come out as writes and effects applied after the commit.
//! - [`onward`] — passing packets on: forwards carrying the original and the originator's
//!   signed consent, checked at every hop.
//! - [`node`] — the I/O shell: QUIC streams, store and clock driving the delivery machines
//!   (`outbound`, `peer`, `inbound`, `queries`, `admin`).
//! - [`federation`] — the demo federation's sharing agreements (for the demo and the simulator).
//! - [`sim`] — the whole-federation simulator: the production machines over a simulated
//!   network, disk and clock, with faults; invariants after every step; seeds replay.
//! - [`policy`] — per-partner sharing policies (files, rate limits) and `evaluate`, the one
//!   function that decides what goes to and comes from each partner.
//! - [`pki`] — the federation CA kept in a directory (issue, sign requests, revoke, CRLs, the
//!   records), node certificates (node id as DNS SAN), reading certificates back; demo material.
//! - [`selfcheck`] — the node's check of its own keys, certificate, CA and CRLs (`serve`, `config
//!   check`): every problem at once.
//! - [`store`] — durable node state in sled behind one owner thread with group commit.
//! - [`transport`] — QUIC + mutual TLS 1.3 configuration, peer identity from certificates.
//! - [`limits`] — what a partner (or anyone unauthenticated) can make the node hold or do:
//!   memory, stalls, connections, pace, log lines.
//! - [`wire`] — framing on the lane streams: length-prefixed sealed packets and receipts.
//! - [`deadlines`] — answer deadlines of requests: due, moved by delay notices, paused by
//!   clarification requests, answered; without I/O.
//! - [`config`] — node configuration (TOML + environment) validated into `Settings`.
//! - [`serve`] — `liaison serve`: node + local API until SIGINT/SIGTERM, ordered shutdown.
//! - [`audit`] — the hash-chained audit trail, signed checkpoints, verification and export.
//! - [`api`] — the local HTTP+JSON API with per-client bearer tokens.
//! - [`catalogue`] — the inbox listing officers page through and search, without I/O.
//! - [`accounts`] — officers' personal accounts: argon2id passwords, TOTP, roles, scopes, lockout.
//! - [`client`] — the CLI's minimal HTTP client for the local API.
//! - [`web`] — the officers' web workspace: sign-in, inbox, live alerts, packet view.
//! - [`cli`] — the `liaison` command line; `demo` — the offline demo federation on embedded
//!   demo keys (feature `demo`, on by default; production builds leave it out).
//!
//! See `ARCHITECTURE.md` for the design decisions and how the pieces fit.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod accounts;
pub mod api;
pub mod audit;
pub mod catalogue;
pub mod cli;
pub mod client;
pub mod config;
pub mod deadlines;
pub mod delivery;
#[cfg(feature = "demo")]
pub mod demo;
pub mod encoding;
pub mod enrolment;
pub mod faultproxy;
pub mod federation;
pub mod files;
pub mod ids;
pub mod keys;
pub mod limits;
pub mod markings;
pub mod metrics;
pub mod node;
pub mod onward;
pub mod packet;
pub mod pki;
pub mod policy;
pub mod seal;
pub mod selfcheck;
pub mod serve;
pub mod sim;
pub mod store;
pub mod timestamp;
pub mod transport;
pub mod web;
pub mod wire;
