//! Property of the `send_window` fuzz target, shared with `cargo test`
//! (`engine/tests/send_window.rs` runs it over the committed corpus and over
//! random inputs): bytes become a sequence of pushes, acks, Nacks and
//! reopens against the sender's [`SendWindow`], checked step by step
//! against a plain model (a list of `(seq, weight)`):
//! - new batches get consecutive sequence numbers after the durable one the
//!   window started from, and enter only while it has room, so it never
//!   weighs more than its limit plus one batch;
//! - the window's weight is the weight of exactly the batches in it;
//! - an ack frees exactly the batches up to the sequence it names, and an
//!   ack below an earlier one frees nothing;
//! - a Nack resends the named batch and every later one, in order, and is
//!   refused for a batch not in the window;
//! - a reopen below what was acknowledged is refused and changes nothing;
//!   otherwise it acks and resends every batch left, oldest first.

use bytes::Bytes;
use ferry_engine::session::send_window::{window_cost, SendWindow, WindowError};
use ferry_protocol::{Epoch, ExtentBatch, ImageName, SeqNo};

fn batch(seq: SeqNo, payload_len: usize) -> ExtentBatch {
    ExtentBatch {
        image: ImageName::new("fuzz").expect("a valid image name"),
        epoch: Epoch(1),
        seq,
        scan_start: 0,
        scan_end: 0,
        payload_crc32c: 0,
        plain_blake3: [0; 32],
        extents: Vec::new(),
        payload: Bytes::from(vec![0u8; payload_len]),
    }
}

/// The model: what the window must hold.
struct Model {
    batches: Vec<(SeqNo, u64)>,
    durable: SeqNo,
    last: SeqNo,
    limit: u64,
    heaviest: u64,
}

impl Model {
    fn weight(&self) -> u64 {
        self.batches.iter().map(|(_, w)| w).sum()
    }

    fn ack(&mut self, durable: SeqNo) {
        self.durable = self.durable.max(durable);
        let durable = self.durable;
        // Batches leave from the front only, while they are durable.
        let keep_from = self
            .batches
            .iter()
            .position(|(seq, _)| *seq > durable)
            .unwrap_or(self.batches.len());
        self.batches.drain(..keep_from);
    }
}

fn same(window: &SendWindow, model: &Model) {
    assert_eq!(window.len(), model.batches.len(), "batches in the window");
    assert_eq!(window.is_empty(), model.batches.is_empty());
    assert_eq!(window.unacked_bytes(), model.weight(), "window weight");
    assert_eq!(window.durable_seq(), model.durable, "durable sequence");
    assert_eq!(window.last_seq(), model.last, "last sequence");
    assert_eq!(window.has_room(), model.weight() < model.limit, "room");
    for (i, (seq, weight)) in model.batches.iter().enumerate() {
        assert_eq!(window.batch(i).seq, *seq, "batch {i} of the window");
        assert_eq!(window_cost(window.batch(i)), *weight);
    }
    assert!(
        model.weight() < model.limit + model.heaviest,
        "the window weighs {} with a limit of {} and batches of at most {}",
        model.weight(),
        model.limit,
        model.heaviest
    );
}

/// A sequence number near the window: `pick` chooses from before the
/// durable one to past the last one.
fn seq_near(model: &Model, pick: u8) -> SeqNo {
    let low = model.durable.get().saturating_sub(2);
    let span = model.last.get() + 3 - low;
    SeqNo(low + u64::from(pick) % span)
}

/// Runs the operations `data` encodes and checks the window after each.
pub fn check(data: &[u8]) {
    let (head, mut ops) = data.split_at(data.len().min(2));
    let start = SeqNo(u64::from(head.first().copied().unwrap_or(0)));
    let limit = 1 + u64::from(head.get(1).copied().unwrap_or(64)) * 16;
    let mut window = SendWindow::new(start, limit);
    let mut model = Model {
        batches: Vec::new(),
        durable: start,
        last: start,
        limit,
        heaviest: 1,
    };
    same(&window, &model);
    while let [op, arg, rest @ ..] = ops {
        ops = rest;
        match op % 4 {
            // Push, if there is room (the sender waits otherwise).
            0 => {
                if !window.has_room() {
                    continue;
                }
                let payload_len = usize::from(*arg) * 8;
                let expected = model.last.next();
                let index = window.push(|seq| {
                    assert_eq!(seq, expected, "sequence numbers are consecutive");
                    batch(seq, payload_len)
                });
                model.last = expected;
                model.batches.push((expected, payload_len as u64 + 1));
                model.heaviest = model.heaviest.max(payload_len as u64 + 1);
                assert_eq!(index, model.batches.len() - 1, "a new batch goes last");
            }
            // Ack.
            1 => {
                let seq = seq_near(&model, *arg);
                window.ack(seq);
                model.ack(seq);
                assert!(
                    model.batches.iter().all(|(s, _)| *s > model.durable),
                    "an ack leaves only batches past it"
                );
            }
            // Nack: the batch and every later one, or a refusal.
            2 => {
                let seq = seq_near(&model, *arg);
                match model.batches.iter().position(|(s, _)| *s == seq) {
                    Some(from) => {
                        assert_eq!(window.nack(seq), Ok(from..model.batches.len()));
                        assert_eq!(window.batch(from).seq, seq);
                    }
                    None => assert_eq!(window.nack(seq), Err(WindowError::NackNotInFlight(seq))),
                }
            }
            // Reopen after a reconnect.
            _ => {
                let seq = seq_near(&model, *arg);
                if seq < model.durable {
                    assert_eq!(
                        window.reopened(seq),
                        Err(WindowError::DurableWentBack {
                            acknowledged: model.durable,
                            now: seq
                        })
                    );
                } else {
                    model.ack(seq);
                    assert_eq!(window.reopened(seq), Ok(0..model.batches.len()));
                }
            }
        }
        same(&window, &model);
    }
}
