//! Unit tests of the rbd diff parser, writer, export and import.

use std::fs;
use std::io::Cursor;
use std::path::Path;

use super::export::{export_diff, ExportFormat, ExportOptions};
use super::import::{import_diff, read_snap_state, DiffInput, ImportError, ImportOptions};
use super::*;

/// Parses `bytes` fed in `chunk`-byte slices; data pieces are merged into
/// one `Data` per write so results do not depend on the chunking.
fn events(bytes: &[u8], chunk: usize) -> Result<Vec<(Event, Vec<u8>)>, ParseError> {
    let mut p = Parser::new();
    let mut out: Vec<(Event, Vec<u8>)> = Vec::new();
    let mut feed = |input: &[u8], out: &mut Vec<(Event, Vec<u8>)>| -> Result<(), ParseError> {
        let mut at = 0;
        loop {
            let step = p.advance(&input[at..])?;
            let data = step.data(&input[at..]).to_vec();
            at += step.consumed;
            match step.event {
                Some(Event::Data { offset, len }) => match out.last_mut() {
                    Some((Event::Data { len: l, .. }, d)) => {
                        *l += len;
                        d.extend_from_slice(&data);
                    }
                    _ => out.push((Event::Data { offset, len }, data)),
                },
                Some(e) => out.push((e, Vec::new())),
                None => return Ok(()),
            }
        }
    };
    for piece in bytes.chunks(chunk.max(1)) {
        feed(piece, &mut out)?;
    }
    feed(&[], &mut out)?;
    p.finish()?;
    Ok(out)
}

fn ev(list: &[(Event, Vec<u8>)]) -> Vec<Event> {
    list.iter().map(|(e, _)| e.clone()).collect()
}

/// A v1 diff written by hand from doc/dev/rbd-diff.rst.
fn golden_v1() -> Vec<u8> {
    let mut b = b"rbd diff v1\n".to_vec();
    b.push(b'f');
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(b"s1");
    b.push(b't');
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(b"s2");
    b.push(b's');
    b.extend_from_slice(&8192u64.to_le_bytes());
    b.push(b'w');
    b.extend_from_slice(&4096u64.to_le_bytes());
    b.extend_from_slice(&5u64.to_le_bytes());
    b.extend_from_slice(b"hello");
    b.push(b'z');
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&4096u64.to_le_bytes());
    b.push(b'e');
    b
}

#[test]
fn golden_v1_parses_identically_in_any_chunking() {
    let bytes = golden_v1();
    let want = vec![
        Event::Banner(Format::DiffV1),
        Event::DiffBegin { index: 0 },
        Event::FromSnap("s1".into()),
        Event::ToSnap("s2".into()),
        Event::Size(8192),
        Event::Write {
            offset: 4096,
            length: 5,
        },
        Event::Data {
            offset: 4096,
            len: 5,
        },
        Event::Zero {
            offset: 0,
            length: 4096,
        },
        Event::DiffEnd,
        Event::End,
    ];
    for chunk in [1, 2, 3, 7, 13, 1000] {
        let got = events(&bytes, chunk).unwrap();
        assert_eq!(ev(&got), want, "chunk {chunk}");
        assert_eq!(got[6].1, b"hello");
    }
}

#[test]
fn writer_reproduces_the_golden_bytes() {
    let mut w = DiffWriter::new(Vec::new(), Format::DiffV1).unwrap();
    w.from_snap("s1").unwrap();
    w.to_snap("s2").unwrap();
    w.size(8192).unwrap();
    w.write_header(4096, 5).unwrap();
    w.write_data(b"hel").unwrap();
    w.write_data(b"lo").unwrap();
    w.zero(0, 4096).unwrap();
    assert_eq!(w.end().unwrap(), golden_v1());
}

