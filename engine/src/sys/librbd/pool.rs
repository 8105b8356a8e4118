//! [`Pool`]: an open librados I/O context — images (create, open, copy,
//! remove, list), RBD groups and their snapshots.

use std::ffi::{c_char, c_int, CStr};
use std::sync::Arc;

use super::*;

impl Pool {
    /// `POOL`, or `POOL/NAMESPACE` in an RBD namespace (as `rbd`
    /// addresses images: `POOL[/NAMESPACE]/IMAGE`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pool's name alone.
    pub fn pool_name(&self) -> &str {
        &self.pool
    }

    /// The RBD namespace (`None`: the pool's default one).
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The cluster this I/O context belongs to.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The raw `rados_ioctx_t`, for the object layer in
    /// [`crate::sys::librados`].
    pub(in crate::sys) fn raw_ioctx(&self) -> IoctxT {
        self.ioctx
    }

    /// `Err` for a failed call (`rc < 0`) on `target`; a refusal names the
    /// cephx user.
    pub(in crate::sys) fn check(
        &self,
        rc: c_int,
        op: &'static str,
        target: impl FnOnce() -> String,
    ) -> Result<(), CephError> {
        check(rc, op, || self.cluster.annotate(rc, target()))
    }

    pub(super) fn target(&self, image: &str) -> String {
        format!("{}/{}", self.name, image)
    }

    /// Creates image `name` of `size` bytes.
    pub fn create_image(
        &self,
        name: &str,
        size: u64,
        options: CreateOptions,
    ) -> Result<(), CephError> {
        let api = self.cluster.api;
        let c_name = cstring("image", name)?;
        let opts = Options::new(api, options)?;
        // SAFETY: valid ioctx, NUL-terminated name, live options handle.
        let rc = unsafe { (api.rbd_create4)(self.ioctx, c_name.as_ptr(), size, opts.handle) };
        self.check(rc, "rbd_create4", || self.target(name))
    }

    /// Makes image `name` of `dest` a copy-on-write clone of snapshot
    /// `snap` of image `parent` of this pool, in clone format 2: no data is
    /// copied, and the snapshot needs no protect step (Mimic and later; the
    /// format is asked for explicitly, so a cluster whose minimum client is
    /// older still gets it). While the clone exists, removing the snapshot
    /// moves it to the trash instead, and the parent image cannot be
    /// removed.
    pub fn clone_image(
        &self,
        parent: &str,
        snap: &str,
        dest: &Pool,
        name: &str,
        options: CreateOptions,
    ) -> Result<(), CephError> {
        let api = self.cluster.api;
        let c_parent = cstring("image", parent)?;
        let c_snap = cstring("snapshot", snap)?;
        let c_name = cstring("image", name)?;
        let opts = Options::new(api, options)?;
        opts.set(IMAGE_OPTION_CLONE_FORMAT, 2)?;
        // SAFETY: valid parent and child ioctxs, NUL-terminated names, live
        // options handle.
        let rc = unsafe {
            (api.rbd_clone3)(
                self.ioctx,
                c_parent.as_ptr(),
                c_snap.as_ptr(),
                dest.ioctx,
                c_name.as_ptr(),
                opts.handle,
            )
        };
        self.check(rc, "rbd_clone3", || {
            format!("{}@{snap} -> {}", self.target(parent), dest.target(name))
        })
    }

    /// Removes image `name` (it must have no snapshots).
    pub fn remove_image(&self, name: &str) -> Result<(), CephError> {
        let c_name = cstring("image", name)?;
        // SAFETY: valid ioctx and name.
        let rc = unsafe { (self.cluster.api.rbd_remove)(self.ioctx, c_name.as_ptr()) };
        self.check(rc, "rbd_remove", || self.target(name))
    }

    /// Names of the pool's images, as its image directory lists them:
    /// including an image whose creation was interrupted before its header
    /// was written (it cannot be opened, but `rbd_remove` removes it).
    pub fn list_images(&self) -> Result<Vec<String>, CephError> {
        let mut capacity: usize = 4096;
        loop {
            let mut buf = vec![0u8; capacity];
            let mut size = capacity;
            // SAFETY: `buf` has room for `size` bytes; librbd writes the
            // NUL-separated names into at most that many, or returns -ERANGE
            // with the size it needs in `size`.
            let rc = unsafe {
                (self.cluster.api.rbd_list)(self.ioctx, buf.as_mut_ptr().cast(), &mut size)
            };
            if rc == -libc::ERANGE {
                capacity = size.max(capacity * 2);
                continue;
            }
            self.check(rc, "rbd_list", || self.target(""))?;
            let used = usize::try_from(rc).unwrap_or(0).min(buf.len());
            return Ok(buf[..used]
                .split(|&b| b == 0)
                .filter(|name| !name.is_empty())
                .map(|name| String::from_utf8_lossy(name).into_owned())
                .collect());
        }
    }

