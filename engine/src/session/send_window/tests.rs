//! Examples of the send window's rules; the model-based property over
//! random operation sequences is `engine/tests/send_window.rs`.

use bytes::Bytes;
use ferry_protocol::{Epoch, ExtentBatch, ImageName, SeqNo};

use super::{window_cost, SendWindow, WindowError};

fn batch(seq: SeqNo, payload_len: usize) -> ExtentBatch {
    ExtentBatch {
        image: ImageName::new("img").unwrap(),
        epoch: Epoch(2),
        seq,
        scan_start: 0,
        scan_end: 0,
        payload_crc32c: 0,
        plain_blake3: [0; 32],
        extents: Vec::new(),
        payload: Bytes::from(vec![7u8; payload_len]),
    }
}

fn seqs(window: &SendWindow) -> Vec<u64> {
    (0..window.len())
        .map(|i| window.batch(i).seq.get())
        .collect()
}

#[test]
fn sequence_numbers_continue_after_the_durable_one() {
    let mut window = SendWindow::new(SeqNo(4), 1000);
    assert_eq!(window.last_seq(), SeqNo(4));
    assert_eq!(window.push(|seq| batch(seq, 10)), 0);
    assert_eq!(window.push(|seq| batch(seq, 10)), 1);
    assert_eq!(seqs(&window), [5, 6]);
    assert_eq!(window.last_seq(), SeqNo(6));
    assert_eq!(window.unacked_bytes(), 22, "payload + 1 per batch");
}

#[test]
fn the_window_fills_up_to_one_batch_past_its_limit() {
    let mut window = SendWindow::new(SeqNo(0), 100);
    assert!(window.has_room());
    window.push(|seq| batch(seq, 98));
    assert!(window.has_room(), "99 of 100 bytes");
    window.push(|seq| batch(seq, 50));
    assert!(!window.has_room());
    assert_eq!(window.unacked_bytes(), 99 + 51);
    window.ack(SeqNo(1));
    assert!(window.has_room());
    assert_eq!(window.unacked_bytes(), 51);
}

#[test]
fn empty_batches_weigh_one_byte() {
    let mut window = SendWindow::new(SeqNo(0), 2);
    window.push(|seq| batch(seq, 0));
    assert_eq!(window_cost(window.batch(0)), 1);
    assert!(window.has_room());
    window.push(|seq| batch(seq, 0));
    assert!(!window.has_room());
}

#[test]
fn acks_are_cumulative_and_never_go_back() {
    let mut window = SendWindow::new(SeqNo(0), 1000);
    for _ in 0..5 {
        window.push(|seq| batch(seq, 1));
    }
    window.ack(SeqNo(3));
    assert_eq!(seqs(&window), [4, 5]);
    assert_eq!(window.durable_seq(), SeqNo(3));
    window.ack(SeqNo(1));
    assert_eq!(seqs(&window), [4, 5], "an older ack frees nothing");
    assert_eq!(window.durable_seq(), SeqNo(3));
    window.ack(SeqNo(5));
    assert!(window.is_empty());
    assert_eq!(window.unacked_bytes(), 0);
}

#[test]
fn a_nack_resends_from_the_named_batch() {
    let mut window = SendWindow::new(SeqNo(10), 1000);
    for _ in 0..4 {
        window.push(|seq| batch(seq, 1));
    }
    window.ack(SeqNo(11));
    assert_eq!(seqs(&window), [12, 13, 14]);
    assert_eq!(window.nack(SeqNo(13)), Ok(1..3));
    assert_eq!(window.nack(SeqNo(12)), Ok(0..3));
    assert_eq!(
        window.nack(SeqNo(11)),
        Err(WindowError::NackNotInFlight(SeqNo(11)))
    );
    assert_eq!(
        window.nack(SeqNo(15)),
        Err(WindowError::NackNotInFlight(SeqNo(15)))
    );
    assert_eq!(
        WindowError::NackNotInFlight(SeqNo(15)).to_string(),
        "Nack for batch 15 which is not in flight"
    );
}

#[test]
fn a_reopen_resends_what_the_standby_lacks() {
    let mut window = SendWindow::new(SeqNo(0), 1000);
    for _ in 0..4 {
        window.push(|seq| batch(seq, 1));
    }
    window.ack(SeqNo(1));
    assert_eq!(window.reopened(SeqNo(2)), Ok(0..2));
    assert_eq!(seqs(&window), [3, 4]);
    assert_eq!(
        window.reopened(SeqNo(2)),
        Ok(0..2),
        "same durable: all resent"
    );
    let went_back = window.reopened(SeqNo(1));
    assert_eq!(
        went_back,
        Err(WindowError::DurableWentBack {
            acknowledged: SeqNo(2),
            now: SeqNo(1)
        })
    );
    assert_eq!(seqs(&window), [3, 4], "a refused reopen changes nothing");
    assert_eq!(
        went_back.unwrap_err().to_string(),
        "the standby acknowledged batch 2 as durable but now holds only 1"
    );
    assert_eq!(window.reopened(SeqNo(4)), Ok(0..0));
    assert!(window.is_empty());
}
