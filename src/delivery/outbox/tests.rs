//! The outbox module's tests.

use super::*;

fn node(s: &str) -> NodeId {
    s.parse().unwrap()
}

fn pid(n: u8) -> PacketId {
    format!("019ac0a1-5c00-7000-8000-0000000000{n:02x}").parse().unwrap()
}

fn outbox() -> Outbox {
    Outbox::new(RetryPolicy { initial_backoff: 100, max_backoff: 1_000, receipt_timeout: 500 }, 1)
}

#[test]
fn flash_goes_before_older_routine() {
    let mut o = outbox();
    let es = node("ES-UDYCO");
    for i in 0..5 {
        o.submit(i, pid(i as u8), es, Priority::Routine, 1_000_000, Digest::of(&[i as u8]));
    }
    o.submit(10, pid(9), es, Priority::Flash, 1_000_000, Digest::of(b"f"));
    let first = o.poll_transmit(10, &es).unwrap();
    assert_eq!((first.packet_id, first.priority), (pid(9), Priority::Flash));
    assert_eq!(o.poll_transmit(10, &es).unwrap().packet_id, pid(0), "then routine, oldest first");
}

#[test]
fn retries_back_off_exponentially_with_jitter_and_cap() {
    let p = RetryPolicy { initial_backoff: 100, max_backoff: 1_000, receipt_timeout: 500 };
    for attempts in 1..12 {
        for j in [0, 7, u64::MAX] {
            let d = p.backoff(attempts, j);
            let base = (100u64 << (attempts - 1)).min(1_000);
            assert!(d >= base / 2 && d <= base, "attempt {attempts}: {d} not in [{}, {base}]", base / 2);
        }
    }
}

#[test]
fn receipt_timeout_requeues_and_receipt_completes() {
    let mut o = outbox();
    let es = node("ES-UDYCO");
    let d = Digest::of(b"x");
    o.submit(0, pid(1), es, Priority::Urgent, 100_000, d);
    assert_eq!(o.poll_transmit(0, &es).unwrap().attempt, 1);
    assert!(o.poll_transmit(0, &es).is_none(), "in flight, not sent twice");
    o.handle_timeout(499);
    assert_eq!(o.entry(pid(1), &es).unwrap().state.name(), "in_flight");
    o.handle_timeout(500);
    assert_eq!(o.entry(pid(1), &es).unwrap().state.name(), "queued");
    assert!(o.poll_transmit(500, &es).is_none(), "backoff holds it");
    let t = o.poll_timeout().unwrap();
    assert!((550..=600).contains(&t), "{t}");
    assert_eq!(o.poll_transmit(t, &es).unwrap().attempt, 2);
    assert_eq!(
        o.handle_receipt(t, pid(1), &es, Digest::of(b"other"), ReceiptOutcome::Accepted { received_at: t }),
        ReceiptMatch::DigestMismatch
    );
    assert_eq!(
        o.handle_receipt(t, pid(1), &es, d, ReceiptOutcome::Accepted { received_at: t }),
        ReceiptMatch::Completed
    );
    assert_eq!(
        o.handle_receipt(t, pid(1), &es, d, ReceiptOutcome::Accepted { received_at: t }),
        ReceiptMatch::Duplicate
    );
    assert_eq!(o.handle_receipt(t, pid(2), &es, d, ReceiptOutcome::Accepted { received_at: t }), ReceiptMatch::Unknown);
    assert_eq!(o.pending(), 0);
    assert!(o.poll_timeout().is_none());
}

#[test]
fn expiry_ends_delivery_attempts() {
    let mut o = outbox();
    let es = node("ES-UDYCO");
    o.submit(0, pid(1), es, Priority::Routine, 2_000, Digest::of(b"x"));
    o.poll_transmit(0, &es).unwrap();
    o.handle_send_failed(10, pid(1), &es);
    o.handle_timeout(2_000);
    assert_eq!(o.entry(pid(1), &es).unwrap().state, EntryState::Expired { at: 2_000 });
    assert!(o.poll_transmit(5_000, &es).is_none());
    let late = o.handle_receipt(5_000, pid(1), &es, Digest::of(b"x"), ReceiptOutcome::Accepted { received_at: 1_999 });
    assert_eq!(late, ReceiptMatch::AfterExpiry);
}

