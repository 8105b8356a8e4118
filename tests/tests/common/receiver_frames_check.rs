//! Property of the `receiver_frames` fuzz target, shared with the corpus
//! replay in `tests/tests/fuzz_corpus.rs`: the receiver's step machine
//! (`ferry_engine::session::machine::FrameMachine`) over a real file-backed
//! standby store, driven by a sequence of operations read from the input —
//! well-formed batches (valid CRC/BLAKE3, so they get past verification),
//! the same batches with a flipped byte, resends, gaps, raw frame bytes
//! through the frame decoder, fsyncs, stream failures with a resume, and
//! commits (some with impossible sizes).
//!
//! Checked after every step: nothing panics; only contiguous, verified
//! batches are staged; the durable sequence number never goes backwards
//! and a resumed epoch starts right after it; a commit either fails and
//! leaves the store reopenable at the previous point, or succeeds and the
//! standby image equals a model of every staged extent, byte for byte.

use bytes::{Bytes, BytesMut};
use ferry_engine::payload_codec::{DecodedExtent, Decoder, Encoder, PlainExtent};
use ferry_engine::session::machine::{FrameMachine, MachineError, Step};
use ferry_engine::standby::{RecoveryPointMeta, StandbyStore, StoreConfig, StoreError};
use ferry_engine::standby_backend::{EpochSink, Standby};
use ferry_protocol::{
    Epoch, ExtentBatch, ExtentKind, FrameDecoder, ImageName, Message, OpenImage, RecoveryPointId,
    SeqNo, DEFAULT_MAX_FRAME_LEN,
};

/// Reads the fuzz input as a stream of small numbers (zeros once exhausted).
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
    fn done(&self) -> bool {
        self.data.is_empty()
    }
}

const BLOCK: u64 = 512;

struct Run {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    image: ImageName,
    size: u64,
    /// The committed image (what the store must hold).
    committed: Vec<u8>,
    committed_epoch: u64,
    epoch: u64,
    /// Batches staged in the current epoch, in order: scan end and the
    /// extents as the standby decoded them.
    staged: Vec<(u64, Vec<DecodedExtent>)>,
    durable: u64,
    /// Where the next generated batch may start (the high-water mark).
    cursor: u64,
    next_rp: u64,
    encoder: Encoder,
}

impl Run {
    fn store(&self) -> Standby {
        StandbyStore::open(&self.path, StoreConfig::default())
            .expect("the standby store opens")
            .into()
    }

    fn open(&self, store: &Standby) -> FrameMachine {
        let open = OpenImage {
            image: self.image.clone(),
            size: self.size,
            block_size: BLOCK as u32,
            epoch: Epoch(self.epoch),
            base_epoch: Epoch(self.committed_epoch),
        };
        let writer: EpochSink = store.open_epoch(&open).expect("the epoch opens");
        assert_eq!(
            writer.durable_seq(),
            SeqNo(self.durable),
            "a resumed epoch starts right after its durable prefix"
        );
        FrameMachine::new(writer)
    }

    /// The image as the staged batches make it.
    fn model(&self, upto: usize) -> Vec<u8> {
        let mut m = self.committed.clone();
        m.resize(self.size as usize, 0);
        for (_, batch) in &self.staged[..upto] {
            for e in batch {
                let (s, end) = (e.offset as usize, e.offset as usize + e.length as usize);
                match &e.data {
                    Some(d) => m[s..end].copy_from_slice(d),
                    None => m[s..end].fill(0),
                }
            }
        }
        m
    }

