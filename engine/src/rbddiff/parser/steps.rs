//! The parser's state machine, one step per [`State`]: each consumes what
//! it can of the input and says whether to go on ([`Flow::Continue`]) or to
//! hand an event (or "need more input") back to [`Parser::advance`].

use super::{
    escape, le32, tag, DiffRules, Event, Flow, Format, ParseError, Parser, State, BANNER_DIFF_V1,
    BANNER_DIFF_V2, BANNER_IMAGE_DIFFS_V2, BANNER_IMAGE_V2, MAX_META_RECORD, MAX_SNAP_NAME,
};

impl Parser {
    /// After the end: only the end of input is accepted.
    pub(super) fn step_done(&mut self, input: &[u8], at: &mut usize) -> Result<Flow, ParseError> {
        if *at < input.len() {
            return Err(ParseError::TrailingBytes { offset: self.pos });
        }
        Ok(Flow::Yield(None))
    }

    /// The stream banner, byte by byte, so a wrong prefix fails at once.
    pub(super) fn step_banner(&mut self, input: &[u8], at: &mut usize) -> Result<Flow, ParseError> {
        // Read byte by byte so a wrong prefix fails at once.
        while *at < input.len() {
            self.scratch.push(input[*at]);
            *at += 1;
            self.pos += 1;
            let s = self.scratch.as_slice();
            let candidates = [BANNER_DIFF_V1, BANNER_DIFF_V2, BANNER_IMAGE_V2];
            if let Some(full) = candidates.iter().find(|b| **b == s) {
                let format = if *full == BANNER_DIFF_V1 {
                    Format::DiffV1
                } else if *full == BANNER_DIFF_V2 {
                    Format::DiffV2
                } else {
                    Format::ImageV2
                };
                self.scratch.clear();
                self.format = Some(format);
                self.state = if format == Format::ImageV2 {
                    State::PropTag
                } else {
                    State::StartDiff
                };
                return Ok(Flow::Yield(Some(Event::Banner(format))));
            }
            if !candidates.iter().any(|b| b.starts_with(s)) {
                return Err(ParseError::BadBanner { found: escape(s) });
            }
        }
        Ok(Flow::Yield(None))
    }

    /// An image v2 property record's tag (or the end of the properties).
    pub(super) fn step_prop_tag(
        &mut self,
        input: &[u8],
        at: &mut usize,
    ) -> Result<Flow, ParseError> {
        if *at == input.len() {
            return Ok(Flow::Yield(None));
        }
        let t = input[*at];
        self.record = self.pos;
        *at += 1;
        self.pos += 1;
        if t == tag::IMAGE_END {
            self.state = State::DiffsBanner;
            return Ok(Flow::Yield(Some(Event::ImagePropertiesEnd)));
        }
        self.state = State::PropLen { tag: t };
        Ok(Flow::Continue)
    }

    /// A property record's length: fixed for the known ones, skipped for unknown tags.
    pub(super) fn step_prop_len(
        &mut self,
        input: &[u8],
        at: &mut usize,
        t: u8,
    ) -> Result<Flow, ParseError> {
        let Some(declared) = self.take_le64(input, at) else {
            return Ok(Flow::Yield(None));
        };
        match t {
            tag::IMAGE_ORDER
            | tag::IMAGE_FEATURES
            | tag::IMAGE_STRIPE_UNIT
            | tag::IMAGE_STRIPE_COUNT => {
                if declared != 8 {
                    return Err(ParseError::BadLength {
                        offset: self.record,
                        tag: t,
                        declared,
                        expected: 8,
                    });
                }
                self.state = State::PropBody { tag: t, len: 8 };
            }
            tag::IMAGE_META => {
                if declared > MAX_META_RECORD {
                    return Err(ParseError::BadMeta {
                        offset: self.record,
                        reason: "longer than 1 MiB",
                    });
                }
                if declared < 8 {
                    return Err(ParseError::BadMeta {
                        offset: self.record,
                        reason: "shorter than its two length fields",
                    });
                }
                // declared <= 1 MiB, so it fits in usize.
                self.state = State::PropBody {
                    tag: t,
                    len: declared as usize,
                };
            }
            other => return Ok(self.skip_unknown(other, declared, State::PropTag)),
        }
        Ok(Flow::Continue)
    }

