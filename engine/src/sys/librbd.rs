//! librados/librbd reached through their C APIs (`rados/librados.h`,
//! `rbd/librbd.h`), loaded at run time with `dlopen` so that ferry builds
//! and runs on machines without Ceph's libraries; only an `rbd:` address
//! needs them. Every `unsafe` call of the RBD backend lives here, behind the
//! safe types [`Cluster`], [`Pool`], [`Image`] and [`Aio`].
//!
//! Thread safety: librados handles and librbd image handles are documented
//! as safe to use from several threads at once (librbd serialises
//! internally), so [`Pool`] and [`Image`] are `Send + Sync`.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};

type RadosT = *mut c_void;
type IoctxT = *mut c_void;
type ImageT = *mut c_void;
type CompletionT = *mut c_void;
type OptionsT = *mut c_void;
type DiffCallback = unsafe extern "C" fn(u64, usize, c_int, *mut c_void) -> c_int;

/// `RBD_LOCK_MODE_EXCLUSIVE`.
const LOCK_MODE_EXCLUSIVE: c_int = 0;
/// `RBD_IMAGE_OPTION_FEATURES`.
const IMAGE_OPTION_FEATURES: c_int = 1;
/// `RBD_IMAGE_OPTION_ORDER`.
const IMAGE_OPTION_ORDER: c_int = 2;

/// `RBD_FEATURE_LAYERING`.
pub const FEATURE_LAYERING: u64 = 1 << 0;
/// `RBD_FEATURE_EXCLUSIVE_LOCK`.
pub const FEATURE_EXCLUSIVE_LOCK: u64 = 1 << 2;
/// `RBD_FEATURE_OBJECT_MAP`.
pub const FEATURE_OBJECT_MAP: u64 = 1 << 3;
/// `RBD_FEATURE_FAST_DIFF`.
pub const FEATURE_FAST_DIFF: u64 = 1 << 4;
/// `RBD_FEATURE_DEEP_FLATTEN`.
pub const FEATURE_DEEP_FLATTEN: u64 = 1 << 5;

/// `rbd_image_info_t` from librbd.h.
#[repr(C)]
struct ImageInfo {
    size: u64,
    obj_size: u64,
    num_objs: u64,
    order: c_int,
    block_name_prefix: [c_char; 24],
    parent_pool: i64,
    parent_name: [c_char; 96],
}

/// `rbd_snap_info_t` from librbd.h.
#[repr(C)]
struct SnapInfoC {
    id: u64,
    size: u64,
    name: *const c_char,
}

/// `rbd_snap_group_namespace_t`.
#[repr(C)]
struct GroupSnapNamespaceC {
    group_pool: i64,
    group_name: *mut c_char,
    group_snap_name: *mut c_char,
}

/// `rbd_group_info_t`.
#[repr(C)]
struct GroupInfoC {
    name: *mut c_char,
    pool: i64,
}

/// `rbd_group_image_info_t`.
#[repr(C)]
struct GroupImageInfoC {
    name: *mut c_char,
    pool: i64,
    state: c_int,
}

const SNAP_NAMESPACE_TYPE_GROUP: c_int = 1;
const SNAP_CREATE_IGNORE_QUIESCE_ERROR: u32 = 1 << 1;
/// Prefix of the per-image snapshot names of group snapshots (librbd's
/// `.group.<POOL>_<GROUP-ID>_<GROUP-SNAP-ID>`); such a snapshot lives in the
/// group namespace and is opened by id, not by name.
pub const GROUP_SNAP_PREFIX: &str = ".group.";

