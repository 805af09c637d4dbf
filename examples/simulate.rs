//! Runs whole-federation simulations (see `liaison::sim`): one seed, or a range of seeds.
//!
//! ```text
//! cargo run --release --example simulate -- --seed 7 --nodes 3 --steps 2000
//! cargo run --release --example simulate -- --seeds 0..1000 --nodes 3 --steps 1000
//! ```
//!
//! A failing seed prints what did not hold and the command that replays it, and the run exits 1.

use std::process::ExitCode;

use clap::Parser;
use liaison::sim::{run, Options, Report};

#[derive(Parser)]
#[command(about = "Simulate a liaison federation under faults, deterministically, from a seed")]
struct Args {
    /// One seed to run.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// A range of seeds, `A..B` (B excluded).
    #[arg(long)]
    seeds: Option<String>,
    /// Nodes of the demo federation (2 or 3).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Steps with faults before the network heals.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seeds = match (args.seed, args.seeds.as_deref()) {
        (Some(s), _) => s..s + 1,
        (None, Some(range)) => {
            let Some((a, b)) = range.split_once("..").and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            else {
                eprintln!("--seeds takes A..B, e.g. 0..100");
                return ExitCode::from(64);
            };
            a..b
        }
        (None, None) => 0..1,
    };
    let mut total = Report::default();
    let n = seeds.end.saturating_sub(seeds.start);
    let started = std::time::Instant::now();
    let mut slowest = (0, std::time::Duration::ZERO);
    for (done, seed) in seeds.enumerate() {
        let options = Options { seed, nodes: args.nodes, steps: args.steps };
        let t = std::time::Instant::now();
        let result = run(&options);
        if t.elapsed() > slowest.1 {
            slowest = (seed, t.elapsed());
        }
        if (done + 1) % 100 == 0 {
            eprintln!("{} seeds, {:.0?}; slowest: seed {} ({:.1?})", done + 1, started.elapsed(), slowest.0, slowest.1);
        }
        match result {
            Ok(r) => total += &r,
            Err(f) => {
                eprintln!("FAILED {f}");
                return ExitCode::from(1);
            }
        }
    }
    println!("{n} seed(s), {} nodes, {} steps each: every invariant held", args.nodes, args.steps);
    println!("{total:#?}");
    ExitCode::SUCCESS
}
