//! The RBD-source harness's view of the lab through python3-rbd: a live
//! writer on the source images (a child process, stopped by closing its
//! stdin, that reports every round it wrote), and one-process readers that
//! hash source group snapshots, the standby's newest recovery points or the
//! image heads.
//!
//! Every hash is SHA-256 of the whole image (read in 4 MiB pieces) plus the
//! image's write-order counter: the first 8 bytes, where the writer's round
//! `i` writes `i` to image 0, then (that write completed) image 1, then
//! image 2. A crash-consistent group point therefore reads counters
//! `c0 >= c1 >= c2` with `c0 - c2 <= 1`, whatever its hashes.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{ChildStdin, Command, Stdio};

use ferry_e2e::lab::assert_ok;
use ferry_e2e::landing::Running;

/// One image's content at a point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// SHA-256 of the whole image, hex.
    pub sha: String,
    /// The write-order counter (the image's first 8 bytes).
    pub counter: u64,
}

/// The python functions every probe shares: connect to SITE's pool `rbd`
/// and hash an open image.
const PRELUDE: &str = r#"
import hashlib, json, rados, rbd, struct, sys
args = json.loads(sys.argv[1])
site = args['site']
c = rados.Rados(clustername=site, conffile='/etc/ceph/%s.conf' % site)
c.connect()
io = c.open_ioctx('rbd')
def digest(img):
    h = hashlib.sha256()
    size = img.size()
    off = 0
    first = bytes(8)
    while off < size:
        n = min(4 << 20, size - off)
        b = img.read(off, n)
        if off == 0:
            first = b[:8]
        h.update(b)
        off += n
    return [h.hexdigest(), struct.unpack('<Q', first)[0]]
"#;