/// An image v2 stream the way rbd 16.2 writes it (p declares 8, carries 1).
fn golden_image_v2(p_declared: u64) -> Vec<u8> {
    let mut b = b"rbd image v2\n".to_vec();
    for (t, v) in [(b'O', 22u64), (b'T', 61), (b'U', 1 << 22), (b'C', 1)] {
        b.push(t);
        b.extend_from_slice(&8u64.to_le_bytes());
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.push(b'M');
    b.extend_from_slice(&(8u64 + 1 + 2).to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(b"k");
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(b"vv");
    b.push(b'E');
    b.extend_from_slice(b"rbd image diffs v2\n");
    b.extend_from_slice(&2u64.to_le_bytes());
    // Diff 1: to s1 (protected), size, one write.
    b.extend_from_slice(b"rbd diff v2\n");
    b.push(b't');
    b.extend_from_slice(&6u64.to_le_bytes());
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(b"s1");
    b.push(b'p');
    b.extend_from_slice(&p_declared.to_le_bytes());
    b.push(1);
    b.push(b's');
    b.extend_from_slice(&8u64.to_le_bytes());
    b.extend_from_slice(&4096u64.to_le_bytes());
    b.push(b'w');
    b.extend_from_slice(&(16u64 + 3).to_le_bytes());
    b.extend_from_slice(&10u64.to_le_bytes());
    b.extend_from_slice(&3u64.to_le_bytes());
    b.extend_from_slice(b"abc");
    b.push(b'e');
    // Diff 2: from s1 to HEAD, an unknown record, a zero.
    b.extend_from_slice(b"rbd diff v2\n");
    b.push(b'f');
    b.extend_from_slice(&6u64.to_le_bytes());
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(b"s1");
    b.push(b's');
    b.extend_from_slice(&8u64.to_le_bytes());
    b.extend_from_slice(&4096u64.to_le_bytes());
    b.push(b'X');
    b.extend_from_slice(&3u64.to_le_bytes());
    b.extend_from_slice(b"???");
    b.push(b'z');
    b.extend_from_slice(&16u64.to_le_bytes());
    b.extend_from_slice(&10u64.to_le_bytes());
    b.extend_from_slice(&2u64.to_le_bytes());
    b.push(b'e');
    b
}

#[test]
fn image_v2_with_both_protected_lengths() {
    for declared in [8, 1] {
        let got = ev(&events(&golden_image_v2(declared), 5).unwrap());
        assert_eq!(got[0], Event::Banner(Format::ImageV2));
        assert!(got.contains(&Event::ImageProperty(ImageProperty::Meta {
            key: "k".into(),
            value: "vv".into()
        })));
        assert!(got.contains(&Event::Protected(true)));
        assert!(got.contains(&Event::DiffCount(2)));
        assert!(got.contains(&Event::Unknown {
            tag: b'X',
            length: 3
        }));
        assert!(got.contains(&Event::Zero {
            offset: 10,
            length: 2
        }));
        assert_eq!(got.iter().filter(|e| **e == Event::DiffEnd).count(), 2);
        assert_eq!(got.last(), Some(&Event::End));
    }
    let err = events(&golden_image_v2(4), 64).unwrap_err();
    assert!(
        matches!(err, ParseError::BadLength { tag: b'p', .. }),
        "{err}"
    );
}

fn expect_err(bytes: &[u8]) -> ParseError {
    let a = events(bytes, 1).unwrap_err();
    let b = events(bytes, 4096).unwrap_err();
    assert_eq!(a, b, "the error must not depend on chunking");
    a
}

#[test]
fn malformed_streams_are_typed_errors_with_offsets() {
    let good = golden_v1();
    // Bad banner.
    let e = expect_err(b"rbd diff v3\nxxxx");
    assert!(matches!(e, ParseError::BadBanner { .. }), "{e}");
    // Truncated anywhere.
    for cut in [0, 5, 12, 13, 20, 40, good.len() - 1] {
        let e = expect_err(&good[..cut]);
        assert!(
            matches!(
                e,
                ParseError::Truncated { .. } | ParseError::BadBanner { .. }
            ),
            "cut {cut}: {e}"
        );
    }
    // Unknown tag in v1 (replace the 'z').
    let mut bad = good.clone();
    let z = bad.len() - 18;
    assert_eq!(bad[z], b'z');
    bad[z] = b'q';
    let e = expect_err(&bad);
    assert_eq!(
        e,
        ParseError::UnknownTag {
            offset: z as u64,
            tag: b'q',
            format: Format::DiffV1
        }
    );
    // Write past the declared size (size 8192 -> 4096).
    let mut bad = good.clone();
    let s = 12 + 7 + 7;
    assert_eq!(bad[s], b's');
    bad[s + 1..s + 9].copy_from_slice(&4096u64.to_le_bytes());
    let e = expect_err(&bad);
    assert!(
        matches!(
            e,
            ParseError::PastEnd {
                what: "write",
                size: 4096,
                ..
            }
        ),
        "{e}"
    );
    // Offset + length overflow.
    let mut w = DiffWriter::new(Vec::new(), Format::DiffV1).unwrap();
    w.size(u64::MAX).unwrap();
    let mut bytes = w.end().unwrap();
    bytes.pop();
    bytes.push(b'z');
    bytes.extend_from_slice(&u64::MAX.to_le_bytes());
    bytes.extend_from_slice(&2u64.to_le_bytes());
    bytes.push(b'e');
    assert!(matches!(
        expect_err(&bytes),
        ParseError::PastEnd { end: u64::MAX, .. }
    ));
    // Trailing bytes.
    let mut bad = good.clone();
    bad.push(0);
    assert!(matches!(expect_err(&bad), ParseError::TrailingBytes { .. }));
    // Data before size.
    let mut b = b"rbd diff v1\nz".to_vec();
    b.extend_from_slice(&[0u8; 16]);
    assert!(matches!(expect_err(&b), ParseError::DataBeforeSize { .. }));
    // Metadata after data.
    let mut bad = good.clone();
    bad.pop();
    bad.push(b's');
    bad.extend_from_slice(&0u64.to_le_bytes());
    bad.push(b'e');
    assert!(matches!(
        expect_err(&bad),
        ParseError::MetadataAfterData { .. }
    ));
    // Huge snapshot name length is refused before any allocation.
    let mut b = b"rbd diff v1\nf".to_vec();
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(expect_err(&b), ParseError::NameTooLong { .. }));
    // v2 write whose declared length disagrees.
    let mut w = DiffWriter::new(Vec::new(), Format::DiffV2).unwrap();
    w.size(100).unwrap();
    w.write(0, b"abcd").unwrap();
    let mut bytes = w.end().unwrap();
    let wpos = bytes.iter().rposition(|&c| c == b'w').unwrap();
    bytes[wpos + 1] = 99;
    assert!(matches!(
        expect_err(&bytes),
        ParseError::BadLength { tag: b'w', .. }
    ));
}

#[test]
fn writer_refuses_what_the_parser_would_reject() {
    let mut w = DiffWriter::new(Vec::new(), Format::DiffV1).unwrap();
    assert!(w.zero(0, 1).is_err(), "data before size");
    w.size(10).unwrap();
    assert!(w.write(8, b"abc").is_err(), "past the size");
    assert!(w.protected(true).is_err(), "p is v2 only");
    w.write_header(0, 4).unwrap();
    assert!(w.zero(0, 1).is_err(), "payload missing");
    w.write_data(b"abcd").unwrap();
    assert!(w.to_snap("x").is_err(), "metadata after data");
    w.end().unwrap();
}

#[test]
fn reader_streams_large_writes_in_bounded_pieces() {
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut w = DiffWriter::new(Vec::new(), Format::DiffV1).unwrap();
    w.size(1 << 20).unwrap();
    w.write(7, &payload).unwrap();
    let bytes = w.end().unwrap();
    let mut r = Reader::with_buffer(Cursor::new(bytes), 4096);
    let mut got = Vec::new();
    let mut biggest = 0;
    while let Some(p) = r.next_piece().unwrap() {
        if let Event::Data { offset, len } = p.event {
            assert_eq!(*offset, 7 + got.len() as u64);
            assert_eq!(*len, p.data.len());
            biggest = biggest.max(p.data.len());
            got.extend_from_slice(p.data);
        }
    }
    assert_eq!(got, payload);
    assert!(biggest <= 4096);
}

fn write_file(path: &Path, size: u64, writes: &[(u64, &[u8])]) {
    let f = fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (off, data) in writes {
        std::os::unix::fs::FileExt::write_all_at(&f, data, *off).unwrap();
    }
}

#[test]
fn export_then_import_reproduces_the_image_over_other_content() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    let noise = vec![0xAAu8; 20_000];
    write_file(
        &src,
        10 << 20,
        &[(0, b"first"), (4 << 20, &noise), ((10 << 20) - 3, b"end")],
    );
    let mut stream = Vec::new();
    let report = export_diff(&src, &ExportOptions::default(), &mut stream).unwrap();
    assert_eq!(report.size, 10 << 20);
    // The target holds unrelated data and is larger: the diff must win.
    let dst = dir.path().join("dst.raw");
    write_file(&dst, 12 << 20, &[(8 << 20, &[0x55u8; 100_000])]);
    let diff = dir.path().join("d");
    fs::write(&diff, &stream).unwrap();
    let r = import_diff(DiffInput::Path(&diff), &dst, &ImportOptions::default()).unwrap();
    assert_eq!(r.new_size, 10 << 20);
    assert_eq!(fs::read(&src).unwrap(), fs::read(&dst).unwrap());
    assert!(!undo::journal_path(&dst).exists());
}

