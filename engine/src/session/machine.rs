//! The receiver's per-image step machine, sans I/O: one [`FrameMachine`]
//! per image stream takes the stream's frames in order and decides, for
//! each, what the standby does — stage a verified batch, skip a resend,
//! wait for a go-back-N resend, ask for a batch again (Nack) or refuse the
//! stream — and acknowledges only what [`FrameMachine::sync`] made durable.
//!
//! The async receiver (`receiver.rs`) owns the sockets, channels, rate
//! limit and fsync grouping and calls this machine for every decision; the
//! `receiver_frames` fuzz target and unit tests drive the very same machine
//! with sequences of frames and no sockets.

use ferry_protocol::{Epoch, ErrorCode, ExtentBatch, ExtentKind, ImageName, Message, Nack, SeqNo};

use crate::payload_codec::Decoder;
use crate::standby::{StagedBatch, StoreError};
use crate::standby_backend::EpochSink;

/// What one frame on an image stream led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The batch was verified and staged (not yet durable); `plain` data bytes.
    Staged {
        /// Its sequence number.
        seq: SeqNo,
        /// Plain bytes of its data extents.
        plain: u64,
    },
    /// A resend of a batch that is already staged: ignored.
    Duplicate(SeqNo),
    /// A batch past the next expected one (the sender goes back to the
    /// rejected batch and resends from there): ignored.
    AheadOfGap(SeqNo),
    /// The batch failed verification: ask for it again.
    Nack {
        /// The frame to send.
        nack: Nack,
        /// What the verification found (for the log).
        detail: String,
    },
}

/// Why the machine refuses a stream (the receiver sends it as an Error
/// frame and ends the stream).
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// A frame that does not belong here.
    #[error("{message}")]
    Refuse {
        /// Error code for the peer.
        code: ErrorCode,
        /// What was wrong.
        message: String,
    },
    /// The store failed or refused (the writer is poisoned: the stream ends).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The step machine of one image stream, after its OpenImage was accepted.
pub struct FrameMachine {
    writer: EpochSink,
    decoder: Decoder,
    expected: SeqNo,
}

impl FrameMachine {
    /// Starts from `writer` (a freshly opened or resumed epoch): the next
    /// batch expected is the one after its durable prefix.
    pub fn new(writer: EpochSink) -> Self {
        let expected = writer.durable_seq().next();
        Self {
            writer,
            decoder: Decoder::new(),
            expected,
        }
    }

    /// The image this stream writes.
    pub fn image(&self) -> &ImageName {
        self.writer.image()
    }

    /// The epoch this stream writes.
    pub fn epoch(&self) -> Epoch {
        self.writer.epoch()
    }

    /// The next batch the machine will stage.
    pub fn expected(&self) -> SeqNo {
        self.expected
    }

    /// Plain bytes a batch's data extents declare (for rate limiting before
    /// the batch is decoded).
    pub fn declared_plain(batch: &ExtentBatch) -> u64 {
        batch
            .extents
            .iter()
            .filter(|e| e.kind == ExtentKind::Data)
            .map(|e| u64::from(e.length))
            .sum()
    }

    /// Refuses anything but an ExtentBatch of `image` epoch `epoch` (the
    /// stream's), which it returns.
    pub fn accept_frame(
        image: &ImageName,
        epoch: Epoch,
        message: Message,
    ) -> Result<ExtentBatch, MachineError> {
        match message {
            Message::ExtentBatch(batch) => {
                if batch.image != *image || batch.epoch != epoch {
                    return Err(MachineError::Refuse {
                        code: ErrorCode::OutOfOrder,
                        message: format!(
                            "batch for {} epoch {} on the stream of {image} epoch {epoch}",
                            batch.image, batch.epoch
                        ),
                    });
                }
                Ok(batch)
            }
            other => Err(MachineError::Refuse {
                code: ErrorCode::OutOfOrder,
                message: format!(
                    "unexpected {} on an image stream",
                    other.frame_type().name()
                ),
            }),
        }
    }

