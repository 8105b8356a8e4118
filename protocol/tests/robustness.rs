//! Hostile input: arbitrary bytes and mutated valid frames never panic, never
//! make the decoder allocate more than the frame's own size justifies, and
//! whatever does decode re-encodes to exactly the bytes it came from.
//!
//! A counting global allocator (per thread, so parallel tests do not
//! interfere) measures what one `decode` call allocates.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{BufMut, Bytes, BytesMut};
use ferry_protocol::*;
use proptest::collection::vec;
use proptest::prelude::*;

struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    let _ = ALLOCATED.try_with(|a| a.set(a.get() + size));
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: forwards every call to the system allocator unchanged; the
// bookkeeping touches only const-initialised thread-locals (no allocation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Small cap so a decoder that trusted a count would blow well past it.
const CAP: usize = 4096;

/// Runs one `decode` and returns (result, bytes allocated, largest allocation).
fn measured_decode(
    decoder: &FrameDecoder,
    buf: &mut BytesMut,
) -> (Result<Option<Message>, DecodeError>, usize, usize) {
    ALLOCATED.with(|a| a.set(0));
    LARGEST.with(|l| l.set(0));
    let result = decoder.decode(buf);
    (result, ALLOCATED.with(Cell::get), LARGEST.with(Cell::get))
}

/// Decodes `input` frame by frame, checking the allocation bound and that
/// every decoded frame re-encodes to exactly its input bytes.
fn exercise(input: &[u8]) -> Result<(), TestCaseError> {
    let decoder = FrameDecoder::new(CAP);
    let mut buf = BytesMut::from(input);
    loop {
        let before = buf.clone();
        let (result, allocated, largest) = measured_decode(&decoder, &mut buf);
        // In memory a frame is at most twice its wire size (a 26-byte commit
        // image becomes a 48-byte struct plus its name), whatever counts claim.
        let frame_len = before.len().min(CAP + 4);
        prop_assert!(
            allocated <= 2 * frame_len + 256,
            "decode allocated {} bytes for a {}-byte frame ({:?})",
            allocated,
            frame_len,
            result
        );
        prop_assert!(largest <= 2 * frame_len + 256);
        match result {
            Ok(Some(message)) => {
                let consumed = before.len() - buf.len();
                let mut again = BytesMut::new();
                message.encode(&mut again, CAP).unwrap();
                prop_assert_eq!(
                    &again[..],
                    &before[..consumed],
                    "not canonical: {:?}",
                    message
                );
            }
            Ok(None) => {
                prop_assert_eq!(&buf, &before);
                return Ok(());
            }
            Err(_) => {
                prop_assert_eq!(&buf, &before, "a failed decode must not consume");
                return Ok(());
            }
        }
    }
}

/// One way to damage a valid frame.
#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: prop::sample::Index, bit: u8 },
    Set { at: prop::sample::Index, value: u8 },
    Truncate(prop::sample::Index),
    Insert { at: prop::sample::Index, value: u8 },
    Remove(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), 0..8u8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<prop::sample::Index>(), any::<u8>())
            .prop_map(|(at, value)| Mutation::Set { at, value }),
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        (any::<prop::sample::Index>(), any::<u8>())
            .prop_map(|(at, value)| Mutation::Insert { at, value }),
        any::<prop::sample::Index>().prop_map(Mutation::Remove),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match mutation {
        Mutation::Flip { at, bit } => {
            let at = at.index(bytes.len());
            bytes[at] ^= 1 << bit;
        }
        Mutation::Set { at, value } => {
            let at = at.index(bytes.len());
            bytes[at] = *value;
        }
        Mutation::Truncate(at) => bytes.truncate(at.index(bytes.len())),
        Mutation::Insert { at, value } => bytes.insert(at.index(bytes.len() + 1), *value),
        Mutation::Remove(at) => {
            bytes.remove(at.index(bytes.len()));
        }
    }
}

/// Messages small enough for `CAP`.
fn small_message() -> impl Strategy<Value = Message> {
    common::message().prop_filter("fits the test cap", |m| m.encoded_len() - 4 <= CAP)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn arbitrary_bytes_never_panic(input in vec(any::<u8>(), 0..600)) {
        exercise(&input)?;
    }

    #[test]
    fn arbitrary_bodies_of_every_type_never_panic(frame_type in any::<u8>(), body in vec(any::<u8>(), 0..600)) {
        let _ = decode_frame_body(frame_type, Bytes::from(body.clone()));
        let mut frame = BytesMut::new();
        frame.put_u32_le(body.len() as u32 + 1);
        frame.put_u8(frame_type);
        frame.put_slice(&body);
        exercise(&frame)?;
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        message in small_message(),
        mutations in vec(mutation(), 1..4),
        fix_length in any::<bool>(),
    ) {
        let mut bytes = common::encode(&message).to_vec();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        if fix_length && bytes.len() >= 4 {
            // Keep the length field consistent so the damage reaches the body parser.
            let len = (bytes.len() - 4) as u32;
            bytes[..4].copy_from_slice(&len.to_le_bytes());
        }
        exercise(&bytes)?;
    }

    #[test]
    fn valid_streams_respect_the_allocation_bound(messages in vec(small_message(), 1..4)) {
        let mut stream = Vec::new();
        for m in &messages {
            stream.extend_from_slice(&common::encode(m));
        }
        exercise(&stream)?;
    }
}

#[test]
fn huge_counts_in_tiny_frames_allocate_nothing_big() {
    // Frames announcing the maximum element counts with no elements behind them.
    let mut frames: Vec<BytesMut> = Vec::new();
    let mut batch = BytesMut::new();
    batch.put_slice(&[1, b'a']);
    batch.put_slice(&[0; 32]); // epoch, seq, scan_start, scan_end
    batch.put_slice(&[0; 36]); // crc, blake3
    batch.put_u32_le(65_536);
    frames.push(batch);
    let mut commit = BytesMut::new();
    commit.put_slice(&[0; 17]);
    commit.put_u32_le(1024);
    frames.push(commit);
    let mut answer = BytesMut::new();
    answer.put_slice(&[1, b'a']);
    answer.put_slice(&[0; 24]);
    answer.put_u32_le(1);
    answer.put_u32_le(65_536);
    frames.push(answer);
    for (frame_type, body) in [0x05u8, 0x06, 0x0B].into_iter().zip(frames) {
        let mut buf = BytesMut::new();
        buf.put_u32_le(body.len() as u32 + 1);
        buf.put_u8(frame_type);
        buf.put_slice(&body);
        let (result, allocated, _) = measured_decode(&FrameDecoder::new(CAP), &mut buf);
        assert!(
            matches!(result, Err(DecodeError::CountExceedsBody { .. })),
            "{result:?}"
        );
        assert!(
            allocated < 1024,
            "allocated {allocated} bytes before rejecting"
        );
    }
}
