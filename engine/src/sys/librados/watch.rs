//! Watch/notify on a RADOS object: [`Watch`] hands every notification to
//! a Rust callback on its own thread, acknowledges it after the callback
//! returns, and re-arms the watch when librados reports it broken (an
//! error callback, or `rados_watch_check` < 0), telling the callback that
//! notifications may have been missed. [`Pool::notify`] sends one.

use std::ffi::{c_int, c_void, CString};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{api, check, cstring, CephError, Pool, RadosApi};

/// How often the watch thread asks librados whether the watch still holds
/// when nothing arrives.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Pause between attempts to re-register a broken watch.
const REARM_BACKOFF: Duration = Duration::from_millis(500);

/// What a [`Watch`] callback receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// A notification (acknowledged once the callback returns).
    Notify {
        /// The notifying client's global id (`client.ID`).
        notifier_id: u64,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// The watch broke (errno `error`) and is registered again;
    /// notifications sent in between were lost, so re-read the object.
    Rearmed {
        /// Why it broke (a positive errno).
        error: i32,
    },
}

/// What the C callbacks pass to the watch thread.
enum Msg {
    Notify {
        notify_id: u64,
        cookie: u64,
        notifier_id: u64,
        payload: Vec<u8>,
    },
    Error {
        cookie: u64,
        err: c_int,
    },
    Stop,
}

/// `rados_watchcb2_t`.
unsafe extern "C" fn on_notify(
    arg: *mut c_void,
    notify_id: u64,
    cookie: u64,
    notifier_id: u64,
    data: *mut c_void,
    len: usize,
) {
    // SAFETY: `arg` is the `Sender` the watch thread keeps boxed until the
    // watch is unregistered and librados' callbacks are flushed.
    let tx = unsafe { &*arg.cast::<Sender<Msg>>() };
    let payload = if data.is_null() || len == 0 {
        Vec::new()
    } else {
        // SAFETY: librados passes `len` readable bytes for this call.
        unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) }.to_vec()
    };
    // A closed channel means the watch is being dropped: nothing to do.
    let _ = tx.send(Msg::Notify {
        notify_id,
        cookie,
        notifier_id,
        payload,
    });
}

/// `rados_watcherrcb_t`.
unsafe extern "C" fn on_error(arg: *mut c_void, cookie: u64, err: c_int) {
    // SAFETY: as in `on_notify`.
    let tx = unsafe { &*arg.cast::<Sender<Msg>>() };
    let _ = tx.send(Msg::Error { cookie, err });
}

/// A registered watch on one object; dropping it unregisters it.
pub struct Watch {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
    oid: String,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("oid", &self.oid).finish()
    }
}

/// The state the watch thread owns.
struct Watcher {
    pool: Arc<Pool>,
    api: &'static RadosApi,
    oid: String,
    c_oid: CString,
    timeout_secs: u32,
    /// The callbacks' argument: must stay at this address until the watch
    /// is unregistered and the callbacks flushed (`Watcher::drop`).
    ctx: Box<Sender<Msg>>,
    cookie: Option<u64>,
}

impl Watcher {
    fn register(&mut self) -> Result<(), CephError> {
        let mut cookie = 0u64;
        let arg: *mut Sender<Msg> = &mut *self.ctx;
        // SAFETY: live ioctx, NUL-terminated oid, valid out-pointer; the
        // callbacks match librados' typedefs and `arg` outlives the watch
        // (see `ctx`).
        let rc = unsafe {
            (self.api.rados_watch3)(
                self.pool.raw_ioctx(),
                self.c_oid.as_ptr(),
                &mut cookie,
                on_notify,
                on_error,
                self.timeout_secs,
                arg.cast(),
            )
        };
        check(&self.pool, rc, "rados_watch3", &self.oid)?;
        self.cookie = Some(cookie);
        Ok(())
    }

    fn unregister(&mut self) {
        if let Some(cookie) = self.cookie.take() {
            // SAFETY: live ioctx; the cookie came from rados_watch3. A
            // broken watch may refuse; it is gone either way.
            let rc = unsafe { (self.api.rados_unwatch2)(self.pool.raw_ioctx(), cookie) };
            if rc < 0 {
                tracing::debug!(oid = %self.oid, rc, "rados_unwatch2");
            }
        }
    }

