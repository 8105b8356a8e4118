//! `ferry export-diff` / `ferry import-diff` as real processes: golden bytes
//! from the format spec, round trips through files and pipes, malformed
//! input leaving the target byte-identical, bounded memory on a 3 GiB
//! sparse image, and interop with the real `rbd` tool in both directions
//! (the `lab_` tests: `#[ignore]`d for a plain `cargo test`, run by
//! `scripts/test.sh` with the Ceph lab up; under CI or `FERRY_REQUIRE_ALL=1`
//! they fail without `FERRY_CEPH_LAB=1` instead of passing untested).

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ferry_e2e::{bin, ferry, hash_file};
use ferry_engine::rbddiff::{Event, Reader};

fn le64(v: u64) -> [u8; 8] {
    v.to_le_bytes()
}

/// A v1 stream written by hand from Ceph's doc/dev/rbd-diff.rst.
fn golden_v1() -> Vec<u8> {
    let mut b = b"rbd diff v1\n".to_vec();
    b.push(b't');
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(b"s1");
    b.push(b's');
    b.extend_from_slice(&le64(12288));
    b.push(b'w');
    b.extend_from_slice(&le64(4096));
    b.extend_from_slice(&le64(4096));
    let mut block = vec![0u8; 4096];
    block[..5].copy_from_slice(b"hello");
    b.extend_from_slice(&block);
    b.push(b'z');
    b.extend_from_slice(&le64(8192));
    b.extend_from_slice(&le64(4096));
    b.push(b'e');
    b
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn file_spec(p: &Path) -> String {
    format!("file:{}", p.display())
}

fn sparse_file(path: &Path, size: u64, writes: &[(u64, Vec<u8>)]) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (off, data) in writes {
        f.write_all_at(data, *off).unwrap();
    }
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn golden_stream_imports_and_exports_byte_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let diff = tmp.path().join("golden.diff");
    fs::write(&diff, golden_v1()).unwrap();
    let target = tmp.path().join("t.raw");
    // Pre-existing content in the zero range must be cleared.
    sparse_file(&target, 4096, &[(0, vec![0x11; 4096])]);
    ok(
        &ferry(&["import-diff", &s(&diff), &file_spec(&target)]),
        "import-diff",
    );
    let got = fs::read(&target).unwrap();
    assert_eq!(got.len(), 12288);
    assert!(
        got[..4096].iter().all(|b| *b == 0x11),
        "untouched range keeps its data"
    );
    assert_eq!(&got[4096..4101], b"hello");
    assert!(got[4101..].iter().all(|b| *b == 0));
    assert_eq!(
        fs::read_to_string(tmp.path().join("t.raw.ferry-snap")).unwrap(),
        "s1\n"
    );

    // Exporting a file whose first block is zero gives the same bytes.
    let src = tmp.path().join("src.raw");
    let mut block = vec![0u8; 4096];
    block[..5].copy_from_slice(b"hello");
    sparse_file(&src, 12288, &[(4096, block)]);
    let out = tmp.path().join("out.diff");
    ok(
        &ferry(&[
            "export-diff",
            "--to-snap-name",
            "s1",
            &file_spec(&src),
            &s(&out),
        ]),
        "export-diff",
    );
    let mut want = golden_v1();
    // ferry merges the leading zero block into a record of its own.
    let tail = want.split_off(12 + 7 + 9);
    want.push(b'z');
    want.extend_from_slice(&le64(0));
    want.extend_from_slice(&le64(4096));
    want.extend_from_slice(&tail);
    assert_eq!(fs::read(&out).unwrap(), want);
    // Never overwrites an existing output (like rbd).
    let again = ferry(&["export-diff", &file_spec(&src), &s(&out)]);
    assert!(!again.status.success());
}

