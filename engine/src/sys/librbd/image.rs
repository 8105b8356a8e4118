//! [`Image`]: an open librbd image — size, snapshots, locks, synchronous and
//! asynchronous I/O, `rbd_diff_iterate2` — and [`Aio`], a request in flight.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::*;

/// Adapter that lets librbd call a Rust closure from `rbd_diff_iterate2`.
struct DiffState<'a> {
    callback: &'a mut dyn FnMut(u64, u64, bool) -> bool,
    panicked: bool,
}

unsafe extern "C" fn diff_trampoline(
    offset: u64,
    len: usize,
    exists: c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: `arg` is the `&mut DiffState` passed to rbd_diff_iterate2 by
    // `Image::diff_iterate`, alive for the whole call, and librbd invokes the
    // callback from the calling thread only.
    let state = unsafe { &mut *(arg as *mut DiffState<'_>) };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        (state.callback)(offset, len as u64, exists != 0)
    }));
    match result {
        Ok(true) => 0,
        Ok(false) => -libc::ECANCELED,
        Err(_) => {
            state.panicked = true;
            -libc::ECANCELED
        }
    }
}

impl Image {
    /// `pool/image[@snap]`.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// The pool the image lives in.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    pub(super) fn api(&self) -> &'static Api {
        self.pool.cluster.api
    }

    pub(super) fn check(&self, rc: c_int, op: &'static str) -> Result<(), CephError> {
        self.pool.check(rc, op, || self.spec.clone())
    }

    /// Size in bytes (of the snapshot, if opened at one).
    pub fn size(&self) -> Result<u64, CephError> {
        let mut size = 0u64;
        // SAFETY: open handle, valid out-pointer.
        let rc = unsafe { (self.api().rbd_get_size)(self.handle, &mut size) };
        self.check(rc, "rbd_get_size")?;
        Ok(size)
    }

    /// Object size in bytes.
    pub fn object_size(&self) -> Result<u64, CephError> {
        // SAFETY: ImageInfo is plain old data; all-zero is a valid value.
        let mut info: ImageInfo = unsafe { std::mem::zeroed() };
        // SAFETY: open handle; out-pointer to a struct of the size passed.
        let rc = unsafe {
            (self.api().rbd_stat)(self.handle, &mut info, std::mem::size_of::<ImageInfo>())
        };
        self.check(rc, "rbd_stat")?;
        Ok(info.obj_size)
    }

    /// Feature bits.
    pub fn features(&self) -> Result<u64, CephError> {
        let mut features = 0u64;
        // SAFETY: open handle, valid out-pointer.
        let rc = unsafe { (self.api().rbd_get_features)(self.handle, &mut features) };
        self.check(rc, "rbd_get_features")?;
        Ok(features)
    }

    /// Grows or shrinks the image.
    pub fn resize(&self, size: u64) -> Result<(), CephError> {
        // SAFETY: open handle.
        let rc = unsafe { (self.api().rbd_resize)(self.handle, size) };
        self.check(rc, "rbd_resize")
    }

    /// Whether snapshot `name` exists.
    pub fn snap_exists(&self, name: &str) -> Result<bool, CephError> {
        let c = cstring("snapshot", name)?;
        let mut exists = false;
        // SAFETY: open handle, NUL-terminated name, valid out-pointer.
        let rc = unsafe { (self.api().rbd_snap_exists)(self.handle, c.as_ptr(), &mut exists) };
        self.pool
            .check(rc, "rbd_snap_exists", || format!("{}@{name}", self.spec))?;
        Ok(exists)
    }

    /// Creates snapshot `name` of the image's current content.
    pub fn snap_create(&self, name: &str) -> Result<(), CephError> {
        let c = cstring("snapshot", name)?;
        // SAFETY: open handle, NUL-terminated name.
        let rc = unsafe { (self.api().rbd_snap_create)(self.handle, c.as_ptr()) };
        self.pool
            .check(rc, "rbd_snap_create", || format!("{}@{name}", self.spec))
    }

    /// Removes snapshot `name`.
    pub fn snap_remove(&self, name: &str) -> Result<(), CephError> {
        let c = cstring("snapshot", name)?;
        // SAFETY: open handle, NUL-terminated name.
        let rc = unsafe { (self.api().rbd_snap_remove)(self.handle, c.as_ptr()) };
        self.pool
            .check(rc, "rbd_snap_remove", || format!("{}@{name}", self.spec))
    }

    /// Rolls the image head back to snapshot `name` (content and size).
    pub fn snap_rollback(&self, name: &str) -> Result<(), CephError> {
        let c = cstring("snapshot", name)?;
        // SAFETY: open handle, NUL-terminated name.
        let rc = unsafe { (self.api().rbd_snap_rollback)(self.handle, c.as_ptr()) };
        self.pool
            .check(rc, "rbd_snap_rollback", || format!("{}@{name}", self.spec))
    }

    /// The image's snapshots (user namespace).
    pub fn snapshots(&self) -> Result<Vec<SnapInfo>, CephError> {
        let mut capacity: c_int = 16;
        loop {
            let mut buf: Vec<SnapInfoC> = (0..capacity)
                .map(|_| SnapInfoC {
                    id: 0,
                    size: 0,
                    name: std::ptr::null(),
                })
                .collect();
            let mut max = capacity;
            // SAFETY: `buf` has room for `max` entries; librbd writes at most
            // that many or returns -ERANGE with the needed count in `max`.
            let rc = unsafe { (self.api().rbd_snap_list)(self.handle, buf.as_mut_ptr(), &mut max) };
            if rc == -libc::ERANGE {
                capacity = max.max(capacity * 2);
                continue;
            }
            self.check(rc, "rbd_snap_list")?;
            let count = usize::try_from(rc).unwrap_or(0).min(buf.len());
            let snaps = buf[..count]
                .iter()
                .map(|s| SnapInfo {
                    id: s.id,
                    size: s.size,
                    name: if s.name.is_null() {
                        String::new()
                    } else {
                        // SAFETY: librbd filled a NUL-terminated name that
                        // stays valid until rbd_snap_list_end below.
                        unsafe { CStr::from_ptr(s.name) }
                            .to_string_lossy()
                            .into_owned()
                    },
                })
                .collect();
            // SAFETY: frees the names librbd allocated in `buf` (the list is
            // terminated by the entry after the last, which librbd zeroed).
            unsafe { (self.api().rbd_snap_list_end)(buf.as_mut_ptr()) };
            return Ok(snaps);
        }
    }

    /// Lists the extents of `offset..offset+len` that changed since snapshot
    /// `from` (everything allocated when `None`), calling `callback(offset,
    /// len, exists)` in ascending order; `exists == false` means the range
    /// now reads as zeroes. `whole_object` reports whole objects using the
    /// object map (cheaper, coarser). The callback returns `false` to stop.
    pub fn diff_iterate(
        &self,
        from: Option<&str>,
        offset: u64,
        len: u64,
        whole_object: bool,
        callback: &mut dyn FnMut(u64, u64, bool) -> bool,
    ) -> Result<(), CephError> {
        let c_from = match from {
            Some(s) => Some(cstring("snapshot", s)?),
            None => None,
        };
        let mut state = DiffState {
            callback,
            panicked: false,
        };
        // SAFETY: open handle; `state` outlives the synchronous call and is
        // only touched by the trampoline on this thread.
        let rc = unsafe {
            (self.api().rbd_diff_iterate2)(
                self.handle,
                c_from.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
                offset,
                len,
                1,
                u8::from(whole_object),
                diff_trampoline,
                &mut state as *mut DiffState<'_> as *mut c_void,
            )
        };
        if state.panicked {
            panic!("diff_iterate callback panicked for {}", self.spec);
        }
        self.check(rc, "rbd_diff_iterate2")
    }

    /// Reads exactly `buf.len()` bytes at `offset` (synchronously).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), CephError> {
        let mut done = 0usize;
        while done < buf.len() {
            let rest = &mut buf[done..];
            // SAFETY: open handle; `rest` is a valid writable buffer of the
            // length passed.
            let rc = unsafe {
                (self.api().rbd_read)(
                    self.handle,
                    offset + done as u64,
                    rest.len(),
                    rest.as_mut_ptr() as *mut c_char,
                )
            };
            if rc < 0 {
                return self.check(rc as c_int, "rbd_read");
            }
            if rc == 0 {
                // Past the end of the image: reads as zeroes.
                rest.fill(0);
                break;
            }
            done += rc as usize;
        }
        Ok(())
    }

    /// Flushes every completed write to the cluster (durable when this returns).
    pub fn flush(&self) -> Result<(), CephError> {
        // SAFETY: open handle.
        let rc = unsafe { (self.api().rbd_flush)(self.handle) };
        self.check(rc, "rbd_flush")
    }

    /// Copies the image (or the snapshot it is open at) into a new
    /// standalone image `name` of `pool`.
    pub fn copy_to(
        &self,
        pool: &Pool,
        name: &str,
        options: CreateOptions,
    ) -> Result<(), CephError> {
        let c_name = cstring("image", name)?;
        let opts = Options::new(self.api(), options)?;
        // SAFETY: open source handle, valid destination ioctx, name and options.
        let rc = unsafe {
            (self.api().rbd_copy3)(self.handle, pool.ioctx, c_name.as_ptr(), opts.handle)
        };
        self.pool.check(rc, "rbd_copy3", || {
            format!("{} -> {}", self.spec, pool.target(name))
        })
    }

    /// Takes the exclusive lock and keeps it (other clients' writes wait)
    /// until [`Image::lock_release`]. Needs the exclusive-lock feature.
    pub fn lock_exclusive(&self) -> Result<(), CephError> {
        // SAFETY: open handle.
        let rc = unsafe { (self.api().rbd_lock_acquire)(self.handle, LOCK_MODE_EXCLUSIVE) };
        self.check(rc, "rbd_lock_acquire")
    }

    /// Breaks the exclusive lock of every other client (blocklisting it, so
    /// a client that only looks dead can never write again). For images
    /// this process alone may write, e.g. after the previous owner was
    /// killed and its watch has not yet timed out.
    pub fn break_foreign_locks(&self) -> Result<usize, CephError> {
        let mut owners: Vec<*mut c_char> = vec![std::ptr::null_mut(); 8];
        let mut count = owners.len();
        let mut mode: c_int = 0;
        // SAFETY: `owners` has room for `count` pointers; librbd fills at
        // most that many (or returns -ERANGE) and we free them with the
        // matching cleanup call below.
        let rc = unsafe {
            (self.api().rbd_lock_get_owners)(
                self.handle,
                &mut mode,
                owners.as_mut_ptr(),
                &mut count,
            )
        };
        if rc == -libc::ENOENT {
            return Ok(0);
        }
        self.check(rc, "rbd_lock_get_owners")?;
        let count = count.min(owners.len());
        let names: Vec<CString> = owners[..count]
            .iter()
            .filter(|p| !p.is_null())
            // SAFETY: librbd wrote NUL-terminated strings, valid until cleanup.
            .map(|p| unsafe { CStr::from_ptr(*p) }.to_owned())
            .collect();
        // SAFETY: frees exactly the `count` strings librbd allocated.
        unsafe { (self.api().rbd_lock_get_owners_cleanup)(owners.as_mut_ptr(), count) };
        for owner in &names {
            // SAFETY: open handle; owner is a NUL-terminated string.
            let rc = unsafe { (self.api().rbd_lock_break)(self.handle, mode, owner.as_ptr()) };
            if rc < 0 && rc != -libc::ENOENT {
                self.check(rc, "rbd_lock_break")?;
            }
        }
        Ok(names.len())
    }

    /// Moves this handle to snapshot `id` (of any namespace).
    pub fn set_snap_by_id(&self, id: u64) -> Result<(), CephError> {
        // SAFETY: open handle.
        let rc = unsafe { (self.api().rbd_snap_set_by_id)(self.handle, id) };
        self.check(rc, "rbd_snap_set_by_id")
    }

    /// For a snapshot of a group snapshot: (group pool id, group name,
    /// group snapshot name); `None` for snapshots of other namespaces.
    pub fn snap_group(&self, id: u64) -> Result<Option<(i64, String, String)>, CephError> {
        let mut kind: c_int = 0;
        // SAFETY: open handle and out-pointer.
        let rc = unsafe { (self.api().rbd_snap_get_namespace_type)(self.handle, id, &mut kind) };
        self.check(rc, "rbd_snap_get_namespace_type")?;
        if kind != SNAP_NAMESPACE_TYPE_GROUP {
            return Ok(None);
        }
        let mut ns = GroupSnapNamespaceC {
            group_pool: 0,
            group_name: std::ptr::null_mut(),
            group_snap_name: std::ptr::null_mut(),
        };
        let size = std::mem::size_of::<GroupSnapNamespaceC>();
        // SAFETY: open handle; `ns` is the struct librbd fills.
        let rc =
            unsafe { (self.api().rbd_snap_get_group_namespace)(self.handle, id, &mut ns, size) };
        self.check(rc, "rbd_snap_get_group_namespace")?;
        let out = (
            ns.group_pool,
            owned_c_string(ns.group_name),
            owned_c_string(ns.group_snap_name),
        );
        // SAFETY: frees the strings librbd allocated in `ns`.
        unsafe { (self.api().rbd_snap_group_namespace_cleanup)(&mut ns, size) };
        Ok(Some(out))
    }

    /// The RBD group this image belongs to: (pool id, name), if any.
    pub fn group(&self) -> Result<Option<(i64, String)>, CephError> {
        let mut info = GroupInfoC {
            name: std::ptr::null_mut(),
            pool: -1,
        };
        let size = std::mem::size_of::<GroupInfoC>();
        // SAFETY: open handle; `info` is the struct librbd fills.
        let rc = unsafe { (self.api().rbd_get_group)(self.handle, &mut info, size) };
        self.check(rc, "rbd_get_group")?;
        let out = (info.pool, owned_c_string(info.name));
        // SAFETY: frees the name librbd allocated in `info`.
        unsafe { (self.api().rbd_group_info_cleanup)(&mut info, size) };
        Ok((out.0 >= 0 && !out.1.is_empty()).then_some(out))
    }

    /// Releases a lock taken with [`Image::lock_exclusive`].
    pub fn lock_release(&self) -> Result<(), CephError> {
        // SAFETY: open handle.
        let rc = unsafe { (self.api().rbd_lock_release)(self.handle) };
        self.check(rc, "rbd_lock_release")
    }

    pub(super) fn completion(&self) -> Result<CompletionT, CephError> {
        let mut c: CompletionT = std::ptr::null_mut();
        // SAFETY: no callback (NULL) and no argument; valid out-pointer.
        let rc = unsafe {
            (self.api().rbd_aio_create_completion)(std::ptr::null_mut(), std::ptr::null(), &mut c)
        };
        self.check(rc, "rbd_aio_create_completion")?;
        Ok(c)
    }

    /// Starts reading `len` bytes at `offset`; [`Aio::wait`] returns them.
    pub fn aio_read(self: &Arc<Self>, offset: u64, len: usize) -> Result<Aio, CephError> {
        // Not zeroed first (that memset was 4 % of a full sync's CPU): librbd
        // fills the spare capacity, and `Aio::wait` exposes only the bytes it
        // reported, zero-filling any short tail.
        let mut buf = BytesMut::with_capacity(len);
        let c = self.completion()?;
        // SAFETY: the spare capacity holds `len` bytes and is owned by the
        // returned Aio, which waits for the completion before the buffer can
        // be dropped or handed out; nothing reads it before librbd wrote it.
        let rc = unsafe {
            (self.api().rbd_aio_read)(
                self.handle,
                offset,
                len,
                buf.spare_capacity_mut().as_mut_ptr() as *mut c_char,
                c,
            )
        };
        self.start(c, rc, "rbd_aio_read", offset, Some(buf), Vec::new())
    }

    /// Starts writing `data` at `offset`.
    pub fn aio_write(self: &Arc<Self>, offset: u64, data: Bytes) -> Result<Aio, CephError> {
        let c = self.completion()?;
        // SAFETY: `data` is kept alive by the returned Aio until completion
        // (its Drop waits for it). With zero-copy writes on (the cluster's
        // `rbd_disable_zero_copy_writes = false`) librbd reads the buffer
        // in place and completes only after its last reference to it is
        // released; `Bytes` is immutable, so nothing changes it meanwhile.
        let rc = unsafe {
            (self.api().rbd_aio_write)(
                self.handle,
                offset,
                data.len(),
                data.as_ptr() as *const c_char,
                c,
            )
        };
        self.start(c, rc, "rbd_aio_write", offset, None, vec![data])
    }

    /// Starts writing the buffers `data`, back to back, at `offset`: one
    /// librbd request (and one OSD write per object it touches) however
    /// many buffers, where a write per buffer would cost one each.
    pub fn aio_writev(self: &Arc<Self>, offset: u64, data: Vec<Bytes>) -> Result<Aio, CephError> {
        if data.len() == 1 {
            let mut data = data;
            return self.aio_write(offset, data.remove(0));
        }
        let iovecs: Vec<libc::iovec> = data
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        let count = c_int::try_from(iovecs.len())
            .map_err(|_| call_error(-libc::EINVAL, "rbd_aio_writev", "too many buffers".into()))?;
        let c = self.completion()?;
        // SAFETY: the iovec array is read during the call only (librbd
        // builds its buffer list from it before returning); the buffers it
        // points at are kept alive by the returned Aio until completion, as
        // for `aio_write`, and `Bytes` is immutable.
        let rc =
            unsafe { (self.api().rbd_aio_writev)(self.handle, iovecs.as_ptr(), count, offset, c) };
        self.start(c, rc, "rbd_aio_writev", offset, None, data)
    }

    /// Starts making `offset..offset+len` read as zeroes (deallocating
    /// whole objects where possible).
    pub fn aio_write_zeroes(self: &Arc<Self>, offset: u64, len: usize) -> Result<Aio, CephError> {
        let c = self.completion()?;
        // SAFETY: open handle and fresh completion; no buffers involved.
        let rc = unsafe { (self.api().rbd_aio_write_zeroes)(self.handle, offset, len, c, 0, 0) };
        self.start(c, rc, "rbd_aio_write_zeroes", offset, None, Vec::new())
    }

    /// Starts discarding `offset..offset+len`.
    pub fn aio_discard(self: &Arc<Self>, offset: u64, len: u64) -> Result<Aio, CephError> {
        let c = self.completion()?;
        // SAFETY: open handle and fresh completion; no buffers involved.
        let rc = unsafe { (self.api().rbd_aio_discard)(self.handle, offset, len, c) };
        self.start(c, rc, "rbd_aio_discard", offset, None, Vec::new())
    }

    pub(super) fn start(
        self: &Arc<Self>,
        c: CompletionT,
        rc: c_int,
        op: &'static str,
        offset: u64,
        read_buf: Option<BytesMut>,
        write_bufs: Vec<Bytes>,
    ) -> Result<Aio, CephError> {
        if rc < 0 {
            // SAFETY: the request was not queued, so nothing refers to `c`.
            unsafe { (self.api().rbd_aio_release)(c) };
            let target = format!("{} at {offset}", self.spec);
            return Err(call_error(rc, op, self.pool.cluster.annotate(rc, target)));
        }
        Ok(Aio {
            completion: c,
            image: self.clone(),
            op,
            offset,
            read_buf,
            _write_bufs: write_bufs,
            waited: false,
        })
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: open handle, closed exactly once; every Aio holds an Arc to
        // this image, so none is in flight when it drops.
        let rc = unsafe { (self.api().rbd_close)(self.handle) };
        if rc < 0 {
            tracing::warn!(image = %self.spec, rc, "rbd_close failed");
        }
    }
}