#[test]
fn incremental_export_and_snapshot_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, t) = (
        dir.path().join("a.raw"),
        dir.path().join("b.raw"),
        dir.path().join("t.raw"),
    );
    write_file(&a, 1 << 20, &[(0, &[1u8; 9000]), (500_000, b"keep")]);
    write_file(
        &b,
        2 << 20,
        &[(4096, &[2u8; 100]), (500_000, b"keep"), (1_500_000, b"new")],
    );
    let full = dir.path().join("full");
    let inc = dir.path().join("inc");
    let opts = ExportOptions {
        to_snap: Some("s1".into()),
        ..ExportOptions::default()
    };
    export_diff(&a, &opts, fs::File::create(&full).unwrap()).unwrap();
    let opts = ExportOptions {
        from_file: Some(a.clone()),
        from_snap: Some("s1".into()),
        to_snap: Some("s2".into()),
        format: ExportFormat::DiffV1,
    };
    let rep = export_diff(&b, &opts, fs::File::create(&inc).unwrap()).unwrap();
    // Block 0 (first 4 KiB) changed to zero except 100 bytes; block 1 and 2 zeroed.
    assert!(rep.records >= 2, "{rep:?}");
    // The incremental diff refuses a target that is not at s1.
    let err = import_diff(DiffInput::Path(&inc), &t, &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::SnapshotMismatch { .. }), "{err}");
    assert!(!t.exists(), "a refused import must not create the target");
    import_diff(DiffInput::Path(&full), &t, &ImportOptions::default()).unwrap();
    assert_eq!(read_snap_state(&t).unwrap().as_deref(), Some("s1"));
    let mut stdin = Cursor::new(fs::read(&inc).unwrap());
    import_diff(DiffInput::Stream(&mut stdin), &t, &ImportOptions::default()).unwrap();
    assert_eq!(read_snap_state(&t).unwrap().as_deref(), Some("s2"));
    assert_eq!(fs::read(&b).unwrap(), fs::read(&t).unwrap());
    // Image v2 export of b applies to a fresh target too.
    let img = dir.path().join("img");
    let opts = ExportOptions {
        format: ExportFormat::ImageV2,
        ..ExportOptions::default()
    };
    export_diff(&b, &opts, fs::File::create(&img).unwrap()).unwrap();
    let t2 = dir.path().join("t2.raw");
    let r = import_diff(DiffInput::Path(&img), &t2, &ImportOptions::default()).unwrap();
    assert_eq!(r.format, "rbd image v2");
    assert_eq!(fs::read(&b).unwrap(), fs::read(&t2).unwrap());
}