/// Runs `ferry ARGS` with `input` on stdin.
fn ferry_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(bin("ferry"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

#[test]
fn round_trip_through_files_and_pipes_with_resize() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.raw");
    let b = tmp.path().join("b.raw");
    sparse_file(
        &a,
        24 << 20,
        &[
            (0, noise(1, 10_000)),
            (5 << 20, noise(2, 300_000)),
            ((24 << 20) - 100, noise(3, 100)),
        ],
    );
    // b: a grown to 40 MiB, part of a's data zeroed, new data past the old end.
    fs::copy(&a, &b).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&b).unwrap();
    f.write_all_at(&vec![0u8; 200_000], 5 << 20).unwrap();
    f.write_all_at(&noise(4, 5000), 123_456).unwrap();
    f.set_len(40 << 20).unwrap();
    f.write_all_at(&noise(5, 70_000), 33 << 20).unwrap();
    drop(f);

    // Full export to stdout, import from stdin.
    let full = ferry(&["export-diff", "--to-snap-name", "s1", &file_spec(&a), "-"]);
    ok(&full, "export-diff to stdout");
    let t = tmp.path().join("t.raw");
    ok(
        &ferry_stdin(&["import-diff", "-", &file_spec(&t)], &full.stdout),
        "import-diff from stdin",
    );
    assert_eq!(hash_file(&a), hash_file(&t));
    assert!(!tmp.path().join("t.raw.ferry-spool").exists());

    // Incremental (grow), via a file, checked against the recorded snapshot.
    let inc = tmp.path().join("inc.diff");
    ok(
        &ferry(&[
            "export-diff",
            "--from-file",
            &s(&a),
            "--from-snap-name",
            "s1",
            "--to-snap-name",
            "s2",
            &file_spec(&b),
            &s(&inc),
        ]),
        "incremental export",
    );
    let zeros = count_zero_records(&inc);
    assert!(zeros > 0, "the zeroed range must travel as zero records");
    let out = ferry(&["import-diff", "--json", &s(&inc), &file_spec(&t)]);
    ok(&out, "incremental import");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["old_size"], 24 << 20);
    assert_eq!(report["new_size"], 40 << 20);
    assert_eq!(hash_file(&b), hash_file(&t));
    // Applying it again is refused (the target is at s2 now).
    let again = ferry(&["import-diff", &s(&inc), &file_spec(&t)]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("starts from snapshot \"s1\""));

    // Shrink back: export a from b.
    let back = tmp.path().join("back.diff");
    ok(
        &ferry(&[
            "export-diff",
            "--from-file",
            &s(&b),
            "--from-snap-name",
            "s2",
            &file_spec(&a),
            &s(&back),
        ]),
        "shrinking export",
    );
    ok(
        &ferry(&["import-diff", &s(&back), &file_spec(&t)]),
        "shrinking import",
    );
    assert_eq!(hash_file(&a), hash_file(&t));
    assert!(
        !tmp.path().join("t.raw.ferry-snap").exists(),
        "no to-snap: no recorded snapshot"
    );

    // rbd image v2 (export-format 2) into a new file.
    let img = tmp.path().join("img.v2");
    ok(
        &ferry(&[
            "export-diff",
            "--export-format",
            "2",
            &file_spec(&b),
            &s(&img),
        ]),
        "export-format 2",
    );
    let t2 = tmp.path().join("t2.raw");
    ok(
        &ferry(&["import-diff", &s(&img), &file_spec(&t2)]),
        "import image v2",
    );
    assert_eq!(hash_file(&b), hash_file(&t2));
}

fn count_zero_records(path: &Path) -> usize {
    let mut r = Reader::new(File::open(path).unwrap());
    let mut n = 0;
    while let Some(p) = r.next_piece().unwrap() {
        if matches!(p.event, Event::Zero { .. }) {
            n += 1;
        }
    }
    n
}

