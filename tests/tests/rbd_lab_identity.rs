//! ferry as least-privileged Ceph users, and RBD namespaces, against the
//! two-site Ceph lab (`#[ignore]`d; `FERRY_CEPH_LAB=1`, as `scripts/test.sh`
//! runs them). Each test makes its own cephx users (names unique to the
//! test and process) with `ceph auth get-or-create`, writes their keyrings
//! into its temporary directory and removes the users at the end.
//!
//! - Agents on both sites run as the users README "Ceph users and caps"
//!   creates (the test checks the README still gives those caps): a
//!   two-image group is protected (RBD group capture), a dead client's
//!   exclusive lock on a standby image is broken (blocklisting), the group
//!   fails over to an older point (clones), and `ferry export-diff` /
//!   `import-diff` run as those users. The primary agent names its user in
//!   its config, the standby agent and `import-diff` in `CEPH_ARGS`, the
//!   other commands and `ferry-agent points` with `--id`/`--keyring`. Both
//!   agents log the user they connected as, never `client.admin`.
//! - A user with read-only caps is refused, with the user and the missing
//!   cap named, and a user without a key is refused by name.
//! - Two images of an RBD namespace replicate (one group recovery point)
//!   into a namespace of the standby pool, as users whose caps cover only
//!   those namespaces (and no mgr cap); verify, an incremental cycle, the
//!   diff commands and a restore work on `rbd:POOL/NAMESPACE/IMAGE`
//!   addresses. Such a user cannot open an image of another namespace, and
//!   a group recovery point across namespaces is refused by name.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ferry_e2e::cli::{ok as api_ok, run, text};
use ferry_e2e::lab::{self, assert_ok, pyrbd, rbd};
use ferry_e2e::{bin, hash_file, init_agent, Agent, Pair};
use serde_json::Value;

/// The caps README "Ceph users and caps" gives an agent over pool `rbd`.
const AGENT_CAPS: [&str; 6] = [
    "mon",
    "profile rbd",
    "osd",
    "profile rbd pool=rbd",
    "mgr",
    "profile rbd pool=rbd",
];

/// A cephx user of one lab site, removed on drop.
struct CephUser {
    site: &'static str,
    /// The id, without `client.`.
    id: String,
    keyring: PathBuf,
}

impl CephUser {
    /// `ceph auth get-or-create client.ID CAPS… -o DIR/SITE.client.ID.keyring`.
    fn create(site: &'static str, id: &str, caps: &[&str], dir: &Path) -> CephUser {
        let keyring = dir.join(format!("{site}.client.{id}.keyring"));
        let name = format!("client.{id}");
        let out = Command::new("ceph")
            .args(["--cluster", site, "auth", "get-or-create", &name])
            .args(caps)
            .args(["-o", &keyring.display().to_string()])
            .stdin(Stdio::null())
            .output()
            .expect("running ceph");
        assert_ok(&out, &format!("ceph auth get-or-create {name}"));
        let text = std::fs::read_to_string(&keyring).expect("the keyring was written");
        assert!(text.contains(&format!("[{name}]")), "{text}");
        assert!(!text.contains("client.admin"), "{text}");
        CephUser {
            site,
            id: id.to_owned(),
            keyring,
        }
    }

    fn keyring(&self) -> String {
        self.keyring.display().to_string()
    }

    /// `[ceph]` of an agent running as this user.
    fn ceph_section(&self) -> String {
        format!(
            "[ceph]\ncluster = \"{}\"\nclient_id = \"{}\"\nkeyring = \"{}\"\n",
            self.site,
            self.id,
            self.keyring()
        )
    }

    /// `--cluster SITE --id ID --keyring PATH`.
    fn flags(&self) -> Vec<String> {
        vec![
            "--cluster".into(),
            self.site.into(),
            "--id".into(),
            self.id.clone(),
            "--keyring".into(),
            self.keyring(),
        ]
    }
}

impl Drop for CephUser {
    fn drop(&mut self) {
        let _ = Command::new("ceph")
            .args(["--cluster", self.site, "auth", "rm"])
            .arg(format!("client.{}", self.id))
            .output();
    }
}

