//! The command line of the control commands (`ferry service|group|rp|policy|qos|status|op`):
//! the clap types only. What each command does is in `commands.rs`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// How to reach the agent.
#[derive(Args, Clone, Debug, Default)]
pub struct Conn {
    /// Agent data directory (API address and token are read from it).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// API URL (http://HOST:PORT, or https://HOST:PORT with
    /// --agent-fingerprint) instead of --dir.
    #[arg(long)]
    pub agent: Option<String>,
    /// With an https:// agent: the SHA-256 fingerprint of the certificate it
    /// serves (printed by `ferry-agent init` for its own certificate, or
    /// `openssl x509 -noout -fingerprint -sha256`); default with --dir: the
    /// one in DIR/api.fingerprint.
    #[arg(long)]
    pub agent_fingerprint: Option<String>,
    /// API token with --agent (visible in `ps`: prefer --token-file or
    /// FERRY_TOKEN).
    #[arg(long)]
    pub token: Option<String>,
    /// File holding the API token (must not be readable by group or
    /// others). Without --token and --token-file, FERRY_TOKEN is used, then
    /// DIR/api.token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Print JSON on stdout (times in ms since the epoch, as the API).
    #[arg(long)]
    pub json: bool,
    /// The zone times are shown in (from [`ShowTz`]: not a flag of every
    /// command, since `policy create --tz` names the policy's zone).
    #[arg(skip)]
    pub tz: Option<String>,
}

/// `--tz` of the commands that print times.
#[derive(Args, Clone, Debug, Default)]
pub struct ShowTz {
    /// Show times in this IANA zone (default: the system's), e.g. UTC.
    #[arg(long)]
    pub tz: Option<String>,
}

impl Conn {
    /// `self` showing times in `show.tz` when given.
    pub fn with_tz(mut self, show: ShowTz) -> Conn {
        if show.tz.is_some() {
            self.tz = show.tz;
        }
        self
    }
}

impl Conn {
    /// `self` with unset fields taken from `outer` (the top-level flags).
    pub fn or(self, outer: &Conn) -> Conn {
        Conn {
            dir: self.dir.or_else(|| outer.dir.clone()),
            agent: self.agent.or_else(|| outer.agent.clone()),
            agent_fingerprint: self
                .agent_fingerprint
                .or_else(|| outer.agent_fingerprint.clone()),
            token: self.token.or_else(|| outer.token.clone()),
            token_file: self.token_file.or_else(|| outer.token_file.clone()),
            json: self.json || outer.json,
            tz: self.tz.or_else(|| outer.tz.clone()),
        }
    }
}

/// A control command.
#[derive(Subcommand, Debug)]
pub enum ControlCommand {
    /// Services: this site's connection to a remote site.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Protection groups.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Recovery points of a group.
    #[command(subcommand)]
    Rp(RpCmd),
    /// Recovery-point policies.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Bandwidth limits.
    #[command(subcommand)]
    Qos(QosCmd),
    /// Groups, progress and QoS at a glance.
    Status {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Refresh every second until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Is DR OK? Every group rolled up into OK, WARNING or CRITICAL, one
    /// line per problem; exit 0/1/2 as a monitoring plugin (3: UNKNOWN,
    /// the agent could not be asked). Works on either site.
    Health {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// RPO warning threshold for groups without their own (e.g. 15m).
        #[arg(long)]
        rpo_warn: Option<String>,
        /// RPO critical threshold for groups without their own (e.g. 1h).
        #[arg(long)]
        rpo_crit: Option<String>,
        /// The peer out of reach for longer than this is CRITICAL.
        #[arg(long, default_value = "5m")]
        unreachable: String,
        /// Failed operations older than this are not reported.
        #[arg(long, default_value = "24h")]
        ops_window: String,
    },
    /// Show (and wait for) an operation: `ferry op ID [--wait]`, or list
    /// them: `ferry op list`.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Op {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// `list`.
        #[command(subcommand)]
        cmd: Option<OpCmd>,
        /// Operation id.
        #[arg(required = true)]
        id: Option<i64>,
        /// Wait until it has finished.
        #[arg(long)]
        wait: bool,
    },
}

/// `ferry op list`
#[derive(Subcommand, Debug)]
pub enum OpCmd {
    /// The journal, newest first: every operation of this agent.
    List {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Time zone of the times shown.
        #[command(flatten)]
        show: ShowTz,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only this group's.
        #[arg(long)]
        group: Option<String>,
    },
}