#[test]
fn malformed_input_is_a_clear_error_and_leaves_the_target_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("t.raw");
    sparse_file(
        &target,
        1 << 20,
        &[(0, noise(9, 50_000)), (900_000, noise(8, 1000))],
    );
    let before = hash_file(&target);
    let good = golden_v1();
    let mut unknown_tag = good.clone();
    let z = unknown_tag.len() - 18;
    unknown_tag[z] = b'q';
    let mut past_size = good.clone();
    past_size[12 + 7 + 1..12 + 7 + 9].copy_from_slice(&le64(6000));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad banner", b"rbd diff v9\nzzzz".to_vec(), "bad banner"),
        ("truncated", good[..good.len() - 20].to_vec(), "truncated"),
        (
            "length past size",
            past_size,
            "past the declared image size",
        ),
        ("unknown tag", unknown_tag, "unknown record tag 0x71"),
        (
            "trailing bytes",
            [good.clone(), b"x".to_vec()].concat(),
            "after the end",
        ),
    ];
    for (name, bytes, needle) in cases {
        let diff = tmp.path().join("bad.diff");
        fs::write(&diff, &bytes).unwrap();
        for out in [
            ferry(&[
                "import-diff",
                "--no-snap-check",
                &s(&diff),
                &file_spec(&target),
            ]),
            ferry_stdin(
                &["import-diff", "--no-snap-check", "-", &file_spec(&target)],
                &bytes,
            ),
        ] {
            assert_eq!(out.status.code(), Some(2), "{name}: exit code");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(needle),
                "{name}: stderr lacks {needle:?}: {err}"
            );
            assert!(err.contains("left unchanged"), "{name}: {err}");
            assert_eq!(hash_file(&target), before, "{name}: target changed");
        }
    }
    let leftovers: Vec<PathBuf> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".ferry-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    // A missing target with a bad diff is not created.
    let missing = tmp.path().join("missing.raw");
    let out = ferry(&[
        "import-diff",
        &s(&tmp.path().join("bad.diff")),
        &file_spec(&missing),
    ]);
    assert!(!out.status.success());
    assert!(!missing.exists());
}

/// Runs `ferry ARGS` (stdin from `stdin_file` if given), returning the
/// output and the peak resident set size of that process in KiB: wait4's
/// ru_maxrss, i.e. VmHWM — an upper bound, since Linux carries the forked
/// test process's high-water mark over the exec.
fn ferry_measured(
    args: &[&str],
    stdin_file: Option<&Path>,
    stdout_file: Option<&Path>,
) -> (bool, String, i64) {
    let mut cmd = Command::new(bin("ferry"));
    cmd.args(args).stderr(Stdio::piped());
    cmd.stdin(match stdin_file {
        Some(p) => Stdio::from(File::open(p).unwrap()),
        None => Stdio::null(),
    });
    cmd.stdout(match stdout_file {
        Some(p) => Stdio::from(File::create(p).unwrap()),
        None => Stdio::null(),
    });
    let mut child = cmd.spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).unwrap();
        s
    });
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: all-zero is a valid rusage (plain integers).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 writes only into `status` and `usage`, both live locals;
    // the child is ours and is reaped exactly once (Child::wait is not called).
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4");
    let err = reader.join().unwrap();
    let success = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    std::mem::forget(child);
    (success, err, usage.ru_maxrss)
}

/// Whether two (sparse) files have the same size and contents, reading only
/// ranges where either holds data (holes in both read as zero).
fn sparse_equal(a: &Path, b: &Path) -> bool {
    use ferry_engine::sys::fs::{seek_data, seek_hole};
    let (fa, fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    let size = fa.metadata().unwrap().len();
    if fb.metadata().unwrap().len() != size {
        return false;
    }
    let mut pos = 0u64;
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    while pos < size {
        let next = |f: &File| seek_data(f, pos).unwrap().unwrap_or(size);
        let start = next(&fa).min(next(&fb));
        if start >= size {
            return true;
        }
        let hole = |f: &File| seek_hole(f, start).unwrap().unwrap_or(size);
        // Compare up to where both have a hole (at least one MiB at a time).
        let end = hole(&fa).max(hole(&fb)).min(size).max(start + 1);
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(ba.len());
            fa.read_exact_at(&mut ba[..n], at).unwrap();
            fb.read_exact_at(&mut bb[..n], at).unwrap();
            if ba[..n] != bb[..n] {
                return false;
            }
            at += n as u64;
        }
        pos = end;
    }
    true
}