impl Aio {
    /// Waits for the request; returns the bytes read (reads) or `None`.
    pub fn wait(mut self) -> Result<Option<Bytes>, CephError> {
        let rc = self.wait_inner();
        if rc < 0 {
            let rc = c_int::try_from(rc).unwrap_or(-libc::EIO);
            self.image.pool.check(rc, self.op, || {
                format!("{} at {}", self.image.spec, self.offset)
            })?;
        }
        Ok(self.read_buf.take().map(|mut buf| {
            let wanted = buf.capacity();
            let filled = usize::try_from(rc).unwrap_or(0).min(wanted);
            // SAFETY: librbd reported writing `filled` bytes at the start of
            // the spare capacity (a read returns the bytes it read).
            unsafe { buf.set_len(filled) };
            buf.resize(wanted, 0);
            buf.freeze()
        }))
    }

    /// Waits for completion; librbd's return value (bytes for reads, < 0 errno).
    pub(super) fn wait_inner(&mut self) -> isize {
        let api = self.image.api();
        // SAFETY: the completion was created by us and is released only
        // after this wait (in Drop).
        unsafe { (api.rbd_aio_wait_for_complete)(self.completion) };
        self.waited = true;
        // SAFETY: as above; the request has completed.
        unsafe { (api.rbd_aio_get_return_value)(self.completion) }
    }
}

impl Drop for Aio {
    fn drop(&mut self) {
        if !self.waited {
            let _ = self.wait_inner();
        }
        // SAFETY: the request completed (waited above), so librbd no longer
        // touches the completion or our buffers.
        unsafe { (self.image.api().rbd_aio_release)(self.completion) };
    }
}