    /// One batch, in stream order: go-back-N sequencing, verification
    /// (CRC-32C, zstd bounds, BLAKE3), then staging. A store error poisons
    /// the writer and ends the stream; a verification failure is a Nack.
    pub fn on_batch(&mut self, batch: &ExtentBatch) -> Result<Step, MachineError> {
        if batch.seq < self.expected {
            return Ok(Step::Duplicate(batch.seq));
        }
        if batch.seq > self.expected {
            return Ok(Step::AheadOfGap(batch.seq));
        }
        match self.decoder.decode(batch) {
            Ok(extents) => {
                let plain = Self::declared_plain(batch);
                self.writer.stage(StagedBatch {
                    seq: batch.seq,
                    scan_end: batch.scan_end,
                    extents,
                })?;
                self.expected = self.expected.next();
                Ok(Step::Staged {
                    seq: batch.seq,
                    plain,
                })
            }
            Err(error) => Ok(Step::Nack {
                nack: Nack {
                    image: self.writer.image().clone(),
                    epoch: self.writer.epoch(),
                    seq: batch.seq,
                    reason: error.nack_reason(),
                },
                detail: error.to_string(),
            }),
        }
    }

    /// Makes every staged batch durable; returns the highest durable one
    /// (the only sequence number that may be acknowledged).
    pub fn sync(&mut self) -> Result<SeqNo, MachineError> {
        Ok(self.writer.sync()?)
    }

    /// Ends the stream: the writer, to be parked for the Commit.
    pub fn into_writer(self) -> EpochSink {
        self.writer
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};
    use ferry_protocol::{NackReason, OpenImage};

    use super::*;
    use crate::payload_codec::{Encoder, PlainExtent};
    use crate::standby::{StandbyStore, StoreConfig};

    fn batch(image: &ImageName, seq: u64, offset: u64, fill: u8) -> ExtentBatch {
        let chunk = Encoder::new(1)
            .encode(
                offset,
                offset + 4096,
                &[PlainExtent {
                    offset,
                    length: 4096,
                    kind: ExtentKind::Data,
                    data: Some(Bytes::from(vec![fill; 4096])),
                }],
            )
            .expect("encode");
        ExtentBatch {
            image: image.clone(),
            epoch: Epoch(1),
            seq: SeqNo(seq),
            scan_start: offset,
            scan_end: offset + 4096,
            payload_crc32c: chunk.payload_crc32c,
            plain_blake3: chunk.plain_blake3,
            extents: chunk.extents,
            payload: chunk.payload,
        }
    }

    #[test]
    fn go_back_n_stages_only_the_next_verified_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StandbyStore::open(dir.path(), StoreConfig::default()).expect("store");
        let image = ImageName::new("m").expect("name");
        let writer = store
            .open_epoch(&OpenImage {
                image: image.clone(),
                size: 65536,
                block_size: 4096,
                epoch: Epoch(1),
                base_epoch: Epoch(0),
            })
            .expect("open");
        let mut m = FrameMachine::new(EpochSink::Files(writer));
        let b1 = batch(&image, 1, 0, 1);
        assert_eq!(
            m.on_batch(&b1).expect("b1"),
            Step::Staged {
                seq: SeqNo(1),
                plain: 4096
            }
        );
        // A damaged batch 2 is asked for again; 3 behind it waits; a resend
        // of 1 is ignored.
        let mut damaged = batch(&image, 2, 4096, 2);
        let mut payload = BytesMut::from(&damaged.payload[..]);
        payload[0] ^= 1;
        damaged.payload = payload.freeze();
        match m.on_batch(&damaged).expect("damaged") {
            Step::Nack { nack, .. } => {
                assert_eq!(nack.seq, SeqNo(2));
                assert_eq!(nack.reason, NackReason::PayloadCrc);
            }
            other => panic!("expected a Nack, got {other:?}"),
        }
        let b3 = batch(&image, 3, 8192, 3);
        assert_eq!(m.on_batch(&b3).expect("b3"), Step::AheadOfGap(SeqNo(3)));
        assert_eq!(
            m.on_batch(&b1).expect("b1 again"),
            Step::Duplicate(SeqNo(1))
        );
        assert_eq!(m.expected(), SeqNo(2));
        // The resend is staged, then 3; only a sync makes them acknowledgeable.
        assert!(matches!(
            m.on_batch(&batch(&image, 2, 4096, 2)).expect("b2"),
            Step::Staged { .. }
        ));
        assert!(matches!(m.on_batch(&b3).expect("b3"), Step::Staged { .. }));
        assert_eq!(m.sync().expect("sync"), SeqNo(3));
        // A frame for another image, or not a batch, ends the stream.
        let other = ImageName::new("other").expect("name");
        assert!(FrameMachine::accept_frame(
            &image,
            Epoch(1),
            Message::ExtentBatch(batch(&other, 4, 12288, 4))
        )
        .is_err());
        assert!(FrameMachine::accept_frame(
            &image,
            Epoch(2),
            Message::ExtentBatch(batch(&image, 4, 12288, 4))
        )
        .is_err());
    }
}