#[test]
fn three_gib_sparse_image_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let size: u64 = 3 << 30;
    let writes: Vec<(u64, Vec<u8>)> = (0..48u64)
        .map(|i| ((i * 64 + (i % 7)) << 20, noise(100 + i, 1 << 20)))
        .collect();
    let src = tmp.path().join("big.raw");
    sparse_file(&src, size, &writes);
    let diff = tmp.path().join("big.diff");
    let (good, err, rss_export) =
        ferry_measured(&["export-diff", &file_spec(&src), "-"], None, Some(&diff));
    assert!(good, "export: {err}");
    // Import into a new file from stdin (spooled), then again over an
    // existing, different image (undo journal path).
    let t = tmp.path().join("t.raw");
    let (good, err, rss_import_new) =
        ferry_measured(&["import-diff", "-", &file_spec(&t)], Some(&diff), None);
    assert!(good, "import: {err}");
    assert!(sparse_equal(&src, &t));
    let u = tmp.path().join("u.raw");
    sparse_file(
        &u,
        size + (1 << 20),
        &[(5 << 20, noise(7, 3 << 20)), (2 << 30, noise(8, 1 << 20))],
    );
    let (good, err, rss_import_existing) =
        ferry_measured(&["import-diff", &s(&diff), &file_spec(&u)], None, None);
    assert!(good, "import over existing: {err}");
    assert!(sparse_equal(&src, &u));
    // The comparison itself can fail: one byte in a hole of one file.
    File::options()
        .write(true)
        .open(&t)
        .unwrap()
        .write_all_at(b"x", (2 << 30) + 12345)
        .unwrap();
    assert!(!sparse_equal(&src, &t));
    println!(
        "3 GiB sparse, 48 MiB data: diff {} bytes; peak RSS export {} KiB, import (new, stdin) {} KiB, import (existing) {} KiB",
        fs::metadata(&diff).unwrap().len(),
        rss_export,
        rss_import_new,
        rss_import_existing
    );
    for rss in [rss_export, rss_import_new, rss_import_existing] {
        assert!(rss < 200 * 1024, "peak RSS {rss} KiB exceeds 200 MiB");
    }
}

// ---------------------------------------------------------------------------
// Interop with the real rbd tool (Ceph lab).

fn lab() -> bool {
    ferry_e2e::lab::enabled()
}

/// `rbd --cluster site-a ARGS`, panicking on failure.
fn rbd(args: &[&str]) -> Output {
    ferry_e2e::lab::rbd("site-a", args)
}

/// Runs a librbd operation through python3-rbd on site-a's `rbd` pool.
fn pyrbd(image: &str, body: &str) {
    ferry_e2e::lab::pyrbd("site-a", image, body)
}

/// Removes a lab image with all its snapshots.
struct LabImage(String);

impl LabImage {
    fn new(tag: &str) -> LabImage {
        LabImage(format!("ferry-h6-{tag}-{}", std::process::id()))
    }
    fn spec(&self) -> String {
        format!("rbd/{}", self.0)
    }
}

impl Drop for LabImage {
    fn drop(&mut self) {
        let spec = self.spec();
        let run = |args: &[&str]| {
            let _ = Command::new("rbd")
                .args(["--cluster", "site-a"])
                .args(args)
                .output();
        };
        for snap in ["s1", "s2", "s3"] {
            run(&["snap", "unprotect", &format!("{spec}@{snap}")]);
        }
        run(&["snap", "purge", &spec]);
        run(&["rm", &spec]);
    }
}