    /// A well-formed batch of 1..=3 extents at or after the cursor.
    fn batch(&mut self, input: &mut Input, seq: u64) -> Option<ExtentBatch> {
        let mut extents = Vec::new();
        let mut at = self.cursor;
        for _ in 0..=(input.u8() % 3) {
            let gap = u64::from(input.u8() % 4) * BLOCK;
            let len = u64::from(input.u8() % 8 + 1) * BLOCK;
            let offset = at + gap;
            if offset + len > self.size {
                break;
            }
            let kind = match input.u8() % 4 {
                0 => ExtentKind::Zero,
                1 => ExtentKind::Discard,
                _ => ExtentKind::Data,
            };
            let data = (kind == ExtentKind::Data).then(|| {
                let fill = input.u8();
                // Half the data compresses (runs), half does not.
                Bytes::from(
                    (0..len)
                        .map(|i| {
                            if fill & 1 == 0 {
                                fill
                            } else {
                                (i as u8) ^ fill
                            }
                        })
                        .collect::<Vec<u8>>(),
                )
            });
            extents.push(PlainExtent {
                offset,
                length: len as u32,
                kind,
                data,
            });
            at = offset + len;
        }
        let scan_end = at.max(self.cursor);
        let chunk = self.encoder.encode(self.cursor, scan_end, &extents).ok()?;
        let batch = ExtentBatch {
            image: self.image.clone(),
            epoch: Epoch(self.epoch),
            seq: SeqNo(seq),
            scan_start: self.cursor,
            scan_end,
            payload_crc32c: chunk.payload_crc32c,
            plain_blake3: chunk.plain_blake3,
            extents: chunk.extents,
            payload: chunk.payload,
        };
        Some(batch)
    }

    /// The next batch with one byte flipped somewhere in its frame, through
    /// the frame decoder and the machine.
    fn feed_flipped(
        &mut self,
        m: &mut FrameMachine,
        input: &mut Input,
    ) -> Result<(), MachineError> {
        let seq = m.expected().get();
        match self.batch(input, seq) {
            Some(batch) => {
                let mut buf = BytesMut::new();
                Message::ExtentBatch(batch.clone())
                    .encode(&mut buf, DEFAULT_MAX_FRAME_LEN)
                    .expect("a generated batch encodes");
                let at = usize::from(input.u16()) % buf.len();
                let flip = input.u8() | 1;
                buf[at] ^= flip;
                match FrameDecoder::new(DEFAULT_MAX_FRAME_LEN).decode(&mut buf) {
                    Ok(Some(message)) => {
                        match FrameMachine::accept_frame(&self.image, Epoch(self.epoch), message) {
                            Ok(damaged) => {
                                let intact = damaged == batch;
                                self.feed(m, &damaged, intact)
                            }
                            Err(e) => Err(e),
                        }
                    }
                    // Undecodable or cut short: the frame layer ends the stream.
                    Ok(None) | Err(_) => Err(MachineError::Refuse {
                        code: ferry_protocol::ErrorCode::Malformed,
                        message: "undecodable frame".into(),
                    }),
                }
            }
            None => Ok(()),
        }
    }

    /// Commits the stream's epoch (after the end of the stream; with an
    /// impossible size when `absurd`, which must be refused): the committed
    /// image must equal the model and the store must reopen either way.
    /// Returns the reopened store.
    fn commit(&mut self, m: FrameMachine, mut store: Standby, absurd: bool) -> Standby {
        let mut writer = m.into_writer();
        let durable = writer.sync().expect("fsync before the commit");
        self.durable = durable.get();
        let commit_size = if absurd { u64::MAX } else { self.size };
        match writer.seal(durable, commit_size) {
            Ok(sealed) => {
                assert!(!absurd, "an impossible size was sealed");
                let meta = RecoveryPointMeta {
                    id: RecoveryPointId(self.next_rp),
                    created_unix_ms: self.next_rp,
                    fuzzy: false,
                };
                store
                    .commit(meta, vec![sealed])
                    .expect("a sealed epoch commits");
                self.next_rp += 1;
                self.committed = self.model(self.staged.len());
                self.committed_epoch = self.epoch;
                self.epoch += 1;
                self.staged.clear();
                self.durable = 0;
                self.cursor = 0;
                drop(store);
                store = self.store();
                let bytes = std::fs::read(self.path.join("images").join("fuzz.raw"))
                    .expect("the committed image exists");
                assert!(
                    bytes == self.committed,
                    "the committed image differs from the staged extents"
                );
            }
            Err(StoreError::InvalidRequest { .. }) if absurd => {
                // Refused; the store must still reopen.
                drop(store);
                store = self.store();
            }
            Err(e) => panic!("sealing a durable epoch failed: {e}"),
        }
        store
    }

