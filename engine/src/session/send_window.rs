//! The sender's window of unacknowledged batches, without I/O: which batches
//! the standby has not yet called durable, what they weigh, which sequence
//! number the next batch gets, and what must be sent again after a Nack or a
//! reconnect. The sender ([`super::sender`]) does the sending; this type only
//! decides, so it can be tested and fuzzed on its own
//! (`fuzz/fuzz_targets/send_window.rs`), as the receiver's
//! [`FrameMachine`](super::machine::FrameMachine) is.
//!
//! Rules:
//! - sequence numbers are handed out in order, one per batch, starting after
//!   the batch the standby held durably when the stream was opened;
//! - a batch stays in the window from its first send until an ack names it or
//!   a later batch (acks are cumulative: "durable up to `seq`");
//! - a new batch may enter while the window weighs less than the limit, so
//!   the window exceeds the limit by at most one batch;
//! - a Nack of a batch in the window resends it and every later one, in
//!   order; a Nack of any other batch is a protocol violation;
//! - after a reconnect the standby's durable sequence must not be below what
//!   it acknowledged before; everything it does not hold is resent in order.

use std::collections::VecDeque;
use std::ops::Range;

use ferry_protocol::{ExtentBatch, SeqNo};

/// What a batch weighs in the window: its payload plus one byte, so that
/// empty batches (progress marks) count too.
pub fn window_cost(batch: &ExtentBatch) -> u64 {
    batch.payload.len() as u64 + 1
}

/// The standby answered something the window cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// A Nack named a batch that is not waiting for an ack.
    #[error("Nack for batch {0} which is not in flight")]
    NackNotInFlight(SeqNo),
    /// After a reconnect the standby holds less than it acknowledged.
    #[error("the standby acknowledged batch {acknowledged} as durable but now holds only {now}")]
    DurableWentBack {
        /// What it acknowledged before.
        acknowledged: SeqNo,
        /// What it reports now.
        now: SeqNo,
    },
}

/// The unacknowledged batches of one image epoch, oldest first.
#[derive(Debug)]
pub struct SendWindow {
    unacked: VecDeque<ExtentBatch>,
    unacked_bytes: u64,
    next_seq: SeqNo,
    durable_seq: SeqNo,
    max_unacked_bytes: u64,
}

impl SendWindow {
    /// An empty window for a stream on which the standby holds every batch
    /// up to `durable` durably; new batches pause once the window weighs
    /// `max_unacked_bytes`.
    pub fn new(durable: SeqNo, max_unacked_bytes: u64) -> Self {
        Self {
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            next_seq: durable.next(),
            durable_seq: durable,
            max_unacked_bytes,
        }
    }

    /// Whether a new batch may enter (the window weighs less than its limit).
    pub fn has_room(&self) -> bool {
        self.unacked_bytes < self.max_unacked_bytes
    }

    /// Whether every batch sent is durable.
    pub fn is_empty(&self) -> bool {
        self.unacked.is_empty()
    }

    /// Batches waiting for an ack.
    pub fn len(&self) -> usize {
        self.unacked.len()
    }

    /// What the waiting batches weigh ([`window_cost`]).
    pub fn unacked_bytes(&self) -> u64 {
        self.unacked_bytes
    }

    /// The highest batch the standby called durable.
    pub fn durable_seq(&self) -> SeqNo {
        self.durable_seq
    }

    /// The sequence number of the last batch that entered (the durable
    /// sequence at the start when none did).
    pub fn last_seq(&self) -> SeqNo {
        SeqNo(self.next_seq.get() - 1)
    }

    /// The waiting batch at `index` (0 = oldest).
    pub fn batch(&self, index: usize) -> &ExtentBatch {
        &self.unacked[index]
    }

    /// Gives the next sequence number to `build`, and keeps the batch it
    /// builds as unacknowledged. Returns its index, to send it. A batch
    /// enters before it is sent, so one whose write fails on a dying link is
    /// resent after the reconnect instead of being lost.
    pub fn push(&mut self, build: impl FnOnce(SeqNo) -> ExtentBatch) -> usize {
        let seq = self.next_seq;
        self.next_seq = seq.next();
        let batch = build(seq);
        debug_assert_eq!(
            batch.seq, seq,
            "a batch must carry the sequence it was given"
        );
        self.unacked_bytes += window_cost(&batch);
        self.unacked.push_back(batch);
        self.unacked.len() - 1
    }

    /// The standby holds every batch up to `durable`: those leave the
    /// window. An ack below an earlier one changes nothing.
    pub fn ack(&mut self, durable: SeqNo) {
        if durable > self.durable_seq {
            self.durable_seq = durable;
        }
        while let Some(front) = self.unacked.front() {
            if front.seq > self.durable_seq {
                break;
            }
            self.unacked_bytes -= window_cost(front);
            self.unacked.pop_front();
        }
    }

    /// The standby rejected batch `seq`: the indexes to send again, in
    /// order (that batch and every later one).
    pub fn nack(&self, seq: SeqNo) -> Result<Range<usize>, WindowError> {
        let from = self
            .unacked
            .iter()
            .position(|b| b.seq == seq)
            .ok_or(WindowError::NackNotInFlight(seq))?;
        Ok(from..self.unacked.len())
    }

    /// The stream was opened again on a new connection, where the standby
    /// holds every batch up to `durable`: acknowledges those and returns the
    /// indexes to send again, in order (every batch left).
    pub fn reopened(&mut self, durable: SeqNo) -> Result<Range<usize>, WindowError> {
        if durable < self.durable_seq {
            return Err(WindowError::DurableWentBack {
                acknowledged: self.durable_seq,
                now: durable,
            });
        }
        self.ack(durable);
        Ok(0..self.unacked.len())
    }
}

#[cfg(test)]
mod tests;
