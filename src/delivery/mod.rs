//! Every delivery decision, without doing any I/O.
//!
//! Like `quinn-proto`, this module contains no networking, no storage and no clock: time,
//! randomness and what the node holds are passed in, and what changes comes out as writes for
//! the store and effects that the driver puts in force **after** the store says the writes are
//! durable (or drops if the commit failed). The node (`crate::node`) drives it with QUIC, sled
//! and the wall clock; the simulator (`crate::sim`) drives the very same code with a simulated
//! network, a faulty in-memory disk and its own clock. It must never read the clock, open a
//! socket or touch a file.
//!
//! - [`Sender`] ([`sender`]): the machine for one partner: its outbox entries, the link (dial,
//!   backoff with jitter), three lanes (window, write order, receipt timer), receipts (prepare,
//!   then apply or abandon), what goes back to the queue when a lane or connection fails.
//! - [`receiver::Receiver`]: a batch of frames from a partner -> a verdict per copy, the signed
//!   receipt, the writes and the effects.
//! - [`submit`]: the send policy per recipient, sealing, the writes of a submit.
//! - [`Outbox`]: the entries and their legal transitions (queued, in flight, delivered, rejected,
//!   expired), ready queues FLASH before URGENT before ROUTINE, exponential backoff with jitter.
//! - [`Inbox`]: the receiver's dedup by (packet id, sender): a retransmission is receipted again
//!   as the first arrival but shown to officers once.
//!
//! Time is milliseconds since the Unix epoch ([`Millis`]), given by the caller.

mod inbox;
mod outbox;
pub mod receiver;
pub mod sender;
pub mod submit;

pub use inbox::{acknowledge, AckRefusal, Inbox, Incoming};
pub use outbox::{
    terminal_keys, Counts, Entry, EntryState, Finished, Outbox, ReadAckMatch, ReceiptMatch, ReceiptOutcome,
    RetryPolicy, Transmit,
};
pub use sender::{LaneId, Link, PreparedReceipt, Problem, ReceiptItemIn, ReceiptRefused, Sender, LANES, WINDOW};

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