fn rbd_export(spec: &str, to: &Path) {
    let _ = fs::remove_file(to);
    rbd(&["export", spec, &s(to)]);
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_rbd_export_diff_applies_with_ferry_import_diff() {
    if !lab() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = LabImage::new("r2f");
    let spec = img.spec();
    rbd(&["create", &spec, "--size", "16"]);
    pyrbd(
        &img.0,
        "img.write(b'a' * 100000, 0)\nimg.write(b'b' * 5000, 6 << 20)\nimg.write(b'c' * 4096, 12 << 20)",
    );
    rbd(&["snap", "create", &format!("{spec}@s1")]);
    rbd(&["snap", "protect", &format!("{spec}@s1")]);
    // Discard a whole object and part of another, write, grow.
    pyrbd(
        &img.0,
        "img.discard(12 << 20, 4 << 20)\nimg.discard(0, 65536)\nimg.write(b'd' * 7000, 3 << 20)\nimg.resize(24 << 20)\nimg.write(b'e' * 9000, 20 << 20)",
    );
    rbd(&["snap", "create", &format!("{spec}@s2")]);
    // Shrink.
    pyrbd(
        &img.0,
        "img.resize(10 << 20)\nimg.write(b'f' * 100, 9 << 20)",
    );
    rbd(&["snap", "create", &format!("{spec}@s3")]);

    let d1 = tmp.path().join("d1");
    let d2 = tmp.path().join("d2");
    let d3 = tmp.path().join("d3");
    rbd(&["export-diff", &format!("{spec}@s1"), &s(&d1)]);
    rbd(&[
        "export-diff",
        "--from-snap",
        "s1",
        &format!("{spec}@s2"),
        &s(&d2),
    ]);
    rbd(&[
        "export-diff",
        "--from-snap",
        "s2",
        &format!("{spec}@s3"),
        &s(&d3),
    ]);
    assert!(
        count_zero_records(&d2) > 0,
        "rbd's s1..s2 diff should carry zero records"
    );

    let t = tmp.path().join("t.raw");
    let reference = tmp.path().join("ref.raw");
    for (diff, snap) in [(&d1, "s1"), (&d2, "s2"), (&d3, "s3")] {
        ok(
            &ferry(&["import-diff", &s(diff), &file_spec(&t)]),
            "ferry import-diff",
        );
        rbd_export(&format!("{spec}@{snap}"), &reference);
        assert_eq!(hash_file(&reference), hash_file(&t), "after {snap}");
    }

    // Through a pipe, into a fresh file.
    let piped = tmp.path().join("piped.raw");
    let sh = format!(
        "rbd --cluster site-a --no-progress export-diff {spec}@s1 - | {} import-diff - {}",
        bin("ferry").display(),
        file_spec(&piped)
    );
    let out = Command::new("sh").args(["-c", &sh]).output().unwrap();
    ok(&out, "rbd export-diff | ferry import-diff");
    rbd_export(&format!("{spec}@s1"), &reference);
    assert_eq!(hash_file(&reference), hash_file(&piped));

    // rbd export --export-format 2 (three diffs, protected snapshot record).
    let v2 = tmp.path().join("img.v2");
    rbd(&["export", "--export-format", "2", &spec, &s(&v2)]);
    let head = tmp.path().join("head.raw");
    ok(
        &ferry(&["import-diff", &s(&v2), &file_spec(&head)]),
        "import export-format 2",
    );
    rbd_export(&spec, &reference);
    assert_eq!(hash_file(&reference), hash_file(&head));
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_ferry_export_diff_applies_with_rbd_import_diff() {
    if !lab() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.raw");
    let b = tmp.path().join("b.raw");
    let c = tmp.path().join("c.raw");
    sparse_file(
        &a,
        16 << 20,
        &[
            (0, noise(1, 100_000)),
            (5 << 20, noise(2, 4 << 20)),
            (15 << 20, noise(3, 4096)),
        ],
    );
    fs::copy(&a, &b).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&b).unwrap();
    f.write_all_at(&vec![0u8; 1 << 20], 6 << 20).unwrap();
    f.write_all_at(&noise(4, 3000), 40_000).unwrap();
    f.set_len(20 << 20).unwrap();
    f.write_all_at(&noise(5, 10_000), 18 << 20).unwrap();
    drop(f);
    fs::copy(&b, &c).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&c).unwrap();
    f.set_len(7 << 20).unwrap();
    f.write_all_at(&noise(6, 100), 1 << 20).unwrap();
    drop(f);

    let img = LabImage::new("f2r");
    let spec = img.spec();
    rbd(&["create", &spec, "--size", "1"]);
    let d1 = tmp.path().join("d1");
    let d2 = tmp.path().join("d2");
    let d3 = tmp.path().join("d3");
    ok(
        &ferry(&[
            "export-diff",
            "--to-snap-name",
            "s1",
            &file_spec(&a),
            &s(&d1),
        ]),
        "export a",
    );
    ok(
        &ferry(&[
            "export-diff",
            "--from-file",
            &s(&a),
            "--from-snap-name",
            "s1",
            "--to-snap-name",
            "s2",
            &file_spec(&b),
            &s(&d2),
        ]),
        "export a..b",
    );
    ok(
        &ferry(&[
            "export-diff",
            "--from-file",
            &s(&b),
            "--from-snap-name",
            "s2",
            "--to-snap-name",
            "s3",
            &file_spec(&c),
            &s(&d3),
        ]),
        "export b..c",
    );
    assert!(count_zero_records(&d2) > 0);
    let reference = tmp.path().join("ref.raw");
    for (diff, snap, want) in [(&d1, "s1", &a), (&d2, "s2", &b), (&d3, "s3", &c)] {
        rbd(&["import-diff", &s(diff), &spec]);
        rbd_export(&format!("{spec}@{snap}"), &reference);
        assert_eq!(
            hash_file(want),
            hash_file(&reference),
            "rbd image at {snap}"
        );
    }
    // rbd refuses a diff whose from-snap the image lacks: our f record is real.
    let other = LabImage::new("f2r-other");
    rbd(&["create", &other.spec(), "--size", "1"]);
    let refused = Command::new("rbd")
        .args([
            "--cluster",
            "site-a",
            "--no-progress",
            "import-diff",
            &s(&d2),
            &other.spec(),
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());

    // export-format 2 into `rbd import`.
    let v2 = tmp.path().join("b.v2");
    ok(
        &ferry(&[
            "export-diff",
            "--export-format",
            "2",
            &file_spec(&b),
            &s(&v2),
        ]),
        "export v2",
    );
    let imported = LabImage::new("f2r-v2");
    rbd(&["import", "--export-format", "2", &s(&v2), &imported.spec()]);
    rbd_export(&imported.spec(), &reference);
    assert_eq!(hash_file(&b), hash_file(&reference));
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_large_image_streams_through_a_pipe_in_bounded_memory() {
    if !lab() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = LabImage::new("big");
    let spec = img.spec();
    rbd(&["create", &spec, "--size", "3072"]);
    // 40 MiB of data scattered over 3 GiB, plus a discard.
    pyrbd(
        &img.0,
        "import os\nfor i in range(40):\n    img.write(os.urandom(1 << 20), (i * 75 + 3) << 20)\nimg.discard(150 << 20, 8 << 20)",
    );
    rbd(&["snap", "create", &format!("{spec}@s1")]);
    let diff = tmp.path().join("big.diff");
    rbd(&["export-diff", &format!("{spec}@s1"), &s(&diff)]);
    let t = tmp.path().join("t.raw");
    let (good, err, rss) = ferry_measured(&["import-diff", "-", &file_spec(&t)], Some(&diff), None);
    assert!(good, "{err}");
    let reference = tmp.path().join("ref.raw");
    rbd_export(&format!("{spec}@s1"), &reference);
    assert_eq!(hash_file(&reference), hash_file(&t));
    // And back: ferry export-diff of the 3 GiB file into a new rbd image.
    let out = tmp.path().join("back.diff");
    let (good, err, rss_export) =
        ferry_measured(&["export-diff", &file_spec(&t), &s(&out)], None, None);
    assert!(good, "{err}");
    let back = LabImage::new("big-back");
    rbd(&["create", &back.spec(), "--size", "1"]);
    rbd(&["import-diff", &s(&out), &back.spec()]);
    rbd_export(&back.spec(), &reference);
    assert_eq!(hash_file(&t), hash_file(&reference));
    println!("lab 3 GiB: peak RSS ferry import-diff {rss} KiB, export-diff {rss_export} KiB");
    assert!(rss < 200 * 1024 && rss_export < 200 * 1024);
}
