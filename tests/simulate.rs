//! Whole federations under faults, deterministically (`liaison::sim`): the production sender
//! and receiver machines, submit path, deadlines and store (in memory, with failing writes and
//! flushes and crashes) over a network that loses, duplicates, delays, reorders and partitions.
//! Every invariant is checked after every step; a failure names the seed and the command that
//! replays it. More seeds: `cargo run --release --example simulate -- --seeds 0..10000`.

use liaison::sim::{run, Options, Report};

fn many(nodes: usize, seeds: std::ops::Range<u64>, steps: usize) -> Report {
    let mut total = Report::default();
    for seed in seeds {
        match run(&Options { seed, nodes, steps }) {
            Ok(r) => total += &r,
            Err(f) => panic!("{f}"),
        }
    }
    total
}

#[test]
fn three_nodes_two_hundred_seeds() {
    let t = many(3, 0..200, 300);
    eprintln!("{t:#?}");
    // The runs really exercise every fault and every outcome.
    assert!(t.crashes > 20 && t.disk_faults > 50 && t.partitions > 50, "{t:#?}");
    assert!(t.lost > 500 && t.duplicated > 200, "{t:#?}");
    assert!(t.delivered > 2_000 && t.expired > 5 && t.refused_submits > 100, "{t:#?}");
    assert!(t.acks > 200 && t.answers > 100, "{t:#?}");
    assert!(t.forwards > 10 && t.refused_forwards > 50 && t.consents > 100, "{t:#?}");
}

#[test]
fn two_nodes_fifty_seeds() {
    let t = many(2, 0..50, 300);
    assert!(t.delivered > 300, "{t:#?}");
}

#[test]
fn a_bad_option_is_a_clear_error() {
    let f = run(&Options { seed: 1, nodes: 5, steps: 10 }).unwrap_err();
    assert!(f.what.contains("--nodes must be 2 or 3"), "{f}");
}
