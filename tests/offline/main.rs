//! The tests that need no node process — the examples and schemas, the test vectors, sealing and
//! opening, the policies, the round trips — in one test binary: one link instead of six in the
//! suite's cold build.

#[path = "../common/mod.rs"]
mod common;

mod examples;
mod policy;
mod roundtrip;
mod schemas;
mod seal;
mod vectors;
