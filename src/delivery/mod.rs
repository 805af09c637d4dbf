//! The delivery core: what must happen to each packet, without doing any I/O.
//!
//! Like `quinn-proto`, this module contains no networking, no storage and no clock. The node's
//! driver feeds it events with the current time (`submit`, `handle_receipt`, `handle_send_failed`,
//! `handle_timeout`...) and asks it what to do next (`poll_transmit`, `poll_timeout`,
//! `take_dirty`). That keeps the hard part — retries, backoff, expiry, dedup, receipt matching —
//! deterministic and testable in memory with simulated time (`tests/delivery_sim.rs`).
//!
//! - [`Outbox`]: the sender's side. One entry per (packet, recipient): queued, in flight,
//!   delivered, rejected or expired; FLASH before URGENT before ROUTINE; exponential backoff with
//!   jitter; a state changes only by a legal transition.
//! - [`Inbox`]: the receiver's side. Dedup by packet id, so a retransmission is receipted again
//!   (with the receipt already issued) but shown to officers once.
//!
//! Time is milliseconds since the Unix epoch ([`Millis`]), given by the caller.

mod inbox;
mod outbox;
pub mod receiver;
pub mod sender;
pub mod submit;

pub use inbox::{Inbox, Incoming};
pub use outbox::{Entry, EntryState, Outbox, ReadAckMatch, ReceiptMatch, ReceiptOutcome, RetryPolicy, Transmit};
pub use sender::{LaneId, Link, PreparedReceipt, ReceiptItemIn, ReceiptRefused, Sender, LANES, WINDOW};

/// Milliseconds since the Unix epoch, as the driver's clock reads them.
pub type Millis = u64;

/// Converts an envelope timestamp to [`Millis`].
pub fn millis(t: crate::timestamp::Timestamp) -> Millis {
    t.unix().unsigned_abs().saturating_mul(1000)
}

/// Bugs planted on purpose, to show that the simulator finds them (`crate::sim`'s tests). Only
/// in test builds of the library; one thread's plant does not affect another's.
#[cfg(test)]
pub(crate) mod plant {
    use std::cell::Cell;

    /// A bug to plant.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Bug {
        /// The sender machine puts a receipt in force before it is stored.
        ApplyReceiptBeforeCommit,
        /// The receiver machine receipts a new packet as accepted without writing it.
        ReceiptWithoutStoring,
    }

    thread_local! {
        static PLANTED: Cell<Option<Bug>> = const { Cell::new(None) };
    }

    /// Plants `bug` in this thread (or none).
    pub fn set(bug: Option<Bug>) {
        PLANTED.with(|p| p.set(bug));
    }

    /// Whether `bug` is planted in this thread.
    pub fn is(bug: Bug) -> bool {
        PLANTED.with(|p| p.get() == Some(bug))
    }
}