/// What was in flight is queued again; a terminal entry is not brought back into memory
/// (it is on disk); one that has not left memory is written, then leaves.
#[test]
fn restart_requeues_in_flight_and_leaves_terminal_entries_on_disk() {
    let mut o = outbox();
    let (es, co) = (node("ES-UDYCO"), node("CO-DIJIN"));
    let d = Digest::of(b"x");
    o.submit(0, pid(1), es, Priority::Flash, 100_000, d);
    o.submit(0, pid(1), co, Priority::Flash, 100_000, d);
    o.poll_transmit(0, &es).unwrap();
    o.poll_transmit(0, &co).unwrap();
    o.handle_receipt(1, pid(1), &co, d, ReceiptOutcome::Rejected { code: "policy".into(), reason: "H2".into() });
    let saved: Vec<Entry> = o.entries().cloned().collect();
    assert_eq!(saved.len(), 2, "the rejected copy waits to be written");
    let written: Vec<Key> = o.take_dirty().iter().map(key).collect();
    o.committed(written);
    assert!(o.entry(pid(1), &co).is_none(), "written: gone from memory");
    assert_eq!(o.finished(), Finished { rejected: 1, ..Finished::default() });
    let mut r = Outbox::restore(RetryPolicy::default(), 2, saved, 50);
    assert!(r.entry(pid(1), &co).is_none());
    assert_eq!(r.poll_transmit(50, &es).unwrap().attempt, 2);
    assert!(!r.submit(60, pid(1), es, Priority::Flash, 100_000, d), "no duplicate entry");
    assert_eq!(r.pending(), 1);
}

/// An entry leaves memory only once a commit that wrote it terminal is on disk: a commit
/// that wrote it queued, answered after it expired, does not let it go, nor does a failed
/// commit of the expiry.
#[test]
fn an_entry_leaves_memory_only_once_its_terminal_state_is_on_disk() {
    let mut o = outbox();
    let es = node("ES-UDYCO");
    o.submit(0, pid(1), es, Priority::Routine, 1_000, Digest::of(b"x"));
    let queued = o.take_dirty();
    assert!(terminal_keys(&queued).is_empty());
    o.handle_timeout(1_000);
    let expired = o.take_dirty();
    assert_eq!(terminal_keys(&expired), vec![(pid(1), es)]);
    o.committed(terminal_keys(&queued));
    assert!(o.entry(pid(1), &es).is_some(), "the queued snapshot's commit puts no expiry on disk");
    o.mark_dirty(expired.iter().map(key));
    assert!(o.entry(pid(1), &es).is_some(), "the expiry's commit failed");
    let again = o.take_dirty();
    assert_eq!(again[0].state, EntryState::Expired { at: 1_000 });
    o.committed(terminal_keys(&again));
    assert!(o.entry(pid(1), &es).is_none());
    assert_eq!(o.finished(), Finished { expired: 1, ..Finished::default() });
    assert_eq!(o.pending(), 0);
}

#[test]
fn dirty_entries_are_reported_once() {
    let mut o = outbox();
    let es = node("ES-UDYCO");
    o.submit(0, pid(1), es, Priority::Routine, 100_000, Digest::of(b"x"));
    assert_eq!(o.take_dirty().len(), 1);
    assert!(o.take_dirty().is_empty());
    o.poll_transmit(0, &es);
    assert_eq!(o.take_dirty()[0].state.name(), "in_flight");
}

/// A receipt is prepared, stored, then applied: before it is applied nothing shows it, an
/// abandoned one leaves the entry to be sent again, and expiry waits for a prepared one.
/// Retention counts from when this node took the receipt, or the partner's claimed delivery
/// time if later, held between the submit and the expiry (the store's outcome index walks
/// by it); `forget` drops terminal entries only.
#[test]
fn retention_counts_from_the_outcome_on_this_nodes_clock() {
    let mut o = outbox();
    let es = node("ES-UDYCO");
    let deliver = |o: &mut Outbox, n: u8, claimed: Millis, now: Millis| {
        let d = Digest::of(&[n]);
        o.submit(100, pid(n), es, Priority::Routine, 10_000, d);
        o.poll_transmit(100, &es).unwrap();
        o.take_dirty();
        let (_, will_be) = o.prepare_receipt(now, pid(n), &es, d, ReceiptOutcome::Accepted { received_at: claimed });
        o.apply_prepared(pid(n), &es);
        assert!(o.entry(pid(n), &es).is_none(), "stored with its receipt: gone from memory");
        will_be.unwrap().retention_from()
    };
    assert_eq!(deliver(&mut o, 1, 150, 300), Some(300));
    assert_eq!(deliver(&mut o, 2, u64::MAX, 300), Some(10_000));
    // Claimed long before this node took the receipt: counted from the receipt.
    assert_eq!(deliver(&mut o, 3, 0, 200), Some(200));
    assert_eq!(o.finished(), Finished { delivered: 3, ..Finished::default() });
    o.submit(100, pid(4), es, Priority::Routine, 10_000, Digest::of(b"q"));
    o.take_dirty();
    assert_eq!(o.entry(pid(4), &es).unwrap().retention_from(), None);
    o.forget(pid(4), &es);
    assert!(o.entry(pid(4), &es).is_some(), "a queued entry is never forgotten");
}

