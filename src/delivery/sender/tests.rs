//! The sender module's tests.

use super::*;
use crate::delivery::EntryState;

fn pid(n: u16) -> PacketId {
    format!("019ac0a1-5c00-7000-8000-00000000{n:04x}").parse().unwrap()
}

const RETRY: RetryPolicy = RetryPolicy { initial_backoff: 100, max_backoff: 1_000, receipt_timeout: 500 };

fn sender_with(n: u16, p: Priority) -> Sender {
    let es: NodeId = "ES-UDYCO".parse().unwrap();
    let mut s = Sender::new(es, RETRY, 7);
    for i in 0..n {
        let e = Outbox::new_entry(0, pid(i), es, p, 1_000_000, Digest::of(&i.to_be_bytes()));
        assert!(s.admit(0, e));
    }
    s
}

fn accepted(id: PacketId, n: u16) -> ReceiptItemIn {
    ReceiptItemIn {
        packet_id: id,
        digest: Digest::of(&n.to_be_bytes()),
        outcome: ReceiptOutcome::Accepted { received_at: 1 },
    }
}

/// Entries loaded behind the start: one admitted by this run meanwhile is left out (the
/// copy read from the store may be older than what this run did with it, and let go of),
/// one held already too; what was in flight comes back queued.
#[test]
fn a_load_behind_the_start_leaves_out_what_this_run_admitted() {
    let es: NodeId = "ES-UDYCO".parse().unwrap();
    let e = |n: u16| Outbox::new_entry(0, pid(n), es, Priority::Routine, 1_000_000, Digest::of(&n.to_be_bytes()));
    let mut s = Sender::new(es, RETRY, 7);
    s.begin_loading();
    assert!(s.admit(0, e(1)));
    s.poll_connect(0);
    s.handle_connected(0);
    let (lane, t) = s.poll_transmit(0).unwrap();
    assert!(s.begin_write(1, lane, &t));
    let prepared = s.prepare_receipt(2, lane, &[accepted(pid(1), 1)]).unwrap();
    s.apply_receipt(2, prepared);
    assert!(s.entry(pid(1)).is_none(), "delivered and let go");
    let in_flight = Entry { state: EntryState::InFlight { since: 0, deadline: 9 }, ..e(2) };
    assert_eq!(s.load(3, vec![e(1), in_flight, e(3)]), 2, "the stale copy of 1 is left out");
    assert!(s.entry(pid(1)).is_none());
    assert_eq!(s.entry(pid(2)).unwrap().state, EntryState::Queued { not_before: 3 });
    assert_eq!(s.load(3, vec![e(3)]), 0, "held already");
    // An acknowledgement stored for a copy not loaded yet, which the load read before it.
    let gomez: OfficerId = "Subinspector Gómez".parse().unwrap();
    s.add_read(pid(4), gomez.clone(), 5, true);
    assert_eq!(s.load(6, vec![e(4)]), 1);
    assert_eq!(s.entry(pid(4)).unwrap().reads, vec![(gomez, 5)]);
    s.end_loading();
    assert_eq!(s.pending(), 3);
}

#[test]
fn dials_only_with_something_to_send_and_backs_off_with_jitter() {
    let mut s = sender_with(0, Priority::Routine);
    assert!(!s.poll_connect(0), "nothing to send");
    let mut s = sender_with(1, Priority::Routine);
    assert!(s.poll_connect(0));
    assert!(!s.poll_connect(0), "already dialling");
    let mut waits = Vec::new();
    for _ in 0..6 {
        let w = s.handle_connect_failed(0, Problem::Unreachable);
        waits.push(w);
        assert!(!s.poll_connect(w - 1));
        assert!(s.poll_connect(w));
    }
    for (i, w) in waits.iter().enumerate() {
        let base = (100u64 << i).min(1_000);
        assert!((base / 2..=base).contains(w), "dial {i}: {w} not in [{}, {base}]", base / 2);
    }
    s.handle_connected(0);
    assert_eq!(s.link(), Link::Up);
}

#[test]
fn the_window_bounds_each_lane_and_flash_comes_first() {
    let mut s = sender_with(300, Priority::Routine);
    let es = *s.peer();
    let f = Outbox::new_entry(0, pid(999), es, Priority::Flash, 1_000_000, Digest::of(b"f"));
    s.admit(0, f);
    assert!(s.poll_transmit(0).is_none(), "not connected");
    s.poll_connect(0);
    s.handle_connected(0);
    let (lane, first) = s.poll_transmit(0).unwrap();
    assert_eq!((lane.priority, first.packet_id), (Priority::Flash, pid(999)));
    let mut n = 0;
    while s.poll_transmit(0).is_some() {
        n += 1;
    }
    assert_eq!(n, WINDOW, "the routine lane holds a window's worth");
}

