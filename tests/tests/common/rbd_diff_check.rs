//! The `rbd_diff` fuzz property, shared (via `#[path]`) by the cargo-fuzz
//! target `fuzz/fuzz_targets/rbd_diff.rs` and the corpus replay test
//! `tests/tests/rbd_diff_corpus.rs`.
//!
//! For any input: the parser must not panic, must give the same result
//! whether fed whole or in small pieces, and a stream it accepts must
//! re-encode (through the writer) into a stream that parses to the same
//! events with the same payload bytes.

use ferry_engine::rbddiff::{write_image_v2_header_raw, DiffWriter, Event, Format, Parser};

/// Events with write payloads merged per write record.
type Parsed = Vec<(Event, Vec<u8>)>;

fn parse(data: &[u8], chunk: usize) -> Result<Parsed, String> {
    let mut p = Parser::new();
    let mut out: Parsed = Vec::new();
    let mut pieces: Vec<&[u8]> = data.chunks(chunk.max(1)).collect();
    pieces.push(&[]);
    for input in pieces {
        let mut at = 0;
        loop {
            let step = p.advance(&input[at..]).map_err(|e| e.to_string())?;
            let bytes = step.data(&input[at..]).to_vec();
            assert!(
                step.consumed <= input.len() - at,
                "consumed more than given"
            );
            at += step.consumed;
            match step.event {
                Some(Event::Data { offset, len }) => {
                    assert_eq!(len, bytes.len());
                    match out.last_mut() {
                        Some((Event::Data { offset: o, len: l }, d)) => {
                            assert_eq!(*o + *l as u64, offset, "data pieces must be contiguous");
                            *l += len;
                            d.extend_from_slice(&bytes);
                        }
                        _ => out.push((Event::Data { offset, len }, bytes)),
                    }
                }
                Some(e) => out.push((e, Vec::new())),
                None => {
                    assert_eq!(at, input.len(), "no event yet all input consumed");
                    break;
                }
            }
        }
    }
    p.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// Re-encodes accepted events with the writer.
fn encode(events: &Parsed) -> Vec<u8> {
    let mut out = Vec::new();
    let mut props = Vec::new();
    let mut format = Format::DiffV1;
    let mut writer: Option<DiffWriter<Vec<u8>>> = None;
    for (event, data) in events {
        match event {
            Event::Banner(f) => format = *f,
            Event::ImageProperty(p) => props.push(p.clone()),
            Event::ImagePropertiesEnd => {}
            Event::DiffCount(n) => {
                write_image_v2_header_raw(&mut out, &props, *n).expect("header of accepted stream");
            }
            Event::DiffBegin { .. } => {
                let f = if format == Format::DiffV1 {
                    Format::DiffV1
                } else {
                    Format::DiffV2
                };
                writer = Some(DiffWriter::new(Vec::new(), f).expect("banner"));
            }
            Event::FromSnap(s) => writer.as_mut().unwrap().from_snap(s).unwrap(),
            Event::ToSnap(s) => writer.as_mut().unwrap().to_snap(s).unwrap(),
            Event::Protected(p) => writer.as_mut().unwrap().protected(*p).unwrap(),
            Event::Size(s) => writer.as_mut().unwrap().size(*s).unwrap(),
            Event::Write { offset, length } => writer
                .as_mut()
                .unwrap()
                .write_header(*offset, *length)
                .unwrap(),
            Event::Data { .. } => writer.as_mut().unwrap().write_data(data).unwrap(),
            Event::Zero { offset, length } => {
                writer.as_mut().unwrap().zero(*offset, *length).unwrap()
            }
            // The writer has no way to emit unknown records; they are
            // dropped, and dropped from the comparison too.
            Event::Unknown { .. } => {}
            Event::DiffEnd => out.extend(writer.take().unwrap().end().unwrap()),
            Event::End => {}
        }
    }
    out
}

fn without_unknown(events: &Parsed) -> Parsed {
    events
        .iter()
        .filter(|(e, _)| !matches!(e, Event::Unknown { .. }))
        .cloned()
        .collect()
}

/// The property; panics when it does not hold.
pub fn check(data: &[u8]) {
    let whole = parse(data, usize::MAX);
    let small = parse(data, 3);
    assert_eq!(whole, small, "result depends on how the input is split");
    let Ok(events) = whole else { return };
    let bytes = encode(&events);
    let again = parse(&bytes, 7).expect("re-encoded stream must parse");
    assert_eq!(
        without_unknown(&events),
        again,
        "re-encode changed the events"
    );
}