fn owned_c_string(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: callers pass NUL-terminated strings librbd filled in,
        // before the matching cleanup call.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// Why a librados/librbd call failed.
#[derive(Debug, thiserror::Error)]
pub enum CephError {
    /// The shared libraries are not installed (or lack a symbol).
    #[error("cannot load {library}: {detail} (install Ceph's client libraries: apt-get install librbd1)")]
    Load {
        /// The library.
        library: &'static str,
        /// The loader's message.
        detail: String,
    },
    /// A call returned a negative errno.
    #[error("{op} {target}")]
    Call {
        /// The C function.
        op: &'static str,
        /// Cluster/pool/image/snapshot involved.
        target: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A name contains a NUL byte.
    #[error("{what} {name:?} contains a NUL byte")]
    BadName {
        /// What kind of name.
        what: &'static str,
        /// The name.
        name: String,
    },
}

impl CephError {
    /// The errno of a failed call, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Call { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// Whether the call failed with `ENOENT`.
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(libc::ENOENT)
    }

    /// Whether the call failed with `EEXIST`.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// Whether the call failed with `EBUSY` (for `rbd_remove`: the image
    /// still has watchers).
    pub fn is_busy(&self) -> bool {
        self.errno() == Some(libc::EBUSY)
    }
}

fn check(rc: c_int, op: &'static str, target: impl FnOnce() -> String) -> Result<(), CephError> {
    if rc < 0 {
        Err(call_error(rc, op, target()))
    } else {
        Ok(())
    }
}

fn call_error(rc: c_int, op: &'static str, target: String) -> CephError {
    CephError::Call {
        op,
        target,
        source: std::io::Error::from_raw_os_error(rc.saturating_neg()),
    }
}

fn cstring(what: &'static str, name: &str) -> Result<CString, CephError> {
    CString::new(name).map_err(|_| CephError::BadName {
        what,
        name: name.to_owned(),
    })
}

macro_rules! api {
    ($( $lib:ident : $name:ident : fn($($arg:ty),*) $(-> $ret:ty)? ;)*) => {
        /// Function pointers resolved from librados.so.2 and librbd.so.1.
        struct Api {
            $( $name: unsafe extern "C" fn($($arg),*) $(-> $ret)?, )*
        }

        impl Api {
            fn load(rados: &libloading::Library, rbd: &libloading::Library) -> Result<Self, CephError> {
                Ok(Self {
                    $( $name: {
                        let lib = match stringify!($lib) { "rados" => rados, _ => rbd };
                        // SAFETY: the symbol is declared with the C signature
                        // of librados.h/librbd.h (Ceph 16 ABI, stable since
                        // these functions were introduced); the pointer is
                        // copied out while both libraries stay loaded for the
                        // life of the process (they live in a static).
                        let symbol = unsafe {
                            lib.get::<unsafe extern "C" fn($($arg),*) $(-> $ret)?>(
                                concat!(stringify!($name), "\0").as_bytes(),
                            )
                        };
                        *symbol.map_err(|e| CephError::Load {
                            library: if stringify!($lib) == "rados" { "librados.so.2" } else { "librbd.so.1" },
                            detail: e.to_string(),
                        })?
                    }, )*
                })
            }
        }
    };
}

api! {
    rados: rados_create2: fn(*mut RadosT, *const c_char, *const c_char, u64) -> c_int;
    rados: rados_conf_read_file: fn(RadosT, *const c_char) -> c_int;
    rados: rados_conf_set: fn(RadosT, *const c_char, *const c_char) -> c_int;
    rados: rados_connect: fn(RadosT) -> c_int;
    rados: rados_shutdown: fn(RadosT);
    rados: rados_ioctx_create: fn(RadosT, *const c_char, *mut IoctxT) -> c_int;
    rados: rados_ioctx_destroy: fn(IoctxT);
    rados: rados_pool_reverse_lookup: fn(RadosT, i64, *mut c_char, usize) -> c_int;
    rbd: rbd_open: fn(IoctxT, *const c_char, *mut ImageT, *const c_char) -> c_int;
    rbd: rbd_open_read_only: fn(IoctxT, *const c_char, *mut ImageT, *const c_char) -> c_int;
    rbd: rbd_close: fn(ImageT) -> c_int;
    rbd: rbd_stat: fn(ImageT, *mut ImageInfo, usize) -> c_int;
    rbd: rbd_get_size: fn(ImageT, *mut u64) -> c_int;
    rbd: rbd_get_features: fn(ImageT, *mut u64) -> c_int;
    rbd: rbd_image_options_create: fn(*mut OptionsT);
    rbd: rbd_image_options_destroy: fn(OptionsT);
    rbd: rbd_image_options_set_uint64: fn(OptionsT, c_int, u64) -> c_int;
    rbd: rbd_create4: fn(IoctxT, *const c_char, u64, OptionsT) -> c_int;
    rbd: rbd_remove: fn(IoctxT, *const c_char) -> c_int;
    rbd: rbd_list: fn(IoctxT, *mut c_char, *mut usize) -> c_int;
    rbd: rbd_snap_set_by_id: fn(ImageT, u64) -> c_int;
    rbd: rbd_snap_get_namespace_type: fn(ImageT, u64, *mut c_int) -> c_int;
    rbd: rbd_snap_get_group_namespace: fn(ImageT, u64, *mut GroupSnapNamespaceC, usize) -> c_int;
    rbd: rbd_snap_group_namespace_cleanup: fn(*mut GroupSnapNamespaceC, usize) -> c_int;
    rbd: rbd_get_group: fn(ImageT, *mut GroupInfoC, usize) -> c_int;
    rbd: rbd_group_info_cleanup: fn(*mut GroupInfoC, usize) -> c_int;
    rbd: rbd_group_create: fn(IoctxT, *const c_char) -> c_int;
    rbd: rbd_group_remove: fn(IoctxT, *const c_char) -> c_int;
    rbd: rbd_group_image_add: fn(IoctxT, *const c_char, IoctxT, *const c_char) -> c_int;
    rbd: rbd_group_image_remove: fn(IoctxT, *const c_char, IoctxT, *const c_char) -> c_int;
    rbd: rbd_group_image_list: fn(IoctxT, *const c_char, *mut GroupImageInfoC, usize, *mut usize) -> c_int;
    rbd: rbd_group_image_list_cleanup: fn(*mut GroupImageInfoC, usize, usize) -> c_int;
    rbd: rbd_group_snap_create2: fn(IoctxT, *const c_char, *const c_char, u32) -> c_int;
    rbd: rbd_group_snap_remove: fn(IoctxT, *const c_char, *const c_char) -> c_int;
    rbd: rbd_resize: fn(ImageT, u64) -> c_int;
    rbd: rbd_snap_exists: fn(ImageT, *const c_char, *mut bool) -> c_int;
    rbd: rbd_snap_create: fn(ImageT, *const c_char) -> c_int;
    rbd: rbd_snap_remove: fn(ImageT, *const c_char) -> c_int;
    rbd: rbd_snap_rollback: fn(ImageT, *const c_char) -> c_int;
    rbd: rbd_snap_list: fn(ImageT, *mut SnapInfoC, *mut c_int) -> c_int;
    rbd: rbd_snap_list_end: fn(*mut SnapInfoC);
    rbd: rbd_diff_iterate2: fn(ImageT, *const c_char, u64, u64, u8, u8, DiffCallback, *mut c_void) -> c_int;
    rbd: rbd_read: fn(ImageT, u64, usize, *mut c_char) -> isize;
    rbd: rbd_aio_create_completion: fn(*mut c_void, *const c_void, *mut CompletionT) -> c_int;
    rbd: rbd_aio_wait_for_complete: fn(CompletionT) -> c_int;
    rbd: rbd_aio_get_return_value: fn(CompletionT) -> isize;
    rbd: rbd_aio_release: fn(CompletionT);
    rbd: rbd_aio_read: fn(ImageT, u64, usize, *mut c_char, CompletionT) -> c_int;
    rbd: rbd_aio_write: fn(ImageT, u64, usize, *const c_char, CompletionT) -> c_int;
    rbd: rbd_aio_write_zeroes: fn(ImageT, u64, usize, CompletionT, c_int, c_int) -> c_int;
    rbd: rbd_aio_discard: fn(ImageT, u64, u64, CompletionT) -> c_int;
    rbd: rbd_flush: fn(ImageT) -> c_int;
    rbd: rbd_copy3: fn(ImageT, IoctxT, *const c_char, OptionsT) -> c_int;
    rbd: rbd_lock_acquire: fn(ImageT, c_int) -> c_int;
    rbd: rbd_lock_release: fn(ImageT) -> c_int;
    rbd: rbd_lock_get_owners: fn(ImageT, *mut c_int, *mut *mut c_char, *mut usize) -> c_int;
    rbd: rbd_lock_get_owners_cleanup: fn(*mut *mut c_char, usize);
    rbd: rbd_lock_break: fn(ImageT, c_int, *const c_char) -> c_int;
}

struct Loaded {
    api: Api,
    _rados: libloading::Library,
    _rbd: libloading::Library,
}

static LOADED: OnceLock<Result<Loaded, (&'static str, String)>> = OnceLock::new();

fn api() -> Result<&'static Api, CephError> {
    let loaded = LOADED.get_or_init(|| {
        let open = |name: &'static str| {
            // SAFETY: loading Ceph's client libraries runs their static
            // initialisers, which have no preconditions on the caller.
            unsafe { libloading::Library::new(name) }.map_err(|e| (name, e.to_string()))
        };
        let rados = open("librados.so.2")?;
        let rbd = open("librbd.so.1")?;
        let api = Api::load(&rados, &rbd).map_err(|e| match e {
            CephError::Load { library, detail } => (library, detail),
            other => ("librbd.so.1", other.to_string()),
        })?;
        Ok(Loaded {
            api,
            _rados: rados,
            _rbd: rbd,
        })
    });
    match loaded {
        Ok(l) => Ok(&l.api),
        Err((library, detail)) => Err(CephError::Load {
            library,
            detail: detail.clone(),
        }),
    }
}

