//! Sans-IO streaming parser of `rbd diff v1`, `rbd diff v2` and
//! `rbd image v2` streams.
//!
//! Feed it any slices of the stream with [`Parser::advance`]; each call
//! consumes some bytes and yields at most one [`Event`]. Write payloads are
//! never buffered: they come out as [`Event::Data`] pieces that refer to the
//! bytes just consumed, so memory stays bounded (the only buffer holds one
//! fixed-size field, a snapshot name ≤ 4 KiB or a metadata record ≤ 1 MiB)
//! whatever the image size. Every malformed input is a [`ParseError`] with
//! the byte offset of the offending record; the parser never panics.

mod steps;

use super::wire::{
    tag, BANNER_DIFF_V1, BANNER_DIFF_V2, BANNER_IMAGE_DIFFS_V2, BANNER_IMAGE_V2, MAX_META_RECORD,
    MAX_SNAP_NAME,
};

/// Which kind of stream the banner announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `rbd diff v1` (`rbd export-diff`).
    DiffV1,
    /// One `rbd diff v2` (v2 framing: every record carries its length).
    DiffV2,
    /// `rbd image v2` (`rbd export --export-format 2`): properties, then diffs.
    ImageV2,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::DiffV1 => "rbd diff v1",
            Format::DiffV2 => "rbd diff v2",
            Format::ImageV2 => "rbd image v2",
        })
    }
}

/// A property record from the header of an `rbd image v2` stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageProperty {
    /// Object size as a power of two (`O`).
    Order(u64),
    /// Feature bits (`T`).
    Features(u64),
    /// Stripe unit in bytes (`U`).
    StripeUnit(u64),
    /// Stripe count (`C`).
    StripeCount(u64),
    /// One image metadata pair (`M`).
    Meta {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
}

/// One thing the parser recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The banner; always the first event.
    Banner(Format),
    /// An image property (image v2 only).
    ImageProperty(ImageProperty),
    /// End of the image properties (image v2 only).
    ImagePropertiesEnd,
    /// Number of diffs that follow (image v2 only).
    DiffCount(u64),
    /// A diff starts (index 0 for a standalone diff).
    DiffBegin {
        /// Position of this diff in the stream, from 0.
        index: u64,
    },
    /// `f`: the snapshot the diff starts from.
    FromSnap(String),
    /// `t`: the snapshot the diff ends at.
    ToSnap(String),
    /// `p`: whether the to-snapshot is protected (v2 only).
    Protected(bool),
    /// `s`: the image size at the end of the diff.
    Size(u64),
    /// `w` header: `length` bytes of data for `offset` follow as
    /// [`Event::Data`] pieces.
    Write {
        /// Image offset.
        offset: u64,
        /// Payload length.
        length: u64,
    },
    /// A piece of a write's payload: the last `len` bytes consumed by the
    /// call that returned it (see [`Step::data`]).
    Data {
        /// Image offset of the first byte of this piece.
        offset: u64,
        /// Number of bytes.
        len: usize,
    },
    /// `z`: a range that reads as zeroes (discarded) after the diff.
    Zero {
        /// Image offset.
        offset: u64,
        /// Length.
        length: u64,
    },
    /// A v2 record with a tag this parser does not know; its body was
    /// skipped (what `rbd` does too).
    Unknown {
        /// The tag byte.
        tag: u8,
        /// Its declared body length.
        length: u64,
    },
    /// `e`: the current diff ended.
    DiffEnd,
    /// The whole stream ended; no further bytes are allowed.
    End,
}

/// Result of one [`Parser::advance`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input consumed.
    pub consumed: usize,
    /// What was recognised, if anything. `None` with `consumed ==
    /// input.len()` means "feed more bytes".
    pub event: Option<Event>,
}

impl Step {
    /// The payload of an [`Event::Data`] step, given the input that was
    /// passed to `advance`; empty for every other step.
    pub fn data<'a>(&self, input: &'a [u8]) -> &'a [u8] {
        match self.event {
            Some(Event::Data { len, .. }) => &input[self.consumed - len..self.consumed],
            _ => &[],
        }
    }
}