/// A receipt completes what the lane wrote; a copy written before the last receipted one
/// and not receipted was dropped and is sent again; a receipt that answers nothing is
/// refused; a lane with no receipt for `receipt_timeout` is closed and its copies queued.
#[test]
fn receipts_skipped_copies_and_lane_timeouts() {
    let mut s = sender_with(3, Priority::Urgent);
    s.poll_connect(0);
    s.handle_connected(0);
    let sent: Vec<(LaneId, Transmit)> = (0..3).map(|_| s.poll_transmit(0).unwrap()).collect();
    for (lane, t) in &sent {
        assert!(s.begin_write(10, *lane, t));
    }
    let lane = sent[0].0;
    let by_id = |s: &Sender, n: u16| s.entry(pid(n)).unwrap().state.name();
    // Copies are written in the order polled; the receipt answers the second one only.
    let second = sent[1].1.packet_id;
    let n = (0..3).find(|i| pid(*i) == second).unwrap();
    let prepared = s.prepare_receipt(20, lane, &[accepted(second, n)]).unwrap();
    assert_eq!(prepared.entries().len(), 1);
    assert_eq!(by_id(&s, n), "in_flight", "nothing in force before it is stored");
    s.apply_receipt(20, prepared);
    assert!(s.entry(pid(n)).is_none(), "delivered, on disk: the machine lets it go");
    assert_eq!(s.finished().delivered, 1);
    let first = (0..3).find(|i| pid(*i) == sent[0].1.packet_id).unwrap();
    assert_eq!(by_id(&s, first), "queued", "written before the receipted one: dropped, sent again");
    assert!(matches!(s.prepare_receipt(30, lane, &[accepted(second, n)]), Err(ReceiptRefused::CompletesNothing)));
    // The third waits; no receipt for 500 ms closes the lane.
    assert!(s.poll_timeout().is_some_and(|t| t <= 520));
    let closed = s.handle_timeout(520);
    assert_eq!(closed, vec![lane]);
    let third = (0..3).find(|i| pid(*i) == sent[2].1.packet_id).unwrap();
    assert_eq!(by_id(&s, third), "queued");
    assert!(matches!(s.prepare_receipt(530, lane, &[accepted(pid(third), third)]), Err(ReceiptRefused::StaleLane)));
    assert!(!s.is_current(lane));
}

/// A delivered copy's sealed bytes are deleted with the receipt only if the receipt names
/// the signed packet this node keeps; a receipt without it (an older node) or naming another
/// one leaves them as the proof of what was delivered.
#[test]
fn the_sealed_copy_goes_only_when_the_receipt_names_the_signed_packet() {
    use crate::packet::{ReceiptItem, ReceiptOutcome as Signed};
    use crate::store::{Op, Tree};
    let signed = Digest::of(b"signed packet");
    let deletes_sealed = |named: Option<Digest>| {
        let es: NodeId = "ES-UDYCO".parse().unwrap();
        let mut s = Sender::new(es, RETRY, 7);
        let e = Outbox::new_entry(0, pid(0), es, Priority::Flash, 1_000_000, Digest::of(&0u16.to_be_bytes()));
        assert!(s.admit(0, Entry { signed_digest: Some(signed), ..e }));
        s.poll_connect(0);
        s.handle_connected(0);
        let (lane, t) = s.poll_transmit(0).unwrap();
        assert!(s.begin_write(0, lane, &t));
        let prepared = s.prepare_receipt(5, lane, &[accepted(pid(0), 0)]).unwrap();
        let receipt = OpenedReceipt {
            id: pid(100),
            items: vec![accepted(pid(0), 0)],
            signed_items: vec![ReceiptItem {
                packet_id: pid(0),
                received_at: crate::timestamp::Timestamp::now(),
                sealed_digest: Digest::of(&0u16.to_be_bytes()),
                signed_digest: named,
                outcome: Signed::Accepted,
                policy: None,
            }],
            signed: b"receipt".to_vec(),
        };
        receipt_ops(&es, &receipt, &prepared, Vec::new())
            .iter()
            .any(|op| matches!(op, Op::Delete(Tree::Sealed, k) if *k == crate::store::pair_key(pid(0), &es)))
    };
    assert!(deletes_sealed(Some(signed)));
    assert!(!deletes_sealed(None), "a receipt of an older node");
    assert!(!deletes_sealed(Some(Digest::of(b"another packet"))));
}

#[test]
fn an_abandoned_receipt_changes_nothing_and_the_copies_come_again() {
    let mut s = sender_with(1, Priority::Flash);
    s.poll_connect(0);
    s.handle_connected(0);
    let (lane, t) = s.poll_transmit(0).unwrap();
    assert!(s.begin_write(0, lane, &t));
    let prepared = s.prepare_receipt(5, lane, &[accepted(pid(0), 0)]).unwrap();
    s.abandon_receipt(5, prepared);
    assert!(matches!(s.entry(pid(0)).unwrap().state, EntryState::Queued { .. }));
    assert!(!s.is_current(lane));
    s.handle_connection_lost(6);
    assert!(s.poll_connect(10_000));
}