    /// Another pool of the same cluster, by pool id, in this I/O context's
    /// namespace (librbd keeps an image and its group in one namespace).
    pub fn pool_by_id(&self, id: i64) -> Result<Arc<Pool>, CephError> {
        let mut buf = vec![0u8; 256];
        // SAFETY: connected cluster handle; `buf` has room for `len` bytes.
        let rc = unsafe {
            (self.cluster.api.rados_pool_reverse_lookup)(
                self.cluster.handle,
                id,
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        self.check(rc, "rados_pool_reverse_lookup", || format!("pool id {id}"))?;
        let name = CStr::from_bytes_until_nul(&buf)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.cluster.pool(&name, self.namespace.as_deref())
    }

    /// Creates RBD group `name` in this pool; an existing one is fine.
    pub fn group_create(&self, name: &str) -> Result<(), CephError> {
        let c_name = cstring("group", name)?;
        // SAFETY: valid ioctx and name.
        let rc = unsafe { (self.cluster.api.rbd_group_create)(self.ioctx, c_name.as_ptr()) };
        if rc == -libc::EEXIST {
            return Ok(());
        }
        self.check(rc, "rbd_group_create", || self.target(name))
    }

    /// Removes RBD group `name` (its snapshots go, its images stay); an
    /// absent one is fine.
    pub fn group_remove(&self, name: &str) -> Result<(), CephError> {
        let c_name = cstring("group", name)?;
        // SAFETY: valid ioctx and name.
        let rc = unsafe { (self.cluster.api.rbd_group_remove)(self.ioctx, c_name.as_ptr()) };
        if rc == -libc::ENOENT {
            return Ok(());
        }
        self.check(rc, "rbd_group_remove", || self.target(name))
    }

    /// Adds image `image` of pool `image_pool` to group `group` of this pool.
    pub fn group_image_add(
        &self,
        group: &str,
        image_pool: &Pool,
        image: &str,
    ) -> Result<(), CephError> {
        let call = self.cluster.api.rbd_group_image_add;
        self.group_image_call(call, "rbd_group_image_add", group, image_pool, image)
    }

    /// Removes image `image` of pool `image_pool` from group `group` of
    /// this pool. The image keeps its snapshots of the group's snapshots
    /// (librbd removes them with the group snapshot or the group).
    pub fn group_image_remove(
        &self,
        group: &str,
        image_pool: &Pool,
        image: &str,
    ) -> Result<(), CephError> {
        let call = self.cluster.api.rbd_group_image_remove;
        self.group_image_call(call, "rbd_group_image_remove", group, image_pool, image)
    }

    pub(super) fn group_image_call(
        &self,
        call: unsafe extern "C" fn(IoctxT, *const c_char, IoctxT, *const c_char) -> c_int,
        op: &'static str,
        group: &str,
        image_pool: &Pool,
        image: &str,
    ) -> Result<(), CephError> {
        let (c_group, c_image) = (cstring("group", group)?, cstring("image", image)?);
        // SAFETY: `call` is rbd_group_image_add or _remove; valid ioctxs and
        // NUL-terminated names.
        let rc = unsafe {
            call(
                self.ioctx,
                c_group.as_ptr(),
                image_pool.ioctx,
                c_image.as_ptr(),
            )
        };
        self.check(rc, op, || {
            format!("{} / {}", self.target(group), image_pool.target(image))
        })
    }

    /// How many images group `group` of this pool holds.
    pub fn group_image_count(&self, group: &str) -> Result<usize, CephError> {
        let c_group = cstring("group", group)?;
        let mut capacity = 32usize;
        loop {
            let mut buf: Vec<GroupImageInfoC> = (0..capacity)
                .map(|_| GroupImageInfoC {
                    name: std::ptr::null_mut(),
                    pool: 0,
                    state: 0,
                })
                .collect();
            let mut count = capacity;
            // SAFETY: `buf` has room for `count` entries of the size passed;
            // librbd fills at most that many or returns -ERANGE with the
            // number it needs in `count`.
            let rc = unsafe {
                (self.cluster.api.rbd_group_image_list)(
                    self.ioctx,
                    c_group.as_ptr(),
                    buf.as_mut_ptr(),
                    std::mem::size_of::<GroupImageInfoC>(),
                    &mut count,
                )
            };
            if rc == -libc::ERANGE {
                capacity = count.max(capacity * 2);
                continue;
            }
            self.check(rc, "rbd_group_image_list", || self.target(group))?;
            let count = count.min(buf.len());
            // SAFETY: frees the `count` entries librbd filled.
            unsafe {
                (self.cluster.api.rbd_group_image_list_cleanup)(
                    buf.as_mut_ptr(),
                    std::mem::size_of::<GroupImageInfoC>(),
                    count,
                )
            };
            return Ok(count);
        }
    }

    /// Takes snapshot `snap` of every image of group `group` (of this pool)
    /// at one instant: librbd takes each image's exclusive lock while
    /// telling other clients' lock requests to retry (their writes wait; they
    /// do not fail), then snapshots them all. Quiesce-hook failures of
    /// other clients are ignored: the snapshot is crash-consistent anyway.
    pub fn group_snap_create(&self, group: &str, snap: &str) -> Result<(), CephError> {
        let (c_group, c_snap) = (cstring("group", group)?, cstring("snapshot", snap)?);
        // SAFETY: valid ioctx and names.
        let rc = unsafe {
            (self.cluster.api.rbd_group_snap_create2)(
                self.ioctx,
                c_group.as_ptr(),
                c_snap.as_ptr(),
                SNAP_CREATE_IGNORE_QUIESCE_ERROR,
            )
        };
        self.check(rc, "rbd_group_snap_create2", || {
            format!("{}@{snap}", self.target(group))
        })
    }

    /// Removes snapshot `snap` of group `group`; an absent one is fine.
    pub fn group_snap_remove(&self, group: &str, snap: &str) -> Result<(), CephError> {
        let (c_group, c_snap) = (cstring("group", group)?, cstring("snapshot", snap)?);
        // SAFETY: valid ioctx and names.
        let rc = unsafe {
            (self.cluster.api.rbd_group_snap_remove)(self.ioctx, c_group.as_ptr(), c_snap.as_ptr())
        };
        if rc == -libc::ENOENT {
            return Ok(());
        }
        self.check(rc, "rbd_group_snap_remove", || {
            format!("{}@{snap}", self.target(group))
        })
    }

    /// Opens image `name` for writing (at its head).
    pub fn open(self: &Arc<Self>, name: &str) -> Result<Image, CephError> {
        self.open_impl(name, None, false)
    }

    /// Opens image `name` read-only, at snapshot `snap` or at its head.
    pub fn open_read_only(
        self: &Arc<Self>,
        name: &str,
        snap: Option<&str>,
    ) -> Result<Image, CephError> {
        self.open_impl(name, snap, true)
    }

    pub(super) fn open_impl(
        self: &Arc<Self>,
        name: &str,
        snap: Option<&str>,
        read_only: bool,
    ) -> Result<Image, CephError> {
        let api = self.cluster.api;
        let c_name = cstring("image", name)?;
        if let Some(group_snap) = snap.filter(|s| s.starts_with(GROUP_SNAP_PREFIX)) {
            // Not reachable by name (that looks in the user namespace):
            // open the head and move the handle to the snapshot's id.
            let mut image = self.open_impl(name, None, read_only)?;
            let id = image
                .snapshots()?
                .into_iter()
                .find(|s| s.name == group_snap)
                .map(|s| s.id)
                .ok_or_else(|| CephError::Call {
                    op: "rbd_snap_list",
                    target: format!("{}@{group_snap}", self.target(name)),
                    source: std::io::Error::from_raw_os_error(libc::ENOENT),
                })?;
            image.set_snap_by_id(id)?;
            image.spec = format!("{}@{group_snap}", self.target(name));
            return Ok(image);
        }
        let c_snap = match snap {
            Some(s) => Some(cstring("snapshot", s)?),
            None => None,
        };
        let mut handle: ImageT = std::ptr::null_mut();
        let open = if read_only {
            api.rbd_open_read_only
        } else {
            api.rbd_open
        };
        // SAFETY: valid ioctx, out-pointer and strings (snap may be NULL = head).
        let rc = unsafe {
            open(
                self.ioctx,
                c_name.as_ptr(),
                &mut handle,
                c_snap.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            )
        };
        let spec = match snap {
            Some(s) => format!("{}@{}", self.target(name), s),
            None => self.target(name),
        };
        self.check(
            rc,
            if read_only {
                "rbd_open_read_only"
            } else {
                "rbd_open"
            },
            || spec.clone(),
        )?;
        Ok(Image {
            handle,
            pool: self.clone(),
            spec,
        })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: valid ioctx; every Image (holding an Arc to us) is gone.
        unsafe { (self.cluster.api.rados_ioctx_destroy)(self.ioctx) }
    }
}