/// Why a stream was rejected. Offsets are stream byte offsets of the record
/// (or field) at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The stream does not start with a known banner.
    #[error(
        "bad banner {found:?} at offset 0: expected \"rbd diff v1\\n\", \"rbd diff v2\\n\" or \"rbd image v2\\n\""
    )]
    BadBanner {
        /// The bytes found (escaped).
        found: String,
    },
    /// A banner inside an image v2 stream is wrong.
    #[error("bad banner {found:?} at offset {offset}: expected {expected:?}")]
    BadInnerBanner {
        /// Where it starts.
        offset: u64,
        /// The banner required there.
        expected: &'static str,
        /// The bytes found (escaped).
        found: String,
    },
    /// The input ended inside a record or before the end record.
    #[error("truncated stream: input ends at offset {offset} while reading {expected}")]
    Truncated {
        /// Stream length.
        offset: u64,
        /// What was being read.
        expected: &'static str,
    },
    /// A tag byte that cannot be skipped (v1 has no record lengths).
    #[error("unknown record tag {tag:#04x} ({}) at offset {offset} in a {format} stream", printable(*tag))]
    UnknownTag {
        /// Offset of the tag byte.
        offset: u64,
        /// The tag.
        tag: u8,
        /// Stream format.
        format: Format,
    },
    /// A v2 record declares a length that does not match its contents.
    #[error("record '{}' at offset {offset} declares length {declared}, expected {expected}", printable(*tag))]
    BadLength {
        /// Offset of the tag byte.
        offset: u64,
        /// The tag.
        tag: u8,
        /// Declared length.
        declared: u64,
        /// Length its contents need.
        expected: u64,
    },
    /// A write or zero range that ends past the image size the diff declared.
    #[error("{what} record at offset {offset} covers {start}..{end}, past the declared image size {size}")]
    PastEnd {
        /// Offset of the tag byte.
        offset: u64,
        /// "write" or "zero".
        what: &'static str,
        /// Range start.
        start: u64,
        /// Range end (saturated at `u64::MAX` on overflow).
        end: u64,
        /// Declared size.
        size: u64,
    },
    /// A write or zero record before the size record.
    #[error("{what} record at offset {offset} comes before the image size record")]
    DataBeforeSize {
        /// Offset of the tag byte.
        offset: u64,
        /// "write" or "zero".
        what: &'static str,
    },
    /// A metadata record after data records (metadata must come first).
    #[error("{what} record at offset {offset} follows data records; metadata must come first")]
    MetadataAfterData {
        /// Offset of the tag byte.
        offset: u64,
        /// Record name.
        what: &'static str,
    },
    /// The same metadata record twice in one diff.
    #[error("duplicate {what} record at offset {offset}")]
    Duplicate {
        /// Offset of the tag byte.
        offset: u64,
        /// Record name.
        what: &'static str,
    },
    /// A snapshot name longer than [`MAX_SNAP_NAME`].
    #[error("snapshot name at offset {offset} is {len} bytes long (limit {MAX_SNAP_NAME})")]
    NameTooLong {
        /// Offset of the tag byte.
        offset: u64,
        /// Declared length.
        len: u64,
    },
    /// A snapshot name or metadata string that is not UTF-8.
    #[error("{what} at offset {offset} is not valid UTF-8")]
    NotUtf8 {
        /// Offset of the tag byte.
        offset: u64,
        /// What it was.
        what: &'static str,
    },
    /// A malformed image metadata (`M`) record.
    #[error("image metadata record at offset {offset}: {reason}")]
    BadMeta {
        /// Offset of the tag byte.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// Bytes after the end of the stream.
    #[error("unexpected bytes at offset {offset}, after the end of the stream")]
    TrailingBytes {
        /// Where they start.
        offset: u64,
    },
}

fn printable(tag: u8) -> char {
    if tag.is_ascii_graphic() {
        tag as char
    } else {
        '?'
    }
}

fn escape(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

fn le64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(word)
}