/// A copy polled again while its first attempt still waited in the lane (its receipt timer
/// ran out): the old job is not written and does not take the new attempt's slot, and the
/// new one is written.
#[test]
fn a_stale_job_does_not_take_the_slot_of_the_next_attempt() {
    let mut s = sender_with(1, Priority::Routine);
    s.poll_connect(0);
    s.handle_connected(0);
    let (lane, first) = s.poll_transmit(0).unwrap();
    // Not written yet (the lane is busy); the outbox's receipt timer runs out and the
    // backoff passes: polled again, same lane.
    s.handle_timeout(500);
    let at = s.poll_timeout().unwrap();
    let (lane2, second) = s.poll_transmit(at).unwrap();
    assert_eq!((lane2, second.attempt), (lane, 2));
    assert!(!s.begin_write(at, lane, &first), "the stale job is not written");
    assert_eq!(s.lane_load(Priority::Routine), 1, "and the slot stays the second attempt's");
    assert!(s.begin_write(at, lane, &second), "which is written");
}

/// A copy whose write takes longer than the receipt timeout does not close its lane: the
/// timer runs from the end of the write.
#[test]
fn a_long_write_does_not_time_the_lane_out() {
    let mut s = sender_with(1, Priority::Routine);
    s.poll_connect(0);
    s.handle_connected(0);
    let (lane, t) = s.poll_transmit(0).unwrap();
    assert!(s.begin_write(0, lane, &t));
    s.handle_written(700, lane, &t);
    assert!(s.handle_timeout(800).is_empty(), "500 ms after the start, but 100 after the end of the write");
    assert_eq!(s.handle_timeout(1_200), vec![lane]);
}

/// A partner that refuses this node's certificate closes each connection just after the
/// client's handshake ends: the failures keep counting (the backoff grows) and the refusal
/// stays said, until a receipt or STABLE_AFTER of a connection that stays up proves the link.
#[test]
fn a_refusal_after_the_handshake_backs_off_until_the_link_proves_itself() {
    let mut s = sender_with(1, Priority::Routine);
    let mut now = 0;
    let mut waits = Vec::new();
    for _ in 0..4 {
        assert!(s.poll_connect(now));
        s.handle_connected(now);
        assert!(s.connection_is_new(now + 10));
        s.handle_connection_lost(now + 10);
        let w = s.handle_connect_failed(now + 10, Problem::RefusedByPartner);
        waits.push(w);
        assert_eq!(s.problem().map(|(p, _)| p), Some(Problem::RefusedByPartner));
        now += 10 + w;
    }
    assert!(waits[3] > waits[0], "the backoff grows: {waits:?}");
    // Connected again; nothing proves it yet: the refusal is still what is said.
    assert!(s.poll_connect(now));
    s.handle_connected(now);
    assert_eq!(s.problem().map(|(p, _)| p), Some(Problem::RefusedByPartner));
    assert!(s.poll_timeout().unwrap() <= now + STABLE_AFTER, "the machine wakes to prove the link");
    s.handle_timeout(now + STABLE_AFTER - 1);
    assert!(s.problem().is_some(), "not proved before STABLE_AFTER");
    s.handle_timeout(now + STABLE_AFTER);
    assert_eq!(s.problem(), None, "a connection up for STABLE_AFTER proves the link");
    assert!(!s.connection_is_new(now + STABLE_AFTER));
    assert!(
        s.poll_timeout().is_none_or(|t| t > now + STABLE_AFTER),
        "nothing left to prove: no wake-up in the past (the driver would spin)"
    );
    // The failures were counted off: the next failed dial waits the first step again.
    s.handle_connection_lost(now + STABLE_AFTER + 1);
    let w = s.handle_connect_failed(now + STABLE_AFTER + 1, Problem::Unreachable);
    assert!(w <= 100, "back to the first step: {w}");
}

/// What the handshake proves on this side (the partner answers, its certificate is good) is
/// cleared at connect; a refusal by the partner is not.
#[test]
fn connecting_clears_what_the_handshake_proves() {
    for (problem, cleared) in [
        (Problem::Unreachable, true),
        (Problem::PartnerCertificateExpired, true),
        (Problem::NotThePartner, true),
        (Problem::RefusedByPartner, false),
    ] {
        let mut s = sender_with(1, Priority::Routine);
        assert!(s.poll_connect(0));
        s.handle_connect_failed(0, problem);
        let w = s.poll_timeout().unwrap();
        assert!(s.poll_connect(w));
        s.handle_connected(w);
        assert_eq!(s.problem().is_none(), cleared, "{problem:?}");
    }
}

/// After a lost connection, the copies on it wait out their backoff: the machine's next
/// wake-up is then, not the dial time that has passed (the driver would wake every
/// millisecond until the copies are ready).
#[test]
fn no_wake_up_in_the_past_while_copies_wait_out_their_backoff() {
    let mut s = sender_with(1, Priority::Routine);
    assert!(s.poll_connect(0));
    s.handle_connected(0);
    assert!(s.poll_transmit(0).is_some());
    s.handle_connection_lost(10);
    assert!(!s.poll_connect(10), "nothing ready yet: the copy waits out its backoff");
    let next = s.poll_timeout().unwrap();
    assert!(next > 10, "the next wake-up is ahead: {next}");
    // At that time the copy is ready, and the dial is due.
    assert!(s.poll_connect(next));
}