/// Whether librados/librbd can be loaded on this machine.
pub fn available() -> bool {
    api().is_ok()
}

/// How to reach a cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClusterSpec {
    /// Cluster name (`ceph` by default); selects `/etc/ceph/NAME.conf`.
    pub cluster: Option<String>,
    /// Explicit configuration file.
    pub conf: Option<std::path::PathBuf>,
    /// Client id without `client.` (`admin` by default).
    pub client_id: Option<String>,
}

impl ClusterSpec {
    fn describe(&self) -> String {
        match (&self.conf, &self.cluster) {
            (Some(conf), _) => format!("cluster (conf {})", conf.display()),
            (None, Some(name)) => format!("cluster {name}"),
            (None, None) => "cluster ceph".to_owned(),
        }
    }
}

/// A connected librados cluster handle.
pub struct Cluster {
    handle: RadosT,
    api: &'static Api,
    name: String,
}

// SAFETY: librados cluster handles may be used from any thread.
unsafe impl Send for Cluster {}
// SAFETY: as above; librados locks internally.
unsafe impl Sync for Cluster {}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("name", &self.name).finish()
    }
}

impl Cluster {
    /// Connects to the cluster `spec` names.
    pub fn connect(spec: &ClusterSpec) -> Result<Arc<Self>, CephError> {
        let api = api()?;
        let describe = spec.describe();
        let cluster_name = cstring("cluster name", spec.cluster.as_deref().unwrap_or("ceph"))?;
        let user = cstring(
            "client id",
            &format!("client.{}", spec.client_id.as_deref().unwrap_or("admin")),
        )?;
        let mut handle: RadosT = std::ptr::null_mut();
        // SAFETY: valid out-pointer and NUL-terminated strings.
        let rc =
            unsafe { (api.rados_create2)(&mut handle, cluster_name.as_ptr(), user.as_ptr(), 0) };
        check(rc, "rados_create2", || describe.clone())?;
        let cluster = Self {
            handle,
            api,
            name: describe.clone(),
        };
        let conf = match &spec.conf {
            Some(path) => Some(cstring("config path", &path.to_string_lossy())?),
            None => None,
        };
        // SAFETY: handle was created above and not connected yet; a NULL path
        // means "search the default locations".
        let rc = unsafe {
            (api.rados_conf_read_file)(
                cluster.handle,
                conf.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            )
        };
        check(rc, "rados_conf_read_file", || describe.clone())?;
        // Fail fast instead of librados' default 300 s when a cluster is down.
        // No librbd cache: ferry streams whole extents with its own requests
        // in flight and flushes before it acknowledges, so a writeback cache
        // only adds a copy (and its 24 MiB dirty limit throttles streaming).
        for (key, value) in [
            ("client_mount_timeout", "30"),
            ("rados_mon_op_timeout", "60"),
            ("rbd_cache", "false"),
        ] {
            let (k, v) = (cstring("option", key)?, cstring("option", value)?);
            // SAFETY: handle valid and unconnected; strings NUL-terminated.
            let rc = unsafe { (api.rados_conf_set)(cluster.handle, k.as_ptr(), v.as_ptr()) };
            check(rc, "rados_conf_set", || format!("{describe} {key}"))?;
        }
        // SAFETY: handle valid; configuration read.
        let rc = unsafe { (api.rados_connect)(cluster.handle) };
        check(rc, "rados_connect", || describe.clone())?;
        Ok(Arc::new(cluster))
    }