fn le32(bytes: &[u8]) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(word)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Banner,
    PropTag,
    PropLen { tag: u8 },
    PropBody { tag: u8, len: usize },
    Skip { remaining: u64 },
    DiffsBanner,
    DiffCount,
    DiffBanner,
    StartDiff,
    Tag,
    RecLen { tag: u8 },
    NameLen { tag: u8, declared: Option<u64> },
    Name { tag: u8, len: usize },
    Fixed { tag: u8, declared: Option<u64> },
    Data { offset: u64, remaining: u64 },
    AfterDiff,
    Done,
}

/// What one step of `Parser::run` decided.
enum Flow {
    /// The state changed; run the next step.
    Continue,
    /// Return this from `advance`: an event, or `None` for "need more input".
    Yield(Option<Event>),
}

/// Per-diff bookkeeping for the ordering and bounds rules.
#[derive(Debug, Clone, Default)]
struct DiffRules {
    size: Option<u64>,
    from: bool,
    to: bool,
    protected: bool,
    data_seen: bool,
}

/// The streaming parser; see the module docs.
#[derive(Debug, Clone)]
pub struct Parser {
    state: State,
    /// Stream offset of the next byte to consume.
    pos: u64,
    /// Stream offset of the record being parsed (its tag byte).
    record: u64,
    scratch: Vec<u8>,
    format: Option<Format>,
    /// After a Skip: where to go next.
    after_skip: State,
    diff_index: u64,
    diff_total: u64,
    rules: DiffRules,
    failed: Option<ParseError>,
}

impl Default for Parser {
    fn default() -> Self {
        Self::new()
    }
}

impl Parser {
    /// A parser expecting any of the three banners.
    pub fn new() -> Self {
        Self {
            state: State::Banner,
            pos: 0,
            record: 0,
            scratch: Vec::new(),
            format: None,
            after_skip: State::Tag,
            diff_index: 0,
            diff_total: 1,
            rules: DiffRules::default(),
            failed: None,
        }
    }

    /// The format the banner announced, once it has been read.
    pub fn format(&self) -> Option<Format> {
        self.format
    }