#[test]
fn receipts_take_effect_only_once_stored() {
    let mut o = outbox();
    let es = node("ES-UDYCO");
    let d = Digest::of(b"x");
    o.submit(0, pid(1), es, Priority::Flash, 1_000, d);
    o.poll_transmit(0, &es).unwrap();
    o.take_dirty();
    let accepted = ReceiptOutcome::Accepted { received_at: 5 };
    let (m, will_be) = o.prepare_receipt(5, pid(1), &es, d, accepted.clone());
    assert_eq!(m, ReceiptMatch::Completed);
    assert_eq!(will_be.unwrap().state.name(), "delivered", "what to store with the receipt");
    assert_eq!(o.entry(pid(1), &es).unwrap().state.name(), "in_flight", "not before it is stored");
    assert_eq!(o.prepare_receipt(5, pid(1), &es, d, accepted.clone()).0, ReceiptMatch::Duplicate);
    // The commit failed: nothing changed, the copy is retried as usual.
    o.abandon_prepared(pid(1), &es);
    o.handle_send_failed(6, pid(1), &es);
    assert_eq!(o.entry(pid(1), &es).unwrap().state.name(), "queued");
    let t = o.poll_timeout().unwrap();
    o.poll_transmit(t, &es).unwrap();
    // Prepared again; its expiry passes while the commit runs: the receipt decides.
    assert_eq!(o.prepare_receipt(900, pid(1), &es, d, accepted).0, ReceiptMatch::Completed);
    o.handle_timeout(1_000);
    assert_ne!(o.entry(pid(1), &es).unwrap().state.name(), "expired");
    assert!(o.take_dirty().is_empty(), "held while its receipt is stored");
    o.apply_prepared(pid(1), &es);
    assert_eq!(o.entry(pid(1), &es).unwrap().state.name(), "delivered");
    // The timeout changed it meanwhile, so it is written again, in its final state.
    assert!(o.take_dirty().iter().all(|e| e.state.name() == "delivered"));
    assert!(o.take_dirty().is_empty());
    o.handle_timeout(2_000);
    assert_eq!(o.entry(pid(1), &es).unwrap().state.name(), "delivered", "terminal");
    assert_eq!(o.pending(), 0);
}

/// While a receipt's commit runs, the entry's memory state (older than what the receipt
/// writes) is never taken for writing: it would land after the receipt's snapshot and put
/// a delivered copy back in the queue on disk. If the receipt is abandoned, the entry is
/// written again; once applied, a change made meanwhile is written with the final state.
#[test]
fn an_entry_whose_receipt_is_being_stored_is_not_taken() {
    let mut o = outbox();
    let es = node("ES-UDYCO");
    let d = Digest::of(b"x");
    let accepted = ReceiptOutcome::Accepted { received_at: 5 };
    o.submit(0, pid(1), es, Priority::Routine, 100_000, d);
    o.poll_transmit(0, &es).unwrap();
    assert_eq!(o.prepare_receipt(5, pid(1), &es, d, accepted.clone()).0, ReceiptMatch::Completed);
    assert!(o.take_dirty().is_empty(), "the receipt's commit writes it");
    o.handle_send_failed(6, pid(1), &es);
    assert!(o.take_dirty().is_empty(), "held while the receipt is stored");
    o.abandon_prepared(pid(1), &es);
    let again = o.take_dirty();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].state.name(), "queued");

    let t = o.poll_timeout().unwrap();
    o.poll_transmit(t, &es).unwrap();
    o.take_dirty();
    assert_eq!(o.prepare_receipt(t, pid(1), &es, d, accepted).0, ReceiptMatch::Completed);
    o.handle_send_failed(t + 1, pid(1), &es);
    assert!(o.take_dirty().is_empty());
    o.apply_prepared(pid(1), &es);
    let last = o.take_dirty();
    assert_eq!(last.len(), 1, "changed meanwhile: written again");
    assert_eq!(last[0].state.name(), "delivered");
}

/// Entries taken for persisting and not stored are persisted again.
#[test]
fn dirty_entries_come_back_when_their_commit_fails() {
    let mut o = outbox();
    let es = node("ES-UDYCO");
    o.submit(0, pid(1), es, Priority::Routine, 100_000, Digest::of(b"x"));
    let taken = o.take_dirty();
    o.mark_dirty(taken.iter().map(|e| (e.packet_id, e.recipient)));
    assert_eq!(o.take_dirty(), taken);
}
