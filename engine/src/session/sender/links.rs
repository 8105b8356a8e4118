//! The primary's connection to the standby: the first link (Hello and
//! version negotiation on a control stream), the shared [`Links`] that every
//! image of a group sync uses and that one of them re-establishes after a
//! loss, and opening an image stream on it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_protocol::{negotiate, AgentId, ImageName, Message, OpenImage, ResumeAnswer};
use tracing::{info, warn};

use super::group_window::GroupWindow;
use super::types::{SyncError, SyncOptions, SyncTarget};
use crate::identity::Identity;
use crate::session::framing::{FrameReader, FrameWriter, FramingError};
use crate::session::receiver::local_hello;
use crate::transport::{self, TransportError};

pub(super) fn is_link_error(e: &SyncError) -> bool {
    matches!(
        e,
        SyncError::Transport(TransportError::Connection { .. })
            | SyncError::Transport(TransportError::Connect { .. })
            | SyncError::Framing(FramingError::Read(_))
            | SyncError::Framing(FramingError::Write(_))
            | SyncError::Framing(FramingError::Truncated { .. })
    ) || matches!(e, SyncError::Protocol(m) if m.contains("connection lost"))
}

pub(super) struct Link {
    pub(super) connection: quinn::Connection,
    pub(super) control_reader: FrameReader,
    pub(super) control_writer: FrameWriter,
}