    /// A record with a tag this parser does not know: its `declared` body is
    /// skipped, then parsing goes on at `after`; the caller hears of it.
    fn skip_unknown(&mut self, tag: u8, declared: u64, after: State) -> Flow {
        self.state = State::Skip {
            remaining: declared,
        };
        self.after_skip = after;
        Flow::Yield(Some(Event::Unknown {
            tag,
            length: declared,
        }))
    }

    /// A property record's body.
    pub(super) fn step_prop_body(
        &mut self,
        input: &[u8],
        at: &mut usize,
        t: u8,
        len: usize,
    ) -> Result<Flow, ParseError> {
        if !self.fill(input, at, len) {
            return Ok(Flow::Yield(None));
        }
        let prop = self.image_property(t)?;
        self.scratch.clear();
        self.state = State::PropTag;
        Ok(Flow::Yield(Some(Event::ImageProperty(prop))))
    }

    /// The body of an unknown record, skipped without buffering.
    pub(super) fn step_skip(
        &mut self,
        input: &[u8],
        at: &mut usize,
        remaining: u64,
    ) -> Result<Flow, ParseError> {
        if remaining == 0 {
            self.state = self.after_skip;
            return Ok(Flow::Continue);
        }
        if *at == input.len() {
            return Ok(Flow::Yield(None));
        }
        let avail = (input.len() - *at) as u64;
        let take = remaining.min(avail);
        // take <= avail, which came from a usize.
        *at += take as usize;
        self.pos += take;
        self.state = State::Skip {
            remaining: remaining - take,
        };
        Ok(Flow::Continue)
    }

    /// The "rbd image diffs v2" banner inside an image v2 stream.
    pub(super) fn step_diffs_banner(
        &mut self,
        input: &[u8],
        at: &mut usize,
    ) -> Result<Flow, ParseError> {
        if !self.inner_banner(input, at, BANNER_IMAGE_DIFFS_V2, "rbd image diffs v2\n")? {
            return Ok(Flow::Yield(None));
        }
        self.state = State::DiffCount;
        Ok(Flow::Continue)
    }

    /// The number of diffs of an image v2 stream.
    pub(super) fn step_diff_count(
        &mut self,
        input: &[u8],
        at: &mut usize,
    ) -> Result<Flow, ParseError> {
        let Some(total) = self.take_le64(input, at) else {
            return Ok(Flow::Yield(None));
        };
        self.diff_total = total;
        self.diff_index = 0;
        self.state = State::AfterDiff;
        Ok(Flow::Yield(Some(Event::DiffCount(self.diff_total))))
    }

    /// After a diff: the next one, or the end of the stream.
    pub(super) fn step_after_diff(&mut self) -> Result<Flow, ParseError> {
        if self.diff_index < self.diff_total {
            self.state = if self.format == Some(Format::ImageV2) {
                State::DiffBanner
            } else {
                State::StartDiff
            };
        } else {
            self.state = State::Done;
            return Ok(Flow::Yield(Some(Event::End)));
        }
        Ok(Flow::Continue)
    }

    /// The "rbd diff v2" banner of the next diff inside an image v2 stream.
    pub(super) fn step_diff_banner(
        &mut self,
        input: &[u8],
        at: &mut usize,
    ) -> Result<Flow, ParseError> {
        if !self.inner_banner(input, at, BANNER_DIFF_V2, "rbd diff v2\n")? {
            return Ok(Flow::Yield(None));
        }
        self.state = State::StartDiff;
        Ok(Flow::Continue)
    }

    /// A new diff begins: its ordering rules start afresh.
    pub(super) fn step_start_diff(&mut self) -> Result<Flow, ParseError> {
        self.rules = DiffRules::default();
        self.state = State::Tag;
        Ok(Flow::Yield(Some(Event::DiffBegin {
            index: self.diff_index,
        })))
    }