/// Reads `script` (after [`PRELUDE`]) with `args` and returns the JSON it
/// prints.
fn probe(site: &str, args: serde_json::Value, script: &str) -> serde_json::Value {
    let mut args = args;
    args["site"] = serde_json::Value::from(site);
    let program = format!("{PRELUDE}{script}\nio.close()\nc.shutdown()\n");
    let out = Command::new("/usr/bin/python3")
        .args(["-c", &program, &args.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("running python3");
    assert_ok(&out, "python3-rbd probe");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the probe printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn content(v: &serde_json::Value) -> Content {
    Content {
        sha: v[0].as_str().expect("a hash").to_owned(),
        counter: v[1].as_u64().expect("a counter"),
    }
}

/// The heads of `images` on `site` (their writers stopped).
pub fn heads(site: &str, images: &[String]) -> Vec<Content> {
    let out = probe(
        site,
        serde_json::json!({ "images": images }),
        "out = []\n\
         for name in args['images']:\n\
         \x20   img = rbd.Image(io, name, read_only=True)\n\
         \x20   out.append(digest(img))\n\
         \x20   img.close()\n\
         print(json.dumps(out))",
    );
    out.as_array()
        .expect("a list")
        .iter()
        .map(content)
        .collect()
}

/// The source (site-a) group snapshots of ferry's RBD groups on `images`
/// that are not in `known`: group snapshot name to the images' contents,
/// in `images` order. A group snapshot not on every image is an error.
pub fn new_group_points(images: &[String], known: &[String]) -> BTreeMap<String, Vec<Content>> {
    let out = probe(
        "site-a",
        serde_json::json!({ "images": images, "known": known }),
        "out = {}\n\
         for name in args['images']:\n\
         \x20   img = rbd.Image(io, name, read_only=True)\n\
         \x20   snaps = [s for s in img.list_snaps() if s.get('group')]\n\
         \x20   for s in snaps:\n\
         \x20       g = s['group']\n\
         \x20       if not g['name'].startswith('ferry-') or g['snap_name'] in args['known']:\n\
         \x20           continue\n\
         \x20       img.set_snap_by_id(s['id'])\n\
         \x20       out.setdefault(g['snap_name'], {})[name] = digest(img)\n\
         \x20   img.close()\n\
         print(json.dumps(out))",
    );
    let mut points = BTreeMap::new();
    for (snap, per_image) in out.as_object().expect("an object") {
        let contents: Vec<Content> = images
            .iter()
            .map(|name| {
                let v = per_image.get(name).unwrap_or_else(|| {
                    panic!("group snapshot {snap} has no snapshot of {name}: {per_image}")
                });
                content(v)
            })
            .collect();
        points.insert(snap.clone(), contents);
    }
    points
}

/// Each standby (site-b) image's newest `ferry-rp-<ID>` snapshot: its id
/// and content (`None`: the image or its points are not there yet).
pub fn standby_points(images: &[String]) -> Vec<Option<(u64, Content)>> {
    let out = probe(
        "site-b",
        serde_json::json!({ "images": images }),
        "out = []\n\
         for name in args['images']:\n\
         \x20   try:\n\
         \x20       img = rbd.Image(io, name, read_only=True)\n\
         \x20   except rbd.ImageNotFound:\n\
         \x20       out.append(None)\n\
         \x20       continue\n\
         \x20   ids = [int(s['name'][len('ferry-rp-'):]) for s in img.list_snaps()\n\
         \x20          if s['name'].startswith('ferry-rp-')]\n\
         \x20   if not ids:\n\
         \x20       out.append(None)\n\
         \x20   else:\n\
         \x20       rp = max(ids)\n\
         \x20       img.set_snap('ferry-rp-%d' % rp)\n\
         \x20       out.append([rp, digest(img)])\n\
         \x20   img.close()\n\
         print(json.dumps(out))",
    );
    out.as_array()
        .expect("a list")
        .iter()
        .map(|v| (!v.is_null()).then(|| (v[0].as_u64().expect("a point id"), content(&v[1]))))
        .collect()
}

/// A live writer on site-a's `images`: each round writes its number to the
/// first 8 bytes of every image in order (the write-order counter) and 4
/// KiB of random bytes at a random 4 KiB block (never the first) of each,
/// then pauses 10 ms. It reports `rounds N` on stderr after every round.
pub struct Writer {
    running: Running,
    stdin: Option<ChildStdin>,
}

const WRITER: &str = r#"
import random, threading
stop = threading.Event()
def wait_stdin():
    sys.stdin.read()
    stop.set()
threading.Thread(target=wait_stdin, daemon=True).start()
imgs = [rbd.Image(io, n) for n in args['images']]
r = random.Random(args['seed'])
rounds = args['first_round']
while not stop.is_set():
    rounds += 1
    head = struct.pack('<Q', rounds) * 512
    for img in imgs:
        img.write(head, 0)
    for img in imgs:
        blocks = img.size() // 4096
        img.write(r.randbytes(4096), r.randrange(1, blocks) * 4096)
    sys.stderr.write('rounds %d\n' % rounds)
    sys.stderr.flush()
    stop.wait(0.01)
for img in imgs:
    img.close()
print(json.dumps(rounds))
"#;

impl Writer {
    /// Starts writing; round numbers continue from `first_round` (so the
    /// counters only grow over a run).
    pub fn start(images: &[String], seed: u64, first_round: u64) -> Writer {
        let args = serde_json::json!({
            "site": "site-a",
            "images": images,
            "seed": seed,
            "first_round": first_round,
        });
        let program = format!("{PRELUDE}{WRITER}\nio.close()\nc.shutdown()\n");
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", &program, &args.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the writer");
        let stdin = child.stdin.take();
        Writer {
            running: Running::new(child),
            stdin,
        }
    }

    /// The last round the writer reported (0: none yet); panics if it died.
    pub fn rounds(&mut self) -> u64 {
        let text = self.running.stderr_text();
        if !self.running.is_running() {
            panic!("the live writer died (a capture must never fail its writes):\n{text}");
        }
        last_round(&text)
    }

    /// Waits until the writer reported a round above `after` (it is
    /// writing); panics after 60 s.
    pub fn wait_past(&mut self, after: u64) -> u64 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let now = self.rounds();
            if now > after {
                return now;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the live writer wrote nothing in 60 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Stops the writer (its images closed cleanly, so it leaves no lock or
    /// watch behind) and returns its last round.
    pub fn stop(mut self) -> u64 {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let out = self.running.wait();
        assert_ok(&out, "the live writer");
        serde_json::from_slice(&out.stdout).expect("the writer prints its last round")
    }
}

fn last_round(text: &str) -> u64 {
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("rounds ")?.trim().parse().ok())
        .unwrap_or(0)
}