    /// Opens an I/O context on `pool`.
    pub fn pool(self: &Arc<Self>, pool: &str) -> Result<Arc<Pool>, CephError> {
        let name = cstring("pool", pool)?;
        let mut ioctx: IoctxT = std::ptr::null_mut();
        // SAFETY: connected handle, valid out-pointer, NUL-terminated name.
        let rc = unsafe { (self.api.rados_ioctx_create)(self.handle, name.as_ptr(), &mut ioctx) };
        check(rc, "rados_ioctx_create", || {
            format!("pool {pool} in {}", self.name)
        })?;
        Ok(Arc::new(Pool {
            ioctx,
            cluster: self.clone(),
            name: pool.to_owned(),
        }))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: the handle is valid and every Pool (holding an Arc to us)
        // is already gone.
        unsafe { (self.api.rados_shutdown)(self.handle) }
    }
}

/// An I/O context on one pool.
pub struct Pool {
    ioctx: IoctxT,
    cluster: Arc<Cluster>,
    name: String,
}

// SAFETY: librados I/O contexts may be shared between threads.
unsafe impl Send for Pool {}
// SAFETY: as above.
unsafe impl Sync for Pool {}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("name", &self.name).finish()
    }
}

/// Options of a new image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreateOptions {
    /// Feature bits (`FEATURE_*`).
    pub features: u64,
    /// Object size as a power of two (22 = 4 MiB).
    pub order: u8,
}