#[test]
fn malformed_input_leaves_the_target_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t.raw");
    write_file(&t, 64 << 10, &[(0, &[7u8; 5000]), (40_000, b"old")]);
    let before = fs::read(&t).unwrap();
    // A stream whose first records are fine (resize, write, zero) and whose
    // last write runs past the declared size.
    let mut w = DiffWriter::new(Vec::new(), Format::DiffV1).unwrap();
    w.size(32 << 10).unwrap();
    w.write(0, &[9u8; 4096]).unwrap();
    w.zero(8192, 4096).unwrap();
    let mut good = w.end().unwrap();
    good.pop();
    let mut bad = good.clone();
    bad.push(b'w');
    bad.extend_from_slice(&(30u64 << 10).to_le_bytes());
    bad.extend_from_slice(&(4u64 << 10).to_le_bytes());
    bad.extend_from_slice(&[1u8; 4096]);
    bad.push(b'e');
    let truncated = good.clone();
    let diff = dir.path().join("d");
    for stream in [bad, truncated, b"not a diff".to_vec()] {
        fs::write(&diff, &stream).unwrap();
        let err = import_diff(DiffInput::Path(&diff), &t, &ImportOptions::default()).unwrap_err();
        assert!(matches!(err, ImportError::Diff { .. }), "{err}");
        assert_eq!(fs::read(&t).unwrap(), before);
        assert!(!undo::journal_path(&t).exists());
        assert!(!undo::partial_path(&t).exists());
    }
}