/// `ferry service …`
#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    /// On the standby: print a one-time service key (one line).
    Key {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Endpoint(s) the primary should use, `HOST:PORT[,HOST:PORT…]`
        /// (default: the agent's listen address; on a site with its control
        /// state in RADOS, every live agent's).
        #[arg(long)]
        endpoint: Option<String>,
        /// Validity in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// On the primary: pair with the agent that issued KEY.
    Create {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// The service key printed by `ferry service key` on the standby.
        #[arg(long)]
        key: String,
        /// Service name (the same on both agents).
        #[arg(long, default_value = "dr")]
        name: String,
        /// This agent's endpoint as the peer should reach it.
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// List services.
    List {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Time zone of the times shown.
        #[command(flatten)]
        show: ShowTz,
    },
    /// Show one service (its standby endpoints: `remote_endpoints`).
    Show {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Service name or id.
        name: String,
    },
    /// Test the connection to the peer.
    Verify {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Service name or id.
        name: String,
    },
    /// Re-configure endpoints.
    Update {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Service name or id.
        name: String,
        /// New local endpoint.
        #[arg(long)]
        local_endpoint: Option<String>,
        /// New remote endpoint(s): `HOST:PORT`, or the standby site's
        /// agents as `HOST:PORT,HOST:PORT…` (tried in turn).
        #[arg(long)]
        remote_endpoint: Option<String>,
    },
    /// Delete a service (refused while a group uses it).
    Delete {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Service name or id.
        name: String,
    },
}

/// `ferry group …`
#[derive(Subcommand, Debug)]
pub enum GroupCmd {
    /// Create a protection group (its standby group is created and mapped).
    Create {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name.
        name: String,
        /// Service (default: the only one).
        #[arg(long)]
        service: Option<String>,
        /// Remote project/tenant.
        #[arg(long, default_value = "")]
        remote_project: String,
        /// `ferry health` says WARNING when the RPO lag is above this
        /// (e.g. 5m, 1h30m, 90s; default: not checked).
        #[arg(long)]
        rpo_warn: Option<String>,
        /// `ferry health` says CRITICAL when the RPO lag is above this.
        #[arg(long)]
        rpo_crit: Option<String>,
        /// Wait for the operation.
        #[arg(long)]
        wait: bool,
    },
    /// Change a group's settings: its RPO thresholds (`off` removes one).
    /// On either site: each agent checks its own.
    Update {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name or id.
        name: String,
        /// WARNING above this RPO lag (e.g. 5m; `off`: none).
        #[arg(long)]
        rpo_warn: Option<String>,
        /// CRITICAL above this RPO lag (e.g. 15m; `off`: none).
        #[arg(long)]
        rpo_crit: Option<String>,
    },
    /// List groups.
    List {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Time zone of the times shown.
        #[command(flatten)]
        show: ShowTz,
    },
    /// Show a group with resources, recovery points and progress.
    Show {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Time zone of the times shown.
        #[command(flatten)]
        show: ShowTz,
        /// Group name or id.
        name: String,
        /// Refresh every second until interrupted (with --json: one JSON
        /// line per refresh).
        #[arg(long)]
        watch: bool,
    },
    /// The group's RPO lag over the last hour, one sample every 10 s, as
    /// this agent recorded it (on the primary or the standby).
    RpoHistory {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Time zone of the times shown.
        #[command(flatten)]
        show: ShowTz,
        /// Group name or id.
        name: String,
    },
    /// Add resources (source URIs), or a VM's volumes with --vm.
    Add {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name or id.
        name: String,
        /// Source URIs (file:/path, rbd:pool/image); with --vm the first is the boot volume.
        #[arg(required = true)]
        uris: Vec<String>,
        /// The VM these volumes belong to.
        #[arg(long)]
        vm: Option<String>,
        /// Wait for the operation.
        #[arg(long)]
        wait: bool,
    },
    /// Remove resources.
    Remove {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name or id.
        name: String,
        /// Source URIs.
        #[arg(required = true)]
        uris: Vec<String>,
        /// Wait for the operation.
        #[arg(long)]
        wait: bool,
    },
    /// Start replication.
    Start {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name or id.
        name: String,
        /// Wait for the operation.
        #[arg(long)]
        wait: bool,
    },
    /// Stop replication.
    Stop {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name or id.
        name: String,
        /// Wait for the operation.
        #[arg(long)]
        wait: bool,
    },
    /// (primary) Planned migration: final sync of everything written before
    /// the command (quiesce the volumes first), checksums compared, then the
    /// roles swap; start sync on the new primary to replicate back.
    Migrate {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name or id.
        name: String,
        /// Wait for the operation.
        #[arg(long)]
        wait: bool,
    },
    /// (standby / new primary) Restore one resource at a recovery point
    /// into a new image: an RBD clone of the point (no copy), a reflink of
    /// the file where the file system has them, else a copy.
    Restore {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name or id.
        name: String,
        /// The resource's source URI (as on the primary).
        #[arg(long)]
        resource: String,
        /// Recovery point name.
        #[arg(long)]
        rp: String,
        /// New file (absolute path, must not exist) or, with an RBD
        /// standby, a new image name in the standby pool.
        #[arg(long)]
        out: String,
        /// A full, independent copy (the slow way) instead of a clone or
        /// reflink.
        #[arg(long)]
        copy: bool,
        /// Wait for the operation.
        #[arg(long)]
        wait: bool,
    },
    /// (standby) Unplanned failover: every resource becomes a volume at a
    /// recovery point (default: the latest synced data), without copying:
    /// at the latest point the standby copy itself (RBD: same image name;
    /// files: the file moved to DIR/failover/GROUP/), at an older one an
    /// RBD clone `failover-IMAGE` or a reflink (else a copy) in
    /// DIR/failover/GROUP/. `group show` names each volume. The group
    /// becomes a new primary.
    Failover {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name or id.
        name: String,
        /// Recovery point name (default: latest synced data).
        #[arg(long)]
        rp: Option<String>,
        /// Full, independent copies (`failover-IMAGE`, DIR/failover/GROUP/)
        /// instead: the standby copies stay as they are.
        #[arg(long)]
        copy: bool,
        /// Wait for the operation.
        #[arg(long)]
        wait: bool,
    },
    /// (standby) DR drill: writable volumes of every resource at one
    /// recovery point (default: the latest group recovery point held),
    /// DIR/drill/GROUP/IMAGE.raw or drill-IMAGE in the standby pool, while
    /// replication goes on; `--end` removes them. The point stays pinned
    /// until the drill ends; the standby copies are never touched.
    Drill {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name or id.
        name: String,
        /// Recovery point name (default: the latest group point held).
        #[arg(long, conflicts_with = "end")]
        rp: Option<String>,
        /// End the drill: remove its volumes and unpin its point.
        #[arg(long)]
        end: bool,
        /// Wait for the operation.
        #[arg(long)]
        wait: bool,
    },
    /// (new primary) Re-protect after an unplanned failover, once the old
    /// primary site is back: its volumes become this group's standby
    /// copies and only the differences cross the link (what this site
    /// wrote since the last recovery point both sites hold, plus what the
    /// old primary wrote after it, which is rolled back there; the old
    /// volumes keep those writes, named in the operation's result). The
    /// group then replicates to the old site; `migrate` fails back.
    Reprotect {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name or id.
        name: String,
        /// Wait for the operation.
        #[arg(long)]
        wait: bool,
    },
    /// Delete a group (and its standby group).
    Delete {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name or id.
        name: String,
        /// Wait for the operation.
        #[arg(long)]
        wait: bool,
    },
}

/// `ferry rp …`
#[derive(Subcommand, Debug)]
pub enum RpCmd {
    /// Create a manual recovery point (the next replication cycle, named).
    Create {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name or id.
        group: String,
        /// Recovery point name (default manual-TIMESTAMP).
        #[arg(long)]
        name: Option<String>,
        /// Wait for the operation.
        #[arg(long)]
        wait: bool,
    },
    /// List a group's recovery points.
    List {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Time zone of the times shown.
        #[command(flatten)]
        show: ShowTz,
        /// Group name or id.
        group: String,
    },
    /// Delete a recovery point (here and on the standby).
    Delete {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name or id.
        group: String,
        /// Recovery point name.
        rp: String,
        /// Wait for the operation.
        #[arg(long)]
        wait: bool,
    },
}

/// `ferry policy …`
#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Create a policy.
    Create {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Policy name.
        name: String,
        /// `daily HH:MM`, `weekly mon,thu HH:MM` or `monthly 1,15,month-end HH:MM`.
        #[arg(long)]
        schedule: String,
        /// IANA time zone.
        #[arg(long, default_value = "UTC")]
        tz: String,
        /// Effective from (RFC 3339; default now).
        #[arg(long)]
        from: Option<String>,
        /// Effective until (RFC 3339, exclusive).
        #[arg(long)]
        until: Option<String>,
    },
    /// List policies.
    List {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Time zone of the times shown.
        #[command(flatten)]
        show: ShowTz,
    },
    /// Bind a policy to a group with a retention (1..=5).
    Bind {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group.
        group: String,
        /// Policy.
        policy: String,
        /// Newest N policy recovery points kept.
        #[arg(long)]
        retention: u8,
    },
    /// Unbind a group's policy.
    Unbind {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group.
        group: String,
    },
    /// Delete a policy (refused while bound).
    Delete {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Policy.
        name: String,
    },
}

/// `ferry qos …`
#[derive(Subcommand, Debug)]
pub enum QosCmd {
    /// Set limits (e.g. 100MB/s, 800Mbit, unlimited; K/M/G are 1024-based,
    /// B is a byte, b a bit); unset ones are kept.
    Set {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Limit of writes into this site's standby images.
        #[arg(long)]
        receive: Option<String>,
        /// Limit of this agent's replication traffic.
        #[arg(long)]
        send: Option<String>,
    },
    /// Show limits.
    Show {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
    },
}