impl Default for CreateOptions {
    fn default() -> Self {
        Self {
            features: FEATURE_LAYERING
                | FEATURE_EXCLUSIVE_LOCK
                | FEATURE_OBJECT_MAP
                | FEATURE_FAST_DIFF
                | FEATURE_DEEP_FLATTEN,
            order: 22,
        }
    }
}

/// librbd image options, destroyed on drop.
struct Options {
    handle: OptionsT,
    api: &'static Api,
}

impl Options {
    fn new(api: &'static Api, create: CreateOptions) -> Result<Self, CephError> {
        let mut handle: OptionsT = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        unsafe { (api.rbd_image_options_create)(&mut handle) };
        let options = Self { handle, api };
        for (key, value) in [
            (IMAGE_OPTION_FEATURES, create.features),
            (IMAGE_OPTION_ORDER, u64::from(create.order)),
        ] {
            // SAFETY: handle valid; known option keys of type uint64.
            let rc = unsafe { (api.rbd_image_options_set_uint64)(options.handle, key, value) };
            check(rc, "rbd_image_options_set_uint64", || {
                format!("option {key}")
            })?;
        }
        Ok(options)
    }
}

impl Drop for Options {
    fn drop(&mut self) {
        // SAFETY: created by rbd_image_options_create, destroyed once.
        unsafe { (self.api.rbd_image_options_destroy)(self.handle) }
    }
}