    fn ack(&self, notify_id: u64, cookie: u64) {
        // SAFETY: live ioctx, NUL-terminated oid; an empty payload may be
        // NULL.
        let rc = unsafe {
            (self.api.rados_notify_ack)(
                self.pool.raw_ioctx(),
                self.c_oid.as_ptr(),
                notify_id,
                cookie,
                std::ptr::null(),
                0,
            )
        };
        if rc < 0 {
            tracing::debug!(oid = %self.oid, rc, "rados_notify_ack");
        }
    }

    /// Whether the watch is still registered, per librados.
    fn healthy(&self) -> Result<(), c_int> {
        let Some(cookie) = self.cookie else {
            return Err(-libc::ENOTCONN);
        };
        // SAFETY: live ioctx; cookie from rados_watch3.
        let rc = unsafe { (self.api.rados_watch_check)(self.pool.raw_ioctx(), cookie) };
        if rc < 0 {
            Err(rc)
        } else {
            Ok(())
        }
    }

    /// Re-registers until it works or the watch is dropped; `false` when
    /// stopped.
    fn rearm(&mut self, rx: &Receiver<Msg>, err: c_int) -> bool {
        tracing::warn!(oid = %self.oid, errno = -err, "RADOS watch broke; registering again");
        self.unregister();
        loop {
            match self.register() {
                Ok(()) => return true,
                Err(e) => tracing::warn!(oid = %self.oid, error = %e, "re-registering the watch"),
            }
            match rx.recv_timeout(REARM_BACKOFF) {
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return false,
                // Messages of the broken registration are stale.
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn run(mut self, rx: Receiver<Msg>, handler: impl Fn(WatchEvent)) {
        loop {
            let err = match rx.recv_timeout(CHECK_EVERY) {
                Ok(Msg::Notify {
                    notify_id,
                    cookie,
                    notifier_id,
                    payload,
                }) => {
                    handler(WatchEvent::Notify {
                        notifier_id,
                        payload,
                    });
                    self.ack(notify_id, cookie);
                    continue;
                }
                Ok(Msg::Error { cookie, err }) if Some(cookie) == self.cookie => err,
                Ok(Msg::Error { .. }) => continue,
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => match self.healthy() {
                    Ok(()) => continue,
                    Err(err) => err,
                },
            };
            if !self.rearm(&rx, err) {
                return;
            }
            handler(WatchEvent::Rearmed {
                error: err.saturating_neg(),
            });
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.unregister();
        // SAFETY: live cluster handle; waits until no callback runs or is
        // queued, after which `ctx` may be freed.
        let rc = unsafe { (self.api.rados_watch_flush)(self.pool.cluster().raw()) };
        if rc < 0 {
            tracing::debug!(oid = %self.oid, rc, "rados_watch_flush");
        }
    }
}

impl Watch {
    /// Registers a watch on object `oid` (which must exist) and calls
    /// `handler` on a dedicated thread for each event, one at a time.
    /// `timeout` is how long the OSDs keep the watch of a client they
    /// lost (librados' default when `None`, `osd_client_watch_timeout`).
    /// Keep `handler` short: the notifier waits for its acknowledgement.
    pub fn new(
        pool: &Arc<Pool>,
        oid: &str,
        timeout: Option<Duration>,
        handler: impl Fn(WatchEvent) + Send + 'static,
    ) -> Result<Self, CephError> {
        let api = api()?;
        let (tx, rx) = mpsc::channel();
        let mut watcher = Watcher {
            pool: pool.clone(),
            api,
            oid: oid.to_owned(),
            c_oid: cstring("object", oid)?,
            timeout_secs: timeout.map_or(0, |t| u32::try_from(t.as_secs()).unwrap_or(u32::MAX)),
            ctx: Box::new(tx.clone()),
            cookie: None,
        };
        watcher.register()?;
        let thread = std::thread::Builder::new()
            .name("rados-watch".into())
            .spawn(move || watcher.run(rx, handler))
            .map_err(|e| CephError::Call {
                op: "spawn the watch thread",
                target: oid.to_owned(),
                source: e,
            })?;
        Ok(Self {
            tx,
            thread: Some(thread),
            oid: oid.to_owned(),
        })
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(thread) = self.thread.take() {
            // A handler that drops its own watch cannot wait for itself:
            // the thread stops once the handler returns.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

/// Who acknowledged a notification, and who did not in time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NotifyReply {
    /// (client global id, watch cookie, reply payload) of each ack.
    pub acks: Vec<(u64, u64, Vec<u8>)>,
    /// (client global id, watch cookie) of each watcher that timed out.
    pub timeouts: Vec<(u64, u64)>,
}

/// Decodes `rados_notify2`'s reply buffer: le32 count, then per ack le64
/// gid, le64 cookie, le32 length and the payload; le32 count, then per
/// timeout le64 gid, le64 cookie.
fn decode_reply(mut buf: &[u8]) -> Option<NotifyReply> {
    fn take<const N: usize>(buf: &mut &[u8]) -> Option<[u8; N]> {
        let (head, rest) = buf.split_first_chunk::<N>()?;
        *buf = rest;
        Some(*head)
    }
    let mut reply = NotifyReply::default();
    let acks = u32::from_le_bytes(take(&mut buf)?);
    for _ in 0..acks {
        let gid = u64::from_le_bytes(take(&mut buf)?);
        let cookie = u64::from_le_bytes(take(&mut buf)?);
        let len = usize::try_from(u32::from_le_bytes(take(&mut buf)?)).ok()?;
        let payload = buf.get(..len)?.to_vec();
        buf = &buf[len..];
        reply.acks.push((gid, cookie, payload));
    }
    let timeouts = u32::from_le_bytes(take(&mut buf)?);
    for _ in 0..timeouts {
        let gid = u64::from_le_bytes(take(&mut buf)?);
        let cookie = u64::from_le_bytes(take(&mut buf)?);
        reply.timeouts.push((gid, cookie));
    }
    Some(reply)
}

impl Pool {
    /// Notifies every watcher of object `oid` with `payload` and waits up
    /// to `timeout` for their acknowledgements. Watchers that did not
    /// answer in time are listed in [`NotifyReply::timeouts`] (librados
    /// then returns `ETIMEDOUT`, which is not an `Err` here).
    pub fn notify(
        &self,
        oid: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<NotifyReply, CephError> {
        let api = api()?;
        let c_oid = cstring("object", oid)?;
        let len = c_int::try_from(payload.len()).map_err(|_| CephError::Call {
            op: "rados_notify2",
            target: format!("object {oid}: a payload over 2 GiB"),
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        })?;
        let mut reply: *mut std::ffi::c_char = std::ptr::null_mut();
        let mut reply_len = 0usize;
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        // SAFETY: live ioctx, NUL-terminated oid, `len` readable bytes of
        // payload; the reply out-pointers are valid.
        let rc = unsafe {
            (api.rados_notify2)(
                self.raw_ioctx(),
                c_oid.as_ptr(),
                payload.as_ptr().cast(),
                len,
                ms,
                &mut reply,
                &mut reply_len,
            )
        };
        let decoded = if reply.is_null() {
            None
        } else {
            // SAFETY: librados filled `reply_len` bytes at `reply`; they
            // are decoded (copied) before the buffer is freed, once.
            let bytes = unsafe { std::slice::from_raw_parts(reply.cast::<u8>(), reply_len) };
            let decoded = decode_reply(bytes);
            // SAFETY: allocated by librados for this call.
            unsafe { (api.rados_buffer_free)(reply) };
            decoded
        };
        if rc == -libc::ETIMEDOUT {
            if let Some(reply) = decoded {
                return Ok(reply);
            }
        }
        check(self, rc, "rados_notify2", oid)?;
        Ok(decoded.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notify_reply_decodes_acks_and_timeouts() {
        let mut buf = Vec::new();
        buf.extend(2u32.to_le_bytes());
        buf.extend(4100u64.to_le_bytes());
        buf.extend(7u64.to_le_bytes());
        buf.extend(3u32.to_le_bytes());
        buf.extend(b"abc");
        buf.extend(4101u64.to_le_bytes());
        buf.extend(8u64.to_le_bytes());
        buf.extend(0u32.to_le_bytes());
        buf.extend(1u32.to_le_bytes());
        buf.extend(4102u64.to_le_bytes());
        buf.extend(9u64.to_le_bytes());
        let reply = decode_reply(&buf).expect("decodes");
        assert_eq!(
            reply.acks,
            vec![(4100, 7, b"abc".to_vec()), (4101, 8, Vec::new())]
        );
        assert_eq!(reply.timeouts, vec![(4102, 9)]);
        // A truncated buffer is refused, not read past its end.
        assert_eq!(decode_reply(&buf[..buf.len() - 1]), None);
        assert_eq!(decode_reply(&buf[..10]), None);
    }
}