    /// A diff record's tag (or the diff's end record).
    pub(super) fn step_tag(&mut self, input: &[u8], at: &mut usize) -> Result<Flow, ParseError> {
        if *at == input.len() {
            return Ok(Flow::Yield(None));
        }
        let t = input[*at];
        self.record = self.pos;
        *at += 1;
        self.pos += 1;
        if t == tag::END {
            self.diff_index += 1;
            self.state = State::AfterDiff;
            return Ok(Flow::Yield(Some(Event::DiffEnd)));
        }
        let v2 = self.format != Some(Format::DiffV1);
        let known = matches!(
            t,
            tag::FROM_SNAP | tag::TO_SNAP | tag::SIZE | tag::WRITE | tag::ZERO
        ) || (v2 && t == tag::PROTECTED);
        if !known && !v2 {
            return Err(ParseError::UnknownTag {
                offset: self.record,
                tag: t,
                format: Format::DiffV1,
            });
        }
        if v2 {
            self.state = State::RecLen { tag: t };
        } else {
            self.state = self.body_state(t, None)?;
        }
        Ok(Flow::Continue)
    }

    /// A v2 record's length: checked for known tags, skipped for unknown ones.
    pub(super) fn step_rec_len(
        &mut self,
        input: &[u8],
        at: &mut usize,
        t: u8,
    ) -> Result<Flow, ParseError> {
        let Some(declared) = self.take_le64(input, at) else {
            return Ok(Flow::Yield(None));
        };
        match t {
            tag::FROM_SNAP | tag::TO_SNAP | tag::SIZE | tag::WRITE | tag::ZERO | tag::PROTECTED => {
                self.state = self.body_state(t, Some(declared))?;
            }
            other => return Ok(self.skip_unknown(other, declared, State::Tag)),
        }
        Ok(Flow::Continue)
    }

    /// A snapshot name's length, checked against the record length and the cap.
    pub(super) fn step_name_len(
        &mut self,
        input: &[u8],
        at: &mut usize,
        t: u8,
        declared: Option<u64>,
    ) -> Result<Flow, ParseError> {
        if !self.fill(input, at, 4) {
            return Ok(Flow::Yield(None));
        }
        let len = u64::from(le32(&self.scratch));
        self.scratch.clear();
        if let Some(d) = declared {
            if d != 4 + len {
                return Err(ParseError::BadLength {
                    offset: self.record,
                    tag: t,
                    declared: d,
                    expected: 4 + len,
                });
            }
        }
        if len > MAX_SNAP_NAME as u64 {
            return Err(ParseError::NameTooLong {
                offset: self.record,
                len,
            });
        }
        // len <= 4096.
        self.state = State::Name {
            tag: t,
            len: len as usize,
        };
        Ok(Flow::Continue)
    }

    /// A snapshot name.
    pub(super) fn step_name(
        &mut self,
        input: &[u8],
        at: &mut usize,
        t: u8,
        len: usize,
    ) -> Result<Flow, ParseError> {
        if !self.fill(input, at, len) {
            return Ok(Flow::Yield(None));
        }
        let name = String::from_utf8(std::mem::take(&mut self.scratch)).map_err(|_| {
            ParseError::NotUtf8 {
                offset: self.record,
                what: "snapshot name",
            }
        })?;
        self.state = State::Tag;
        Ok(Flow::Yield(Some(if t == tag::FROM_SNAP {
            Event::FromSnap(name)
        } else {
            Event::ToSnap(name)
        })))
    }

    /// A fixed-size record body (size, protected, write or zero header).
    pub(super) fn step_fixed(
        &mut self,
        input: &[u8],
        at: &mut usize,
        t: u8,
        declared: Option<u64>,
    ) -> Result<Flow, ParseError> {
        let need = match t {
            tag::SIZE => 8,
            tag::PROTECTED => 1,
            _ => 16,
        };
        if !self.fill(input, at, need) {
            return Ok(Flow::Yield(None));
        }
        let event = self.fixed_record(t, declared)?;
        self.scratch.clear();
        Ok(Flow::Yield(Some(event)))
    }

    /// Write data, handed out as pieces of the input without buffering.
    pub(super) fn step_data(
        &mut self,
        input: &[u8],
        at: &mut usize,
        offset: u64,
        remaining: u64,
    ) -> Result<Flow, ParseError> {
        if remaining == 0 {
            self.state = State::Tag;
            return Ok(Flow::Continue);
        }
        if *at == input.len() {
            return Ok(Flow::Yield(None));
        }
        let avail = input.len() - *at;
        // min with a usize, so the cast back is lossless.
        let take = remaining.min(avail as u64) as usize;
        *at += take;
        self.pos += take as u64;
        self.state = State::Data {
            offset: offset + take as u64,
            remaining: remaining - take as u64,
        };
        Ok(Flow::Yield(Some(Event::Data { offset, len: take })))
    }
}