    /// Stream bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Whether the end of the stream has been parsed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Call at end of input: `Ok` only when the stream ended properly.
    pub fn finish(&self) -> Result<(), ParseError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.state == State::Done {
            return Ok(());
        }
        Err(ParseError::Truncated {
            offset: self.pos,
            expected: self.expecting(),
        })
    }

    fn expecting(&self) -> &'static str {
        match self.state {
            State::Banner => "the banner",
            State::PropTag | State::PropLen { .. } | State::PropBody { .. } => {
                "an image property record"
            }
            State::Skip { .. } => "the body of an unknown record",
            State::DiffsBanner => "the \"rbd image diffs v2\" banner",
            State::DiffCount => "the diff count",
            State::DiffBanner | State::StartDiff => "the next diff",
            State::Tag | State::AfterDiff => "the next record (no end record 'e' yet)",
            State::RecLen { .. } => "a record length",
            State::NameLen { .. } | State::Name { .. } => "a snapshot name",
            State::Fixed { .. } => "a record body",
            State::Data { .. } => "the data of a write record",
            State::Done => "nothing",
        }
    }

    /// Consumes bytes from `input` until one event is recognised or the
    /// input is used up. After an error every further call returns it again.
    pub fn advance(&mut self, input: &[u8]) -> Result<Step, ParseError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut at = 0usize;
        match self.run(input, &mut at) {
            Ok(event) => Ok(Step {
                consumed: at,
                event,
            }),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Moves bytes into `scratch` until it holds `need`; true when it does.
    fn fill(&mut self, input: &[u8], at: &mut usize, need: usize) -> bool {
        let missing = need.saturating_sub(self.scratch.len());
        let take = missing.min(input.len() - *at);
        self.scratch.extend_from_slice(&input[*at..*at + take]);
        *at += take;
        self.pos += take as u64;
        self.scratch.len() >= need
    }

    /// A little-endian u64 from the stream (the 8-byte lengths and counts),
    /// once all 8 bytes have arrived; `scratch` is left empty.
    fn take_le64(&mut self, input: &[u8], at: &mut usize) -> Option<u64> {
        if !self.fill(input, at, 8) {
            return None;
        }
        let value = le64(&self.scratch);
        self.scratch.clear();
        Some(value)
    }

    fn run(&mut self, input: &[u8], at: &mut usize) -> Result<Option<Event>, ParseError> {
        loop {
            let flow = match self.state {
                State::Done => self.step_done(input, at)?,
                State::Banner => self.step_banner(input, at)?,
                State::PropTag => self.step_prop_tag(input, at)?,
                State::PropLen { tag: t } => self.step_prop_len(input, at, t)?,
                State::PropBody { tag: t, len } => self.step_prop_body(input, at, t, len)?,
                State::Skip { remaining } => self.step_skip(input, at, remaining)?,
                State::DiffsBanner => self.step_diffs_banner(input, at)?,
                State::DiffCount => self.step_diff_count(input, at)?,
                State::AfterDiff => self.step_after_diff()?,
                State::DiffBanner => self.step_diff_banner(input, at)?,
                State::StartDiff => self.step_start_diff()?,
                State::Tag => self.step_tag(input, at)?,
                State::RecLen { tag: t } => self.step_rec_len(input, at, t)?,
                State::NameLen { tag: t, declared } => {
                    self.step_name_len(input, at, t, declared)?
                }
                State::Name { tag: t, len } => self.step_name(input, at, t, len)?,
                State::Fixed { tag: t, declared } => self.step_fixed(input, at, t, declared)?,
                State::Data { offset, remaining } => {
                    self.step_data(input, at, offset, remaining)?
                }
            };
            if let Flow::Yield(event) = flow {
                return Ok(event);
            }
        }
    }

    /// Reads a banner inside an image v2 stream byte by byte, so a wrong
    /// byte fails at once (and the error does not depend on chunking).
    /// True once the whole banner has been read.
    fn inner_banner(
        &mut self,
        input: &[u8],
        at: &mut usize,
        banner: &[u8],
        expected: &'static str,
    ) -> Result<bool, ParseError> {
        while self.scratch.len() < banner.len() {
            if *at == input.len() {
                return Ok(false);
            }
            self.scratch.push(input[*at]);
            *at += 1;
            self.pos += 1;
            if !banner.starts_with(&self.scratch) {
                return Err(ParseError::BadInnerBanner {
                    offset: self.pos - self.scratch.len() as u64,
                    expected,
                    found: escape(&self.scratch),
                });
            }
        }
        self.scratch.clear();
        Ok(true)
    }

    /// Checks the ordering rules for a known diff record and picks the state
    /// that reads its body.
    fn body_state(&mut self, t: u8, declared: Option<u64>) -> Result<State, ParseError> {
        let offset = self.record;
        let meta = |what: &'static str, seen: &mut bool, data_seen: bool| {
            if data_seen {
                return Err(ParseError::MetadataAfterData { offset, what });
            }
            if *seen {
                return Err(ParseError::Duplicate { offset, what });
            }
            *seen = true;
            Ok(())
        };
        let rules = &mut self.rules;
        match t {
            tag::FROM_SNAP => {
                meta("from-snap", &mut rules.from, rules.data_seen)?;
                Ok(State::NameLen { tag: t, declared })
            }
            tag::TO_SNAP => {
                meta("to-snap", &mut rules.to, rules.data_seen)?;
                Ok(State::NameLen { tag: t, declared })
            }
            tag::PROTECTED => {
                meta("protected", &mut rules.protected, rules.data_seen)?;
                if let Some(d) = declared {
                    // rbd 16.2 declares 8 but writes one byte; later
                    // releases declare 1.
                    if d != 1 && d != 8 {
                        return Err(ParseError::BadLength {
                            offset,
                            tag: t,
                            declared: d,
                            expected: 1,
                        });
                    }
                }
                Ok(State::Fixed { tag: t, declared })
            }
            tag::SIZE => {
                let mut seen = rules.size.is_some();
                meta("size", &mut seen, rules.data_seen)?;
                if let Some(d) = declared {
                    if d != 8 {
                        return Err(ParseError::BadLength {
                            offset,
                            tag: t,
                            declared: d,
                            expected: 8,
                        });
                    }
                }
                Ok(State::Fixed { tag: t, declared })
            }
            _ => {
                let what = if t == tag::WRITE { "write" } else { "zero" };
                if rules.size.is_none() {
                    return Err(ParseError::DataBeforeSize { offset, what });
                }
                rules.data_seen = true;
                if t == tag::ZERO {
                    if let Some(d) = declared {
                        if d != 16 {
                            return Err(ParseError::BadLength {
                                offset,
                                tag: t,
                                declared: d,
                                expected: 16,
                            });
                        }
                    }
                }
                Ok(State::Fixed { tag: t, declared })
            }
        }
    }

    /// Decodes a complete fixed-size body (in `scratch`).
    fn fixed_record(&mut self, t: u8, declared: Option<u64>) -> Result<Event, ParseError> {
        let offset = self.record;
        match t {
            tag::SIZE => {
                let size = le64(&self.scratch);
                self.rules.size = Some(size);
                self.state = State::Tag;
                Ok(Event::Size(size))
            }
            tag::PROTECTED => {
                self.state = State::Tag;
                Ok(Event::Protected(self.scratch[0] != 0))
            }
            _ => {
                let start = le64(&self.scratch[..8]);
                let length = le64(&self.scratch[8..16]);
                let what = if t == tag::WRITE { "write" } else { "zero" };
                // body_state only lets data records through once a size is known.
                let size = self.rules.size.unwrap_or(0);
                let end = start.checked_add(length);
                if end.is_none_or(|e| e > size) {
                    return Err(ParseError::PastEnd {
                        offset,
                        what,
                        start,
                        end: end.unwrap_or(u64::MAX),
                        size,
                    });
                }
                if t == tag::WRITE {
                    if let Some(d) = declared {
                        let expected = length.saturating_add(16);
                        if d != expected {
                            return Err(ParseError::BadLength {
                                offset,
                                tag: t,
                                declared: d,
                                expected,
                            });
                        }
                    }
                    self.state = State::Data {
                        offset: start,
                        remaining: length,
                    };
                    Ok(Event::Write {
                        offset: start,
                        length,
                    })
                } else {
                    self.state = State::Tag;
                    Ok(Event::Zero {
                        offset: start,
                        length,
                    })
                }
            }
        }
    }

    /// Decodes a complete image property body (in `scratch`).
    fn image_property(&self, t: u8) -> Result<ImageProperty, ParseError> {
        let b = &self.scratch;
        Ok(match t {
            tag::IMAGE_ORDER => ImageProperty::Order(le64(b)),
            tag::IMAGE_FEATURES => ImageProperty::Features(le64(b)),
            tag::IMAGE_STRIPE_UNIT => ImageProperty::StripeUnit(le64(b)),
            tag::IMAGE_STRIPE_COUNT => ImageProperty::StripeCount(le64(b)),
            _ => {
                let offset = self.record;
                let bad = |reason| ParseError::BadMeta { offset, reason };
                let klen = le32(b) as usize;
                let kend = 4usize
                    .checked_add(klen)
                    .filter(|e| e + 4 <= b.len())
                    .ok_or_else(|| bad("key length runs past the record"))?;
                let vlen = le32(&b[kend..]) as usize;
                if kend + 4 + vlen != b.len() {
                    return Err(bad(
                        "key and value lengths do not add up to the record length",
                    ));
                }
                let utf8 = |bytes: &[u8], what| {
                    String::from_utf8(bytes.to_vec())
                        .map_err(|_| ParseError::NotUtf8 { offset, what })
                };
                ImageProperty::Meta {
                    key: utf8(&b[4..kend], "metadata key")?,
                    value: utf8(&b[kend + 4..], "metadata value")?,
                }
            }
        })
    }
}