impl Pool {
    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn target(&self, image: &str) -> String {
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
        check(rc, "rbd_create4", || self.target(name))
    }

    /// Removes image `name` (it must have no snapshots).
    pub fn remove_image(&self, name: &str) -> Result<(), CephError> {
        let c_name = cstring("image", name)?;
        // SAFETY: valid ioctx and name.
        let rc = unsafe { (self.cluster.api.rbd_remove)(self.ioctx, c_name.as_ptr()) };
        check(rc, "rbd_remove", || self.target(name))
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
            check(rc, "rbd_list", || self.target(""))?;
            let used = usize::try_from(rc).unwrap_or(0).min(buf.len());
            return Ok(buf[..used]
                .split(|&b| b == 0)
                .filter(|name| !name.is_empty())
                .map(|name| String::from_utf8_lossy(name).into_owned())
                .collect());
        }
    }

    /// Another pool of the same cluster, by pool id.
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
        check(rc, "rados_pool_reverse_lookup", || format!("pool id {id}"))?;
        let name = CStr::from_bytes_until_nul(&buf)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.cluster.pool(&name)
    }

    /// Creates RBD group `name` in this pool; an existing one is fine.
    pub fn group_create(&self, name: &str) -> Result<(), CephError> {
        let c_name = cstring("group", name)?;
        // SAFETY: valid ioctx and name.
        let rc = unsafe { (self.cluster.api.rbd_group_create)(self.ioctx, c_name.as_ptr()) };
        if rc == -libc::EEXIST {
            return Ok(());
        }
        check(rc, "rbd_group_create", || self.target(name))
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
        check(rc, "rbd_group_remove", || self.target(name))
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

    fn group_image_call(
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
        check(rc, op, || {
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
            check(rc, "rbd_group_image_list", || self.target(group))?;
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
        check(rc, "rbd_group_snap_create2", || {
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
        check(rc, "rbd_group_snap_remove", || {
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

    fn open_impl(
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
        check(
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

/// A snapshot of an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapInfo {
    /// Snapshot id.
    pub id: u64,
    /// Image size at the snapshot.
    pub size: u64,
    /// Name.
    pub name: String,
}

/// An open RBD image.
pub struct Image {
    handle: ImageT,
    pool: Arc<Pool>,
    spec: String,
}

// SAFETY: librbd image handles are thread-safe (ImageCtx locks internally);
// ferry still issues most calls from one thread per image.
unsafe impl Send for Image {}
// SAFETY: as above.
unsafe impl Sync for Image {}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image").field("spec", &self.spec).finish()
    }
}

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

    fn api(&self) -> &'static Api {
        self.pool.cluster.api
    }

    fn check(&self, rc: c_int, op: &'static str) -> Result<(), CephError> {
        check(rc, op, || self.spec.clone())
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
        check(rc, "rbd_snap_exists", || format!("{}@{name}", self.spec))?;
        Ok(exists)
    }

    /// Creates snapshot `name` of the image's current content.
    pub fn snap_create(&self, name: &str) -> Result<(), CephError> {
        let c = cstring("snapshot", name)?;
        // SAFETY: open handle, NUL-terminated name.
        let rc = unsafe { (self.api().rbd_snap_create)(self.handle, c.as_ptr()) };
        check(rc, "rbd_snap_create", || format!("{}@{name}", self.spec))
    }

    /// Removes snapshot `name`.
    pub fn snap_remove(&self, name: &str) -> Result<(), CephError> {
        let c = cstring("snapshot", name)?;
        // SAFETY: open handle, NUL-terminated name.
        let rc = unsafe { (self.api().rbd_snap_remove)(self.handle, c.as_ptr()) };
        check(rc, "rbd_snap_remove", || format!("{}@{name}", self.spec))
    }

    /// Rolls the image head back to snapshot `name` (content and size).
    pub fn snap_rollback(&self, name: &str) -> Result<(), CephError> {
        let c = cstring("snapshot", name)?;
        // SAFETY: open handle, NUL-terminated name.
        let rc = unsafe { (self.api().rbd_snap_rollback)(self.handle, c.as_ptr()) };
        check(rc, "rbd_snap_rollback", || format!("{}@{name}", self.spec))
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
        check(rc, "rbd_copy3", || {
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

    fn completion(&self) -> Result<CompletionT, CephError> {
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
        self.start(c, rc, "rbd_aio_read", offset, Some(buf), None)
    }

    /// Starts writing `data` at `offset`.
    pub fn aio_write(self: &Arc<Self>, offset: u64, data: Bytes) -> Result<Aio, CephError> {
        let c = self.completion()?;
        // SAFETY: `data` is kept alive by the returned Aio until completion.
        let rc = unsafe {
            (self.api().rbd_aio_write)(
                self.handle,
                offset,
                data.len(),
                data.as_ptr() as *const c_char,
                c,
            )
        };
        self.start(c, rc, "rbd_aio_write", offset, None, Some(data))
    }

    /// Starts making `offset..offset+len` read as zeroes (deallocating
    /// whole objects where possible).
    pub fn aio_write_zeroes(self: &Arc<Self>, offset: u64, len: usize) -> Result<Aio, CephError> {
        let c = self.completion()?;
        // SAFETY: open handle and fresh completion; no buffers involved.
        let rc = unsafe { (self.api().rbd_aio_write_zeroes)(self.handle, offset, len, c, 0, 0) };
        self.start(c, rc, "rbd_aio_write_zeroes", offset, None, None)
    }

    /// Starts discarding `offset..offset+len`.
    pub fn aio_discard(self: &Arc<Self>, offset: u64, len: u64) -> Result<Aio, CephError> {
        let c = self.completion()?;
        // SAFETY: open handle and fresh completion; no buffers involved.
        let rc = unsafe { (self.api().rbd_aio_discard)(self.handle, offset, len, c) };
        self.start(c, rc, "rbd_aio_discard", offset, None, None)
    }

    fn start(
        self: &Arc<Self>,
        c: CompletionT,
        rc: c_int,
        op: &'static str,
        offset: u64,
        read_buf: Option<BytesMut>,
        write_buf: Option<Bytes>,
    ) -> Result<Aio, CephError> {
        if rc < 0 {
            // SAFETY: the request was not queued, so nothing refers to `c`.
            unsafe { (self.api().rbd_aio_release)(c) };
            return Err(call_error(rc, op, format!("{} at {offset}", self.spec)));
        }
        Ok(Aio {
            completion: c,
            image: self.clone(),
            op,
            offset,
            read_buf,
            _write_buf: write_buf,
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

/// An asynchronous librbd request in flight. Dropping it waits for it.
pub struct Aio {
    completion: CompletionT,
    image: Arc<Image>,
    op: &'static str,
    offset: u64,
    read_buf: Option<BytesMut>,
    _write_buf: Option<Bytes>,
    waited: bool,
}

// SAFETY: the completion handle may be waited on from any thread, and the
// buffers it owns move with it.
unsafe impl Send for Aio {}

impl Aio {
    /// Waits for the request; returns the bytes read (reads) or `None`.
    pub fn wait(mut self) -> Result<Option<Bytes>, CephError> {
        let rc = self.wait_inner();
        if rc < 0 {
            let rc = c_int::try_from(rc).unwrap_or(-libc::EIO);
            check(rc, self.op, || {
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
    fn wait_inner(&mut self) -> isize {
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
