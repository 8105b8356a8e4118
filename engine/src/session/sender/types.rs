//! The sender's public types: where and how to sync (target, options), what
//! one image of a group sync is, live progress, the reports of a sync, and
//! why it failed. Shared by the sender's files, below all of them.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_protocol::{AgentId, ErrorFrame, ImageName, SeqNo};
use tokio::sync::watch;

use crate::pipeline::{PipelineConfig, PipelineError};
use crate::qos::RateLimiter;
use crate::session::framing::FramingError;
use crate::session::send_window::WindowError;
use crate::source::{ExtentSource, SourceError};
use crate::transport::{TransportError, TransportSettings};

/// Where and how to replicate one image.
pub struct SyncTarget {
    /// The standby agent's address.
    pub addr: SocketAddr,
    /// The standby agent's certificate fingerprint.
    pub peer: AgentId,
    /// Name of the image on the standby.
    pub image: ImageName,
}

/// Knobs of a sync.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// QUIC settings.
    pub transport: TransportSettings,
    /// Pipeline settings.
    pub pipeline: PipelineConfig,
    /// Wire bandwidth limit (shared, adjustable while the sync runs).
    pub limiter: RateLimiter,
    /// Unacknowledged batch bytes kept for resending; sending pauses at this.
    pub max_unacked_bytes: u64,
    /// How long to keep trying to reconnect after the link is lost.
    pub reconnect_for: Duration,
    /// Largest frame.
    pub max_frame_len: usize,
    /// An unchanged stretch of this many source bytes is still reported to
    /// the standby (an empty batch), so a resume does not rescan it.
    pub empty_batch_every: u64,
    /// Recovery point ids are wall-clock milliseconds; a new one is at least
    /// this + 1. The caller passes the newest point it knows the standby
    /// committed, so a clock stepped back behind it does not make every
    /// commit "not newer than the committed" one.
    pub min_recovery_point: u64,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            transport: TransportSettings::default(),
            pipeline: PipelineConfig::default(),
            limiter: RateLimiter::unlimited(),
            max_unacked_bytes: 64 * 1024 * 1024,
            reconnect_for: Duration::from_secs(120),
            max_frame_len: ferry_protocol::DEFAULT_MAX_FRAME_LEN,
            empty_batch_every: 256 * 1024 * 1024,
            min_recovery_point: 0,
        }
    }
}

/// Live progress of a sync.
#[derive(Clone, Debug, Default)]
pub struct SyncProgress {
    /// Image size in bytes.
    pub image_size: u64,
    /// Where the scan resumed (bytes before it were done in an earlier attempt).
    pub resumed_at: u64,
    /// Source bytes scanned so far.
    pub bytes_scanned: u64,
    /// Changed bytes found so far.
    pub bytes_changed: u64,
    /// Payload bytes sent (including resends).
    pub bytes_sent: u64,
    /// Payload bytes still unacknowledged.
    pub bytes_unacked: u64,
    /// Current wire rate, bytes per second.
    pub rate: u64,
    /// Connections re-established so far.
    pub reconnects: u32,
    /// Highest batch the standby holds durably.
    pub durable_seq: SeqNo,
    /// What the sync is doing.
    pub phase: &'static str,
    /// The QUIC path to the standby as last seen (`None` before the first
    /// batch).
    pub connection: Option<PathSnapshot>,
}

/// QUIC path statistics of the connection an image is sent on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathSnapshot {
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Congestion window, bytes.
    pub cwnd: u64,
    /// Packets declared lost on this connection.
    pub lost_packets: u64,
    /// Packets sent on this connection.
    pub sent_packets: u64,
    /// Congestion events (loss or ECN) on this connection.
    pub congestion_events: u64,
}

impl PathSnapshot {
    /// What the path can carry by the congestion controller's estimate:
    /// one congestion window per `base_rtt` (the smallest round trip seen:
    /// the smoothed one swings with scheduling delays on a busy host),
    /// bytes/s. A standby that applies slowly holds the sender through flow
    /// control, not the congestion window, so this stays high; a slow or
    /// long link keeps it near the link's rate.
    pub fn link_rate(&self, base_rtt: Duration) -> u64 {
        let rtt = base_rtt.min(self.rtt).as_secs_f64().max(1e-6);
        (self.cwnd as f64 / rtt) as u64
    }