/// `ferry ARGS…` with no `CEPH_ARGS` inherited, and `env` added.
fn ferry_env(args: &[String], env: &[(&str, &str)]) -> Output {
    Command::new(bin("ferry"))
        .args(args)
        .env_remove("CEPH_ARGS")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("running ferry")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// BLAKE3 of an image (or snapshot) through `rbd export` (as admin: the
/// test's own view of the data).
fn export_hash(scratch: &Path, site: &str, spec: &str) -> String {
    let file = scratch.join("export.raw");
    let _ = std::fs::remove_file(&file);
    rbd(site, &["export", spec, &file.display().to_string()]);
    let hash = hash_file(&file);
    let _ = std::fs::remove_file(&file);
    hash
}

/// Every image of `pool` (`POOL` or `POOL/NAMESPACE`) on both sites whose
/// name contains `mark` (every image, with a namespace) removed on drop:
/// their RBD groups first, clones before their parents, then the namespace.
struct Cleanup {
    pool: String,
    mark: String,
    namespace: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let rbd_quiet = |site: &str, args: &[&str]| {
            Command::new("rbd")
                .args(["--cluster", site])
                .args(args)
                .stdin(Stdio::null())
                .output()
        };
        for site in ["site-a", "site-b"] {
            // The RBD groups of our images (an image in a group cannot be
            // removed; removing the group keeps its images).
            if let Ok(out) = rbd_quiet(site, &["group", "ls", &self.pool]) {
                for group in String::from_utf8_lossy(&out.stdout).lines() {
                    let group = format!("{}/{group}", self.pool);
                    let ours = self.namespace
                        || rbd_quiet(site, &["group", "image", "ls", &group]).is_ok_and(|o| {
                            String::from_utf8_lossy(&o.stdout).contains(self.mark.as_str())
                        });
                    if ours {
                        let _ = rbd_quiet(site, &["group", "rm", &group]);
                    }
                }
            }
            let Ok(out) = rbd_quiet(site, &["ls", &self.pool]) else {
                continue;
            };
            let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| self.namespace || l.contains(self.mark.as_str()))
                .map(str::to_owned)
                .collect();
            names.sort_by_key(|n| !n.starts_with("failover-"));
            for name in names {
                let spec = format!("{}/{name}", self.pool);
                let _ = rbd_quiet(site, &["snap", "purge", "--no-progress", &spec]);
                let _ = rbd_quiet(site, &["rm", "--no-progress", &spec]);
            }
            if self.namespace {
                let _ = rbd_quiet(site, &["namespace", "remove", &self.pool]);
            }
        }
    }
}

/// Asserts an agent's log shows it connected as `user` and never as admin.
fn assert_connected_as(agent: &Agent, user: &CephUser) {
    let log = agent.log_text();
    assert!(
        log.contains(&format!("as client.{}", user.id)),
        "the agent never connected as client.{}:\n{log}",
        user.id
    );
    assert!(
        !log.contains("as client.admin"),
        "the agent connected as client.admin:\n{log}"
    );
}

/// `ferry export-diff` of a snapshot of `image` on site-a as `ua` (its
/// flags) and `ferry import-diff` of it on site-b as `ub` (named by
/// `CEPH_ARGS`): the imported image is the snapshot. `tag` prefixes the
/// imported image's name; the diff file goes into `tmp`.
fn diff_commands_run_as_the_users(
    tmp: &Path,
    scratch: &Path,
    tag: &str,
    image: &str,
    ua: &CephUser,
    ub: &CephUser,
) {
    let snap = format!("rbd/{image}@d1");
    rbd("site-a", &["snap", "create", &snap]);
    let diff = tmp.join("d1.diff").display().to_string();
    let mut export = strings(&["export-diff"]);
    export.extend(ua.flags());
    export.extend([format!("rbd:{snap}"), diff.clone()]);
    assert_ok(
        &ferry_env(&export, &[]),
        "ferry export-diff as the primary's user",
    );
    let imported = format!("rbd/{tag}imported");
    let import = strings(&[
        "import-diff",
        "--cluster",
        "site-b",
        &diff,
        &format!("rbd:{imported}"),
    ]);
    let ceph_args = format!("--id {} --keyring {}", ub.id, ub.keyring());
    assert_ok(
        &ferry_env(&import, &[("CEPH_ARGS", ceph_args.as_str())]),
        "ferry import-diff as the standby's user, named by CEPH_ARGS",
    );
    assert_eq!(
        export_hash(scratch, "site-b", &imported),
        export_hash(scratch, "site-a", &snap),
        "the imported image is the snapshot"
    );
}

