//! [`Reader`]: the [`Parser`] driven from any `std::io::Read` through one
//! fixed buffer, so a diff of any size is read in bounded memory.

use std::io::{self, Read};

use super::parser::{Event, ParseError, Parser};

/// Default read buffer: write payloads come out in pieces of at most this.
pub const DEFAULT_BUFFER: usize = 1 << 20;

/// One event plus, for [`Event::Data`], its bytes.
#[derive(Debug, Clone, Copy)]
pub struct Piece<'a> {
    /// The event.
    pub event: &'a Event,
    /// The payload of an [`Event::Data`]; empty otherwise.
    pub data: &'a [u8],
}

/// Why reading a diff failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The input could not be read.
    #[error("reading the diff stream at offset {offset}")]
    Io {
        /// Stream offset reached.
        offset: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The stream is malformed.
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// Pulls events from a `Read`; see [`Reader::next_piece`].
pub struct Reader<R> {
    inner: R,
    parser: Parser,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    current: Option<Event>,
}

impl<R: Read> Reader<R> {
    /// A reader with the default 1 MiB buffer.
    pub fn new(inner: R) -> Self {
        Self::with_buffer(inner, DEFAULT_BUFFER)
    }

    /// A reader with a `capacity`-byte buffer (at least 64 bytes).
    pub fn with_buffer(inner: R, capacity: usize) -> Self {
        Self {
            inner,
            parser: Parser::new(),
            buf: vec![0u8; capacity.max(64)],
            start: 0,
            end: 0,
            eof: false,
            current: None,
        }
    }

    /// The parser (format, position).
    pub fn parser(&self) -> &Parser {
        &self.parser
    }

    /// The next event, `Ok(None)` after [`Event::End`] once the input is
    /// exhausted (trailing bytes and truncation are errors).
    pub fn next_piece(&mut self) -> Result<Option<Piece<'_>>, ReadError> {
        loop {
            let step = self.parser.advance(&self.buf[self.start..self.end])?;
            let base = self.start;
            self.start += step.consumed;
            if let Some(event) = step.event {
                let data_range = match event {
                    Event::Data { len, .. } => base + step.consumed - len..base + step.consumed,
                    _ => 0..0,
                };
                self.current = Some(event);
                // Just stored above.
                let event = self.current.as_ref().expect("event stored above");
                return Ok(Some(Piece {
                    event,
                    data: &self.buf[data_range],
                }));
            }
            if self.eof {
                if self.parser.is_done() {
                    return Ok(None);
                }
                self.parser.finish()?;
            }
            // Need more input: compact, then read.
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let n = loop {
                match self.inner.read(&mut self.buf[self.end..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(source) => {
                        return Err(ReadError::Io {
                            offset: self.parser.position() + (self.end - self.start) as u64,
                            source,
                        })
                    }
                }
            };
            if n == 0 {
                self.eof = true;
                if self.parser.is_done() && self.start == self.end {
                    return Ok(None);
                }
            }
            self.end += n;
        }
    }

    /// Reads to the end of the stream, checking it, and returns the inner reader.
    pub fn drain(mut self) -> Result<R, ReadError> {
        while self.next_piece()?.is_some() {}
        Ok(self.inner)
    }
}
