//! Frames over QUIC streams: read whole [`Message`]s from a `RecvStream`,
//! write them (and extent batches without copying their payload) to a `SendStream`.

use bytes::BytesMut;
use ferry_protocol::{DecodeError, EncodeError, ExtentBatch, FrameDecoder, Message};

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    /// The peer sent bytes that are not a valid frame.
    #[error("malformed frame from peer: {0}")]
    Decode(#[from] DecodeError),
    /// A frame could not be encoded (a bug or an oversized batch).
    #[error("cannot encode frame: {0}")]
    Encode(#[from] EncodeError),
    /// Reading from the stream failed.
    #[error("reading stream: {0}")]
    Read(#[from] quinn::ReadError),
    /// Writing to the stream failed.
    #[error("writing stream: {0}")]
    Write(#[from] quinn::WriteError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the incomplete frame.
        buffered: usize,
    },
}

/// Reads frames from a QUIC receive stream.
pub struct FrameReader {
    stream: quinn::RecvStream,
    buf: BytesMut,
    decoder: FrameDecoder,
    bytes_read: u64,
}

impl FrameReader {
    /// Wraps `stream`; frames longer than `max_frame_len` are refused.
    pub fn new(stream: quinn::RecvStream, max_frame_len: usize) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            decoder: FrameDecoder::new(max_frame_len),
            bytes_read: 0,
        }
    }

    /// The next frame; `Ok(None)` when the peer finished the stream cleanly.
    pub async fn next(&mut self) -> Result<Option<Message>, FramingError> {
        loop {
            if let Some(message) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(message));
            }
            let want = self.decoder.bytes_needed(&self.buf)?.max(64 * 1024);
            match self.stream.read_chunk(want, true).await? {
                Some(chunk) => {
                    self.bytes_read += chunk.bytes.len() as u64;
                    if self.buf.is_empty() && chunk.bytes.len() >= want {
                        // Avoid a copy when one chunk holds whole frames.
                        self.buf = BytesMut::from(chunk.bytes);
                    } else {
                        self.buf.extend_from_slice(&chunk.bytes);
                    }
                }
                None if self.buf.is_empty() => return Ok(None),
                None => {
                    return Err(FramingError::Truncated {
                        buffered: self.buf.len(),
                    })
                }
            }
        }
    }

    /// Total bytes read from the stream so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Asks the peer to stop sending (e.g. after a protocol error).
    pub fn stop(&mut self) {
        let _ = self.stream.stop(quinn::VarInt::from_u32(1));
    }
}

/// Writes frames to a QUIC send stream.
pub struct FrameWriter {
    stream: quinn::SendStream,
    scratch: BytesMut,
    max_frame_len: usize,
    bytes_written: u64,
}

impl FrameWriter {
    /// Wraps `stream`.
    pub fn new(stream: quinn::SendStream, max_frame_len: usize) -> Self {
        Self {
            stream,
            scratch: BytesMut::with_capacity(64 * 1024),
            max_frame_len,
            bytes_written: 0,
        }
    }

    /// Writes one message.
    pub async fn send(&mut self, message: &Message) -> Result<(), FramingError> {
        self.scratch.clear();
        message.encode(&mut self.scratch, self.max_frame_len)?;
        self.bytes_written += self.scratch.len() as u64;
        self.stream.write_all(&self.scratch).await?;
        Ok(())
    }

    /// Writes an extent batch: the header is encoded, the payload is handed
    /// to QUIC as it is (no copy). Returns the frame's total length.
    pub async fn send_batch(&mut self, batch: &ExtentBatch) -> Result<u64, FramingError> {
        self.scratch.clear();
        batch.encode_header(&mut self.scratch, self.max_frame_len)?;
        let total = self.scratch.len() as u64 + batch.payload.len() as u64;
        self.stream.write_all(&self.scratch).await?;
        if !batch.payload.is_empty() {
            self.stream.write_chunk(batch.payload.clone()).await?;
        }
        self.bytes_written += total;
        Ok(total)
    }

    /// Length the frame of `batch` will have on the stream.
    pub fn batch_frame_len(batch: &ExtentBatch) -> u64 {
        batch.encoded_header_len() as u64 + batch.payload.len() as u64
    }

    /// Total frame bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Finishes the stream (no more frames).
    pub fn finish(&mut self) {
        let _ = self.stream.finish();
    }

    /// Waits until the peer has received everything (or the stream failed).
    pub async fn stopped(&mut self) {
        let _ = self.stream.stopped().await;
    }
}