/// A client of site-b takes the exclusive lock of the standby image
/// `standby` (in pool `rbd`) and dies holding it.
fn a_client_dies_holding_the_lock(standby: &str) {
    let script = format!(
        "import os, time, rados, rbd\n\
         c = rados.Rados(clustername='site-b', conffile='/etc/ceph/site-b.conf')\n\
         c.connect()\n\
         img = rbd.Image(c.open_ioctx('rbd'), '{standby}')\n\
         for attempt in range(120):\n\
         \x20   try:\n\
         \x20       img.lock_acquire(rbd.RBD_LOCK_MODE_EXCLUSIVE)\n\
         \x20       os._exit(0)\n\
         \x20   except Exception:\n\
         \x20       time.sleep(0.5)\n\
         os._exit(3)\n"
    );
    let out = Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert_ok(&out, "a client that dies holding the standby image's lock");
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_restricted_users_protect_capture_fail_over_and_diff_without_admin() {
    if !lab::enabled() {
        return;
    }
    let readme = include_str!("../../README.md");
    assert!(
        readme.contains("mon 'profile rbd' osd 'profile rbd pool=rbd' mgr 'profile rbd pool=rbd'"),
        "README no longer gives the caps this test runs with"
    );
    let tag = format!("ferry-t-cap{}-", std::process::id());
    let _cleanup = Cleanup {
        pool: "rbd".into(),
        mark: tag.clone(),
        namespace: false,
    };
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let ua = CephUser::create("site-a", &format!("{tag}a"), &AGENT_CAPS, tmp.path());
    let ub = CephUser::create("site-b", &format!("{tag}b"), &AGENT_CAPS, tmp.path());

    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let (a_fp, b_fp) = (init_agent(&a_dir), init_agent(&b_dir));
    std::fs::write(a_dir.join("config.toml"), ua.ceph_section()).unwrap();
    // The standby names its user in CEPH_ARGS (as a systemd unit's
    // Environment= would), its config only the cluster.
    std::fs::write(
        b_dir.join("config.toml"),
        "[standby]\nbackend = \"rbd\"\nrbd_pool = \"rbd\"\n[ceph]\ncluster = \"site-b\"\n",
    )
    .unwrap();
    let b_ceph_args = format!("--id {} --keyring {}", ub.id, ub.keyring());
    let mut a = Agent::start(&a_dir, &a_fp, &[]);
    let mut b = Agent::start_with(&b_dir, &b_fp, &[], &[("CEPH_ARGS", b_ceph_args.as_str())]);
    let out = run(&b_dir, &["service", "key"]);
    assert!(out.status.success(), "{}", text(&out));
    let key = String::from_utf8(out.stdout).unwrap();
    api_ok(&a_dir, &["service", "create", "--key", key.trim()]);

    // Two images protected as one group: every cycle is an RBD group capture.
    let images: Vec<String> = (0..2).map(|i| format!("{tag}img{i}")).collect();
    for (i, image) in images.iter().enumerate() {
        rbd(
            "site-a",
            &["create", "--size", "64", &format!("rbd/{image}")],
        );
        pyrbd(
            "site-a",
            image,
            &format!("r = random.Random({i})\nfor k in range(4):\n\x20   img.write(r.randbytes(1 << 20), k << 22)"),
        );
    }
    api_ok(&a_dir, &["group", "create", "g1", "--wait"]);
    let mut add = vec!["group".to_owned(), "add".into(), "g1".into()];
    add.extend(images.iter().map(|i| format!("rbd:rbd/{i}")));
    add.push("--wait".into());
    api_ok(&a_dir, &add.iter().map(String::as_str).collect::<Vec<_>>());
    api_ok(&a_dir, &["group", "start", "g1", "--wait"]);
    api_ok(&a_dir, &["rp", "create", "g1", "--name", "r1", "--wait"]);
    let at_r1: Vec<String> = images
        .iter()
        .map(|i| export_hash(&scratch, "site-a", &format!("rbd/{i}")))
        .collect();

    diff_commands_run_as_the_users(tmp.path(), &scratch, &tag, &images[0], &ua, &ub);

    // A client dies holding the exclusive lock of a standby image: the
    // standby breaks it (blocklisting the dead client) on its next cycle.
    let standby: Vec<String> = api_ok(&b_dir, &["group", "show", "g1"])["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["standby_target"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(standby.len(), 2, "{standby:?}");
    a_client_dies_holding_the_lock(&standby[0]);
    for image in &images {
        pyrbd("site-a", image, "img.write(b'x' * (1 << 20), 0)");
    }
    api_ok(&a_dir, &["rp", "create", "g1", "--name", "r2", "--wait"]);
    assert!(
        b.log_text().contains("broke the exclusive lock"),
        "the standby never broke the dead client's lock:\n{}",
        b.log_text()
    );

    // Disaster: fail over to the older point r1 (clones of its snapshots).
    a.kill9();
    let op = api_ok(&b_dir, &["group", "failover", "g1", "--rp", "r1", "--wait"]);
    assert_eq!(op["state"]["state"], "succeeded", "{op}");
    for (name, want) in standby.iter().zip(&at_r1) {
        let clone = format!("rbd/failover-{name}");
        assert_eq!(
            &export_hash(&scratch, "site-b", &clone),
            want,
            "{clone} is not r1"
        );
    }
    assert_connected_as(&a, &ua);
    assert_connected_as(&b, &ub);

    // The offline tools take the user on their command line: a user with
    // no key is refused (so the flags are what is used), the standby's
    // user lists the points.
    b.stop();
    let points = |flags: &[String]| {
        Command::new(bin("ferry-agent"))
            .args(["points", "--dir", &b_dir.display().to_string(), &standby[0]])
            .args(flags)
            .env_remove("CEPH_ARGS")
            .output()
            .expect("ferry-agent points")
    };
    let nokey = strings(&["--id", &format!("{tag}nokey"), "--keyring", "/nonexistent"]);
    let out = points(&nokey);
    assert!(!out.status.success(), "points ran as a user without a key");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("client.{tag}nokey")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = points(&ub.flags());
    assert_ok(&out, "ferry-agent points as the standby's user");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rp "),
        "{out:?}"
    );
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_a_user_without_the_caps_is_refused_by_name() {
    if !lab::enabled() {
        return;
    }
    let tag = format!("ferry-t-nocap{}-", std::process::id());
    let _cleanup = Cleanup {
        pool: "rbd".into(),
        mark: tag.clone(),
        namespace: false,
    };
    let pair = Pair::new(None);
    std::fs::write(
        pair.primary_dir.join("config.toml"),
        "[ceph]\ncluster = \"site-a\"\n",
    )
    .unwrap();
    let image = format!("{tag}img");
    rbd(
        "site-a",
        &["create", "--size", "16", &format!("rbd/{image}")],
    );
    // Read-only caps: enough to read an image, not to snapshot it.
    let ro = CephUser::create(
        "site-a",
        &format!("{tag}ro"),
        &[
            "mon",
            "profile rbd",
            "osd",
            "profile rbd-read-only pool=rbd",
        ],
        pair.tmp.path(),
    );
    let mut sync = strings(&["sync", "--dir", &pair.primary_dir.display().to_string()]);
    sync.extend([
        "--id".into(),
        ro.id.clone(),
        "--keyring".into(),
        ro.keyring(),
    ]);
    sync.extend([
        format!("rbd:rbd/{image}"),
        pair.standby.target("img"),
        "--peer".into(),
        pair.standby.fingerprint.clone(),
    ]);
    let out = ferry_env(&sync, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for needle in [
        format!("as client.{}", ro.id),
        "lacks a cap".to_owned(),
        "not permitted".to_owned(),
    ] {
        assert!(stderr.contains(&needle), "no {needle:?} in: {stderr}");
    }
    let snaps =
        String::from_utf8_lossy(&rbd("site-a", &["snap", "ls", &format!("rbd/{image}")]).stdout)
            .to_string();
    assert!(
        !snaps.contains("ferry."),
        "a refused user made a snapshot: {snaps}"
    );

    // A user the cluster has no key for: refused at connect, by name.
    let nokey = format!("{tag}nokey");
    let args = strings(&[
        "export-diff",
        "--cluster",
        "site-a",
        "--id",
        &nokey,
        "--keyring",
        &pair.path("absent.keyring").display().to_string(),
        &format!("rbd:rbd/{image}"),
        &pair.path("x.diff").display().to_string(),
    ]);
    let out = ferry_env(&args, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("client.{nokey}")) && stderr.contains("rados_connect"),
        "{stderr}"
    );
}

/// Writes seeded data into image `image` of namespace `ns` of site-a's pool.
fn write_ns(ns: &str, image: &str, seed: u64) {
    let script = format!(
        "import rados, rbd, random\n\
         c = rados.Rados(clustername='site-a', conffile='/etc/ceph/site-a.conf')\n\
         c.connect()\n\
         io = c.open_ioctx('rbd')\n\
         io.set_namespace('{ns}')\n\
         img = rbd.Image(io, '{image}')\n\
         r = random.Random({seed})\n\
         for k in range(64):\n\
         \x20   img.write(r.randbytes(65536), r.randrange(0, img.size() >> 16) << 16)\n\
         img.close(); io.close(); c.shutdown()\n"
    );
    let out = Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert_ok(&out, "python3-rbd write in a namespace");
}

/// The diff commands address namespaced images (in `pool`, `POOL/NAMESPACE`)
/// too: `ferry export-diff` of a snapshot as `ua`, `ferry import-diff` of it
/// into the standby's namespace as `ub`.
fn diff_commands_address_namespaced_images(
    pair: &Pair,
    scratch: &Path,
    pool: &str,
    ua: &CephUser,
    ub: &CephUser,
) {
    let snap = format!("{pool}/vol0@d1");
    rbd("site-a", &["snap", "create", &snap]);
    let diff = pair.path("d1.diff").display().to_string();
    let mut export = strings(&["export-diff"]);
    export.extend(ua.flags());
    export.extend([format!("rbd:{snap}"), diff.clone()]);
    assert_ok(
        &ferry_env(&export, &[]),
        "ferry export-diff from a namespace",
    );
    let imported = format!("{pool}/imported");
    let mut import = strings(&["import-diff"]);
    import.extend(ub.flags());
    import.extend([diff, format!("rbd:{imported}")]);
    assert_ok(
        &ferry_env(&import, &[]),
        "ferry import-diff into a namespace",
    );
    assert_eq!(
        export_hash(scratch, "site-b", &imported),
        export_hash(scratch, "site-a", &snap)
    );
}

/// Restore (agent stopped) writes point `rp` of vol0 into the standby's
/// namespace (`pool`, `POOL/NAMESPACE`), and refuses another one.
fn restore_writes_into_the_standby_namespace_only(
    pair: &mut Pair,
    scratch: &Path,
    pool: &str,
    rp: u64,
) {
    pair.standby.stop();
    let standby_dir = pair.standby.dir.display().to_string();
    let restore = |out: &str| {
        Command::new(bin("ferry-agent"))
            .args([
                "restore",
                "--dir",
                &standby_dir,
                "vol0",
                "--rp",
                &rp.to_string(),
            ])
            .args(["--out", out])
            .env_remove("CEPH_ARGS")
            .output()
            .expect("ferry-agent restore")
    };
    let refused = restore("rbd:rbd/restored");
    assert!(!refused.status.success(), "restore into another namespace");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(&format!("rbd:{pool}/NAME")),
        "{refused:?}"
    );
    assert_ok(
        &restore(&format!("rbd:{pool}/restored")),
        "ferry-agent restore",
    );
    assert_eq!(
        export_hash(scratch, "site-b", &format!("{pool}/restored")),
        export_hash(scratch, "site-b", &format!("{pool}/vol0@ferry-rp-{rp}")),
        "the restored image is the point"
    );
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_replicates_between_rbd_namespaces_as_namespace_limited_users() {
    if !lab::enabled() {
        return;
    }
    let tag = format!("ferry-t-ns{}", std::process::id());
    let ns = tag.clone();
    let pool = format!("rbd/{ns}");
    let _cleanup = Cleanup {
        pool: pool.clone(),
        mark: String::new(),
        namespace: true,
    };
    for site in ["site-a", "site-b"] {
        let out = Command::new("rbd")
            .args(["--cluster", site, "namespace", "create", &pool])
            .output()
            .expect("rbd");
        assert_ok(&out, "rbd namespace create");
    }
    let tmp = tempfile::tempdir().unwrap();
    let caps = format!("profile rbd pool=rbd namespace={ns}");
    let caps = ["mon", "profile rbd", "osd", caps.as_str()];
    let ua = CephUser::create("site-a", &format!("{tag}-a"), &caps, tmp.path());
    let ub = CephUser::create("site-b", &format!("{tag}-b"), &caps, tmp.path());
    let pair = Pair::new(Some(&format!(
        "[standby]\nbackend = \"rbd\"\nrbd_pool = \"rbd\"\nrbd_namespace = \"{ns}\"\n{}",
        ub.ceph_section()
    )));
    std::fs::write(pair.primary_dir.join("config.toml"), ua.ceph_section()).unwrap();
    let scratch = pair.path("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let images = ["vol0", "vol1"];
    for (seed, image) in images.iter().enumerate() {
        rbd(
            "site-a",
            &["create", "--size", "32", &format!("{pool}/{image}")],
        );
        write_ns(&ns, image, seed as u64);
    }
    let dir = pair.primary_dir.display().to_string();
    let sync = || -> Value {
        let mut args = strings(&["sync", "--dir", &dir, "--json"]);
        for image in images {
            args.push(format!("rbd:{pool}/{image}"));
            args.push(pair.standby.target(image));
        }
        args.extend(["--peer".into(), pair.standby.fingerprint.clone()]);
        let out = ferry_env(&args, &[]);
        assert_ok(&out, "ferry sync between namespaces");
        serde_json::from_slice(&out.stdout).expect("sync --json")
    };
    let mut rp = 0;
    for round in 0..2 {
        if round == 1 {
            write_ns(&ns, images[0], 10);
        }
        let report = sync();
        rp = report["recovery_point"].as_u64().expect("rp");
        for image in images {
            assert_eq!(
                export_hash(&scratch, "site-b", &format!("{pool}/{image}@ferry-rp-{rp}")),
                export_hash(&scratch, "site-a", &format!("{pool}/{image}")),
                "round {round}: the standby's {image} in {pool} is not the source"
            );
        }
    }
    // Images of two namespaces cannot share a group recovery point: refused
    // by name before anything is made.
    let _default_cleanup = Cleanup {
        pool: "rbd".into(),
        mark: tag.clone(),
        namespace: false,
    };
    let stray = format!("{tag}-default");
    rbd(
        "site-a",
        &["create", "--size", "8", &format!("rbd/{stray}")],
    );
    let mixed = strings(&[
        "sync",
        "--dir",
        &dir,
        &format!("rbd:{pool}/vol0"),
        &pair.standby.target("vol0"),
        &format!("rbd:rbd/{stray}"),
        &pair.standby.target("stray"),
        "--peer",
        &pair.standby.fingerprint,
    ]);
    // The namespace-limited user cannot even open the other image…
    let out = ferry_env(&mixed, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "a namespace-limited user left its namespace"
    );
    assert!(
        stderr.contains(&format!("rbd/{stray} as client.{}", ua.id)),
        "{stderr}"
    );
    // …and a pool-wide user is refused the group.
    let wide = CephUser::create("site-a", &format!("{tag}-wide"), &AGENT_CAPS, tmp.path());
    let mut mixed = mixed;
    mixed.extend(wide.flags());
    let out = ferry_env(&mixed, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "a group across namespaces was accepted"
    );
    assert!(stderr.contains("must be in one RBD namespace"), "{stderr}");
    let default_ns = String::from_utf8_lossy(&rbd("site-b", &["ls", "rbd"]).stdout).to_string();
    for image in images {
        assert!(
            !default_ns.lines().any(|l| l == image),
            "{image} landed in the default namespace"
        );
    }
    let verify = strings(&[
        "verify",
        "--dir",
        &dir,
        &format!("rbd:{pool}/vol1"),
        &pair.standby.target("vol1"),
        "--peer",
        &pair.standby.fingerprint,
    ]);
    assert_ok(
        &ferry_env(&verify, &[]),
        "ferry verify of a namespaced image",
    );

    diff_commands_address_namespaced_images(&pair, &scratch, &pool, &ua, &ub);
    assert_connected_as(&pair.standby, &ub);

    let mut pair = pair;
    restore_writes_into_the_standby_namespace_only(&mut pair, &scratch, &pool, rp);
}