/// The first connection of a sync. Silence (a handshake that times out: the
/// link is down or the standby is restarting) is retried for
/// `reconnect_for`, like a link lost later; an answer that refuses us (wrong
/// peer, untrusted certificate) fails at once.
pub(super) async fn first_link(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    peer: AgentId,
    identity: &Identity,
    options: &SyncOptions,
) -> Result<Link, SyncError> {
    let deadline = Instant::now() + options.reconnect_for;
    loop {
        match open_link(endpoint, addr, peer, identity, options).await {
            // Silence, or a stateless reset (the standby lost our
            // half-open connection: restart, packet loss in the handshake).
            Err(SyncError::Transport(TransportError::Connection {
                source: quinn::ConnectionError::TimedOut | quinn::ConnectionError::Reset,
                ..
            })) if Instant::now() < deadline => {
                warn!(addr = %addr, "no usable answer from the standby; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

pub(super) async fn open_link(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    peer: AgentId,
    identity: &Identity,
    options: &SyncOptions,
) -> Result<Link, SyncError> {
    let connection = transport::connect(endpoint, addr, identity, peer, &options.transport).await?;
    let (send, recv) = connection.open_bi().await.map_err(|source| {
        transport::explain_connection_error(addr, source, identity.fingerprint())
    })?;
    let mut control_writer = FrameWriter::new(send, options.max_frame_len);
    let mut control_reader = FrameReader::new(recv, options.max_frame_len);
    let ours = local_hello(identity.fingerprint());
    control_writer.send(&Message::Hello(ours.clone())).await?;
    let theirs = match next_or_lost(&mut control_reader, &connection, addr, identity).await? {
        Message::Hello(h) => h,
        Message::Error(e) => return Err(e.into()),
        other => {
            return Err(SyncError::Protocol(format!(
                "expected Hello, got {other:?}"
            )))
        }
    };
    negotiate(&ours, &theirs).map_err(|e| SyncError::Protocol(e.to_string()))?;
    if theirs.agent_id != peer {
        return Err(SyncError::Protocol(format!(
            "the standby's Hello names agent {} but its certificate is {}",
            theirs.agent_id, peer
        )));
    }
    Ok(Link {
        connection,
        control_reader,
        control_writer,
    })
}

/// Reads the next frame; a finished stream or lost connection becomes an error
/// that explains itself.
pub(super) async fn next_or_lost(
    reader: &mut FrameReader,
    connection: &quinn::Connection,
    addr: SocketAddr,
    identity: &Identity,
) -> Result<Message, SyncError> {
    match reader.next().await {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(SyncError::Protocol(
            "connection lost: the standby closed the stream".into(),
        )),
        Err(FramingError::Read(quinn::ReadError::ConnectionLost(source))) => {
            Err(transport::explain_connection_error(addr, source, identity.fingerprint()).into())
        }
        Err(e) => {
            if let Some(reason) = connection.close_reason() {
                return Err(transport::explain_connection_error(
                    addr,
                    reason,
                    identity.fingerprint(),
                )
                .into());
            }
            Err(e.into())
        }
    }
}

pub(super) struct ImageStream {
    pub(super) reader: FrameReader,
    pub(super) writer: FrameWriter,
    pub(super) answer: ResumeAnswer,
}

pub(super) async fn open_image_stream_on(
    connection: &quinn::Connection,
    open: &OpenImage,
    target: &SyncTarget,
    identity: &Identity,
    options: &SyncOptions,
) -> Result<ImageStream, SyncError> {
    let (send, recv) = connection.open_bi().await.map_err(|source| {
        transport::explain_connection_error(target.addr, source, identity.fingerprint())
    })?;
    let mut writer = FrameWriter::new(send, options.max_frame_len);
    let mut reader = FrameReader::new(recv, options.max_frame_len);
    writer.send(&Message::OpenImage(open.clone())).await?;
    match next_or_lost(&mut reader, connection, target.addr, identity).await? {
        Message::ResumeAnswer(answer)
            if answer.image == open.image && answer.epoch == open.epoch =>
        {
            Ok(ImageStream {
                reader,
                writer,
                answer,
            })
        }
        Message::Error(e) => Err(e.into()),
        other => Err(SyncError::Protocol(format!(
            "expected ResumeAnswer, got {other:?}"
        ))),
    }
}

/// The connection to the standby, shared by every image of a group sync,
/// re-established (once, by whichever image notices first) when it fails.
pub(super) struct Links {
    pub(super) endpoint: quinn::Endpoint,
    pub(super) target_addr: SocketAddr,
    pub(super) peer: AgentId,
    pub(super) identity: Identity,
    pub(super) options: SyncOptions,
    /// The group sync's budget of unacknowledged bytes, shared by its images.
    pub(super) group_window: GroupWindow,
    pub(super) state: tokio::sync::Mutex<LinkState>,
    pub(super) reconnects: std::sync::atomic::AtomicU32,
}

pub(super) struct LinkState {
    pub(super) generation: u64,
    pub(super) link: Link,
}

impl Links {
    pub(super) fn target(&self, image: &ImageName) -> SyncTarget {
        SyncTarget {
            addr: self.target_addr,
            peer: self.peer,
            image: image.clone(),
        }
    }

    pub(super) async fn current(&self) -> (u64, quinn::Connection) {
        let state = self.state.lock().await;
        (state.generation, state.link.connection.clone())
    }

    /// Replaces the connection of generation `failed` (unless another image
    /// already did) and returns the current one.
    pub(super) async fn reconnect(
        &self,
        failed: u64,
        why: &SyncError,
    ) -> Result<(u64, quinn::Connection), SyncError> {
        let mut state = self.state.lock().await;
        if state.generation != failed {
            return Ok((state.generation, state.link.connection.clone()));
        }
        warn!(addr = %self.target_addr, error = %why, "link lost; reconnecting");
        let deadline = Instant::now() + self.options.reconnect_for;
        let mut delay = Duration::from_millis(200);
        let mut last = why.to_string();
        loop {
            if Instant::now() >= deadline {
                return Err(SyncError::LinkLost {
                    addr: self.target_addr,
                    seconds: self.options.reconnect_for.as_secs(),
                    last,
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
            match open_link(
                &self.endpoint,
                self.target_addr,
                self.peer,
                &self.identity,
                &self.options,
            )
            .await
            {
                Ok(link) => {
                    state
                        .link
                        .connection
                        .close(quinn::VarInt::from_u32(0), b"replaced");
                    state.link = link;
                    state.generation += 1;
                    self.reconnects
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    info!(addr = %self.target_addr, generation = state.generation, "reconnected");
                    return Ok((state.generation, state.link.connection.clone()));
                }
                Err(e) if is_retryable(&e) => last = e.to_string(),
                Err(e) => return Err(e),
            }
        }
    }

    /// One request/answer on the control stream of the current connection.
    /// [`Self::ask`] across link losses: the question is asked again on a
    /// new connection (questions are idempotent: resume queries).
    pub(super) async fn ask_across_reconnects(
        &self,
        request: &Message,
    ) -> Result<Message, SyncError> {
        loop {
            let generation = self.state.lock().await.generation;
            match self.ask(request).await {
                Ok((_, answer)) => return Ok(answer),
                Err(e) if is_link_error(&e) => {
                    self.reconnect(generation, &e).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(super) async fn ask(&self, request: &Message) -> Result<(u64, Message), SyncError> {
        let mut state = self.state.lock().await;
        let generation = state.generation;
        let LinkState { link, .. } = &mut *state;
        link.control_writer.send(request).await?;
        let answer = next_or_lost(
            &mut link.control_reader,
            &link.connection,
            self.target_addr,
            &self.identity,
        )
        .await?;
        Ok((generation, answer))
    }
}

pub(super) fn is_retryable(e: &SyncError) -> bool {
    is_link_error(e)
        || matches!(
            e,
            SyncError::Peer {
                code: ferry_protocol::ErrorCode::Busy,
                ..
            }
        )
}

/// Opens the image stream of `open` on the current connection (on a new
/// one if that fails with a link error or Busy).
pub(super) async fn open_stream(
    links: &Links,
    open: &OpenImage,
    target: &SyncTarget,
) -> Result<(u64, quinn::Connection, ImageStream), SyncError> {
    let (generation, connection) = links.current().await;
    match open_image_stream_on(&connection, open, target, &links.identity, &links.options).await {
        Ok(s) => Ok((generation, connection, s)),
        Err(e) if is_retryable(&e) => {
            let (g, c) = links.reconnect(generation, &e).await?;
            let s = open_image_stream_on(&c, open, target, &links.identity, &links.options).await?;
            Ok((g, c, s))
        }
        Err(e) => Err(e),
    }
}