    /// Applies one step's outcome to the model; `Err` ends the stream.
    /// `intact`: the batch is exactly as generated (it must verify).
    fn feed(
        &mut self,
        machine: &mut FrameMachine,
        batch: &ExtentBatch,
        intact: bool,
    ) -> Result<(), MachineError> {
        let expected = machine.expected();
        match machine.on_batch(batch)? {
            Step::Staged { seq, .. } => {
                assert_eq!(seq, expected, "only the next batch is staged");
                // What was staged is what the batch decodes to (a damaged
                // header outside the checksums — offsets, scan range — is
                // QUIC's to catch, not the standby's).
                let extents = Decoder::new()
                    .decode(batch)
                    .expect("a staged batch decodes again");
                self.cursor = batch.scan_end;
                self.staged.push((batch.scan_end, extents));
            }
            Step::Duplicate(seq) => assert!(seq < expected),
            Step::AheadOfGap(seq) => assert!(seq > expected),
            Step::Nack { nack, detail } => {
                assert_eq!(nack.seq, expected);
                assert!(!intact, "an intact batch was rejected: {detail}");
            }
        }
        Ok(())
    }
}

/// Checks one input.
pub fn check(data: &[u8]) {
    let mut input = Input { data };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let size = u64::from(input.u8() % 64 + 1) * 4 * BLOCK;
    let mut run = Run {
        _dir: dir,
        path,
        image: ImageName::new("fuzz").expect("valid name"),
        size,
        committed: Vec::new(),
        committed_epoch: 0,
        epoch: 1,
        staged: Vec::new(),
        durable: 0,
        cursor: 0,
        next_rp: 1,
        encoder: Encoder::new(1),
    };
    let mut store = run.store();
    let mut machine = Some(run.open(&store));
    let mut steps = 0;
    while !input.done() && steps < 64 {
        steps += 1;
        let Some(m) = machine.as_mut() else {
            // The stream ended: the primary reconnects and resumes.
            machine = Some(run.open(&store));
            continue;
        };
        let outcome: Result<(), MachineError> = match input.u8() % 8 {
            // The next batch, intact.
            0..=2 => {
                let seq = m.expected().get();
                match run.batch(&mut input, seq) {
                    Some(batch) => run.feed(m, &batch, true),
                    None => Ok(()),
                }
            }
            // The next batch with one byte flipped somewhere in its frame.
            3 => run.feed_flipped(m, &mut input),
            // A resend of an older batch, or a batch past a gap.
            4 => {
                let delta = u64::from(input.u8() % 4);
                let seq = if input.u8().is_multiple_of(2) {
                    m.expected().get().saturating_sub(delta + 1).max(1)
                } else {
                    m.expected().get() + delta + 1
                };
                match run.batch(&mut input, seq) {
                    Some(batch) if batch.seq != m.expected() => run.feed(m, &batch, true),
                    _ => Ok(()),
                }
            }
            // Raw bytes through the frame decoder, then the machine.
            5 => {
                let n = usize::from(input.u8());
                let mut buf = BytesMut::from(input.bytes(n));
                match FrameDecoder::new(DEFAULT_MAX_FRAME_LEN).decode(&mut buf) {
                    Ok(Some(message)) => {
                        match FrameMachine::accept_frame(&run.image, Epoch(run.epoch), message) {
                            Ok(batch) => run.feed(m, &batch, false),
                            Err(e) => Err(e),
                        }
                    }
                    _ => Ok(()),
                }
            }
            // fsync: everything staged becomes durable and acknowledgeable.
            6 => m.sync().map(|durable| {
                assert!(
                    durable.get() >= run.durable,
                    "the durable sequence went backwards"
                );
                assert_eq!(durable.get(), run.staged.len() as u64);
                run.durable = durable.get();
            }),
            // Commit (after the end of the stream), sometimes with an
            // impossible size.
            _ => {
                let absurd = input.u8().is_multiple_of(4);
                let m = machine.take().expect("checked above");
                store = run.commit(m, store, absurd);
                // An uncommitted epoch resumes from its durable prefix.
                run.staged.truncate(run.durable as usize);
                run.cursor = resume_cursor(&run);
                Ok(())
            }
        };
        if outcome.is_err() {
            // The receiver ends the stream; unsynced batches are forgotten.
            machine = None;
            run.staged.truncate(run.durable as usize);
            run.cursor = resume_cursor(&run);
        }
    }
}

/// Where a resumed epoch continues: the scan end of its last durable batch.
fn resume_cursor(run: &Run) -> u64 {
    run.staged.last().map_or(0, |(scan_end, _)| *scan_end)
}