    /// Reads the current path statistics of `connection`.
    pub fn of(connection: &quinn::Connection) -> Self {
        let path = connection.stats().path;
        Self {
            rtt: path.rtt,
            cwnd: path.cwnd,
            lost_packets: path.lost_packets,
            sent_packets: path.sent_packets,
            congestion_events: path.congestion_events,
        }
    }
}

/// What a completed sync did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SyncReport {
    /// Image name on the standby.
    pub image: String,
    /// Epoch committed.
    pub epoch: u64,
    /// The epoch it was relative to (0 = full copy).
    pub base_epoch: u64,
    /// Recovery point committed on the standby.
    pub recovery_point: u64,
    /// Image size.
    pub image_size: u64,
    /// Source bytes scanned in this run.
    pub bytes_scanned: u64,
    /// Bytes found changed (data + zeroed ranges).
    pub bytes_changed: u64,
    /// All-zero bytes found while scanning.
    pub bytes_zero: u64,
    /// Extents sent (data and zeroed ranges, first sends only).
    pub extents: u64,
    /// Plain bytes of changed data.
    pub bytes_plain_data: u64,
    /// Payload bytes on the wire (after compression), including resends.
    pub bytes_sent: u64,
    /// Frame bytes on the wire (payload + headers).
    pub frame_bytes: u64,
    /// UDP bytes sent by QUIC (all overheads included); in a group sync
    /// only the group report has it (the connection is shared).
    pub udp_bytes: u64,
    /// Batches sent (first time).
    pub batches: u64,
    /// Batches sent again (after Nack or reconnect).
    pub batches_resent: u64,
    /// Payload bytes sent again (after Nack or reconnect): never more than
    /// what was unacknowledged when the link failed.
    pub bytes_resent: u64,
    /// Connections re-established.
    pub reconnects: u32,
    /// Where this run started scanning (non-zero when resuming).
    pub resumed_at: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// The source changed while it was read.
    pub fuzzy: bool,
    /// The configured `[transport] compression` mode (`auto`, `zstd`, `off`).
    pub compression: String,
    /// Whether zstd was on at the end of the image's transfer (in `auto`: where
    /// the link's backpressure had turned it).
    pub compressing_at_end: bool,
    /// Times `auto` turned zstd on or off during this image's transfer.
    pub compression_switches: u32,
    /// Whether the link was the bottleneck at the end of the image's
    /// transfer (the last backpressure measurement, in every compression
    /// mode); while it is, RBD sources send no bridged gap bytes.
    pub link_bound_at_end: bool,
}

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Could not reach or keep a connection to the standby.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The link was lost and did not come back in time.
    #[error("lost the link to {addr} and could not reconnect within {seconds} s: {last}")]
    LinkLost {
        /// Standby address.
        addr: SocketAddr,
        /// How long reconnecting was tried.
        seconds: u64,
        /// The last error seen.
        last: String,
    },
    /// Reading or writing frames failed.
    #[error(transparent)]
    Framing(#[from] FramingError),
    /// The standby reported an error.
    #[error("the standby refused: {code:?}: {message}")]
    Peer {
        /// Error code.
        code: ferry_protocol::ErrorCode,
        /// Its explanation.
        message: String,
    },
    /// The standby broke the protocol.
    #[error("protocol violation by the standby: {0}")]
    Protocol(String),
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// The standby answered what the send window cannot accept.
impl From<WindowError> for SyncError {
    fn from(e: WindowError) -> Self {
        SyncError::Protocol(e.to_string())
    }
}

impl From<ErrorFrame> for SyncError {
    fn from(e: ErrorFrame) -> Self {
        SyncError::Peer {
            code: e.code,
            message: e.message,
        }
    }
}

/// One image of a group sync: where its changes come from and its name on
/// the standby.
pub struct ImageJob {
    /// The source of the image's changes.
    pub source: Box<dyn ExtentSource>,
    /// Name on the standby.
    pub image: ImageName,
    /// Where this image's live progress is published.
    pub progress: watch::Sender<SyncProgress>,
}

/// What a completed group sync did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GroupReport {
    /// The recovery point committed on the standby (covers every image).
    pub recovery_point: u64,
    /// Per image.
    pub images: Vec<SyncReport>,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Any image changed while it was read.
    pub fuzzy: bool,
    /// Connections re-established.
    pub reconnects: u32,
    /// UDP bytes sent on the shared connection (all images, all overheads).
    pub udp_bytes: u64,
}
