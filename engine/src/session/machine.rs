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

use crate::codec::Decoder;
use crate::standby::{EpochSink, StagedBatch, StoreError};

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