#[test]
fn sealed_journal_rolls_back_a_half_applied_import() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t.raw");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    write_file(&t, 1 << 20, &[(0, &data)]);
    let before = fs::read(&t).unwrap();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&t)
        .unwrap();
    let mut j = undo::UndoWriter::create(&t, 1 << 20, false).unwrap();
    j.save(&f, &t, 100, 200_000).unwrap();
    j.save(&f, &t, 512 << 10, 512 << 10).unwrap();
    j.seal().unwrap();
    // "Crash" mid-apply: some writes done, size changed.
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xFFu8; 150_000], 100).unwrap();
    f.set_len(600 << 10).unwrap();
    drop(f);
    // The next import of anything (even a bad one) rolls back first.
    let diff = dir.path().join("d");
    fs::write(&diff, b"garbage").unwrap();
    let err = import_diff(DiffInput::Path(&diff), &t, &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::Diff { .. }), "{err}");
    assert_eq!(fs::read(&t).unwrap(), before);
    assert!(!undo::journal_path(&t).exists());
}

#[test]
fn corrupt_journal_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t.raw");
    write_file(&t, 8192, &[(0, b"abc")]);
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&t)
        .unwrap();
    let mut j = undo::UndoWriter::create(&t, 8192, false).unwrap();
    j.save(&f, &t, 0, 8192).unwrap();
    let sealed = j.seal().unwrap();
    let mut bytes = fs::read(&sealed).unwrap();
    let n = bytes.len();
    bytes[n - 20] ^= 1;
    fs::write(&sealed, bytes).unwrap();
    let err = undo::recover(&t, &f).unwrap_err();
    assert!(matches!(err, undo::UndoError::Corrupt { .. }), "{err}");
    assert!(sealed.exists());
}
