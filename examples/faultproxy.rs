//! The UDP fault proxy by hand, between two nodes (or anything on UDP):
//!
//! `cargo run --release --example faultproxy -- --listen 127.0.0.1:9000 --upstream 127.0.0.1:7400
//! --loss 0.05 --delay-ms 100 [--jitter-ms 10] [--duplicate 0.01] [--seed 1] [--seconds 60]`
//!
//! Point the dialling node's partner address at `--listen`. Prints what it did every 5 s, and
//! stops after `--seconds` (default: 10 minutes).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use liaison::faultproxy::{FaultProxy, Faults};

#[derive(Parser)]
struct Args {
    /// Where the client sends.
    #[arg(long)]
    listen: SocketAddr,
    /// The node behind the proxy.
    #[arg(long)]
    upstream: SocketAddr,
    /// Share of datagrams dropped, each way.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// One-way delay (ms).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Extra random delay up to this (ms): reorders.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Share of datagrams sent twice.
    #[arg(long, default_value_t = 0.0)]
    duplicate: f64,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let faults = Faults {
        loss: a.loss,
        delay: Duration::from_millis(a.delay_ms),
        jitter: Duration::from_millis(a.jitter_ms),
        duplicate: a.duplicate,
    };
    let proxy = match FaultProxy::start(a.listen, a.upstream, faults, a.seed) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(64);
        }
    };
    eprintln!("{} -> {} with {faults:?}", proxy.addr(), a.upstream);
    let end = Instant::now() + Duration::from_secs(a.seconds);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_secs(5).min(end.saturating_duration_since(Instant::now())));
        eprintln!("{:?}", proxy.counts());
    }
    ExitCode::SUCCESS
}
