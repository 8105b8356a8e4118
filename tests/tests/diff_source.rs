//! `diff:DIR` sources: a series of `rbd export-diff` files replicated to a
//! standby agent, one recovery point per file, the standby equal to the image
//! each file ends at; out-of-chain and malformed files are refused before
//! anything is committed. Diffs are made with `ferry export-diff` on raw
//! files (the format `rbd export-diff` writes; interop with the real `rbd`
//! tool is tested in rbd_diff.rs and rbd_lab.rs).

use std::path::Path;

use ferry_agent::imagegen;
use ferry_e2e::{ferry, hash_file, Pair};

const MIB: u64 = 1024 * 1024;

fn ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn export(image: &Path, from: Option<(&Path, &str)>, to_snap: &str, out: &Path) {
    let src = format!("file:{}", image.display());
    let out_s = out.display().to_string();
    let mut args = vec!["export-diff", &src, &out_s, "--to-snap-name", to_snap];
    let from_s;
    if let Some((from, name)) = from {
        from_s = from.display().to_string();
        args.extend(["--from-file", &from_s, "--from-snap-name", name]);
    }
    ok(&ferry(&args), "ferry export-diff");
}

fn sync(pair: &Pair, dir: &Path) -> std::process::Output {
    ferry(&[
        "sync",
        "--dir",
        &pair.primary_dir.display().to_string(),
        &format!("diff:{}", dir.display()),
        &pair.standby.target("vm1"),
        "--peer",
        &pair.standby.fingerprint,
        "--json",
    ])
}

#[test]
fn a_series_of_diffs_replicates_one_recovery_point_per_file() {
    let pair = Pair::new(None);
    let image = pair.path("vm1.raw");
    let spool = pair.path("spool");
    std::fs::create_dir_all(&spool).unwrap();
    imagegen::make_image(&image, 32 * MIB, 21).unwrap();
    export(&image, None, "s1", &spool.join("0001.diff"));
    let s1 = pair.path("s1.raw");
    std::fs::copy(&image, &s1).unwrap();

    let out = sync(&pair, &spool);
    ok(&out, "sync of the first diff");
    assert_eq!(hash_file(&pair.standby.image_path("vm1")), hash_file(&s1));

    // Two more diffs, chained: the second grows the image.
    imagegen::scattered_writes(&image, 200, 22).unwrap();
    export(&image, Some((&s1, "s1")), "s2", &spool.join("0002.diff"));
    let s2 = pair.path("s2.raw");
    std::fs::copy(&image, &s2).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    f.set_len(40 * MIB).unwrap();
    drop(f);
    imagegen::write_text(&image, 36 * MIB, 100_000, 23).unwrap();
    export(&image, Some((&s2, "s2")), "s3", &spool.join("0003.diff"));

    let out = sync(&pair, &spool);
    ok(&out, "sync of the second diff");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(report["base_epoch"], 0, "incremental: {report}");
    assert_eq!(hash_file(&pair.standby.image_path("vm1")), hash_file(&s2));
    let out = sync(&pair, &spool);
    ok(&out, "sync of the third diff");
    assert_eq!(
        hash_file(&pair.standby.image_path("vm1")),
        hash_file(&image)
    );

    // Nothing new: a clear refusal, nothing committed.
    let out = sync(&pair, &spool);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no new diff"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A malformed next file is refused and the standby keeps its point.
    let bytes = std::fs::read(spool.join("0003.diff")).unwrap();
    std::fs::write(spool.join("0004.diff"), &bytes[..bytes.len() / 3]).unwrap();
    let out = sync(&pair, &spool);
    assert!(!out.status.success(), "a truncated diff must fail");
    assert_eq!(
        hash_file(&pair.standby.image_path("vm1")),
        hash_file(&image)
    );
}

#[test]
fn the_first_diff_must_hold_the_whole_image() {
    let pair = Pair::new(None);
    let image = pair.path("vm1.raw");
    let old = pair.path("old.raw");
    let spool = pair.path("spool");
    std::fs::create_dir_all(&spool).unwrap();
    imagegen::make_image(&old, 8 * MIB, 31).unwrap();
    std::fs::copy(&old, &image).unwrap();
    imagegen::scattered_writes(&image, 10, 32).unwrap();
    export(&image, Some((&old, "s1")), "s2", &spool.join("0001.diff"));
    let out = sync(&pair, &spool);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("whole image"), "{err}");
}
