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

mod image;
mod pool;

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
/// `RBD_IMAGE_OPTION_CLONE_FORMAT`.
const IMAGE_OPTION_CLONE_FORMAT: c_int = 12;

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
    /// still has watchers; for a RADOS lock: another client holds it).
    pub fn is_busy(&self) -> bool {
        self.errno() == Some(libc::EBUSY)
    }

    /// Whether a guarded RADOS write op was refused because its compare
    /// failed (`ECANCELED`): nothing of the op was applied.
    pub fn is_canceled(&self) -> bool {
        self.errno() == Some(libc::ECANCELED)
    }

    /// Whether the OSDs refused the call because this client is
    /// blocklisted (`EBLOCKLISTED`, which is `ESHUTDOWN`).
    pub fn is_blocklisted(&self) -> bool {
        self.errno() == Some(libc::ESHUTDOWN)
    }
}

pub(in crate::sys) fn check(
    rc: c_int,
    op: &'static str,
    target: impl FnOnce() -> String,
) -> Result<(), CephError> {
    if rc < 0 {
        Err(call_error(rc, op, target()))
    } else {
        Ok(())
    }
}

pub(in crate::sys) fn call_error(rc: c_int, op: &'static str, target: String) -> CephError {
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
    rados: rados_conf_parse_env: fn(RadosT, *const c_char) -> c_int;
    rados: rados_connect: fn(RadosT) -> c_int;
    rados: rados_shutdown: fn(RadosT);
    rados: rados_ioctx_create: fn(RadosT, *const c_char, *mut IoctxT) -> c_int;
    rados: rados_ioctx_destroy: fn(IoctxT);
    rados: rados_ioctx_set_namespace: fn(IoctxT, *const c_char);
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
    rbd: rbd_aio_writev: fn(ImageT, *const libc::iovec, c_int, u64, CompletionT) -> c_int;
    rbd: rbd_aio_write_zeroes: fn(ImageT, u64, usize, CompletionT, c_int, c_int) -> c_int;
    rbd: rbd_aio_discard: fn(ImageT, u64, u64, CompletionT) -> c_int;
    rbd: rbd_flush: fn(ImageT) -> c_int;
    rbd: rbd_copy3: fn(ImageT, IoctxT, *const c_char, OptionsT) -> c_int;
    rbd: rbd_clone3: fn(IoctxT, *const c_char, *const c_char, IoctxT, *const c_char, OptionsT) -> c_int;
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

/// How to reach a cluster, and as which Ceph user.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClusterSpec {
    /// Cluster name (`ceph` by default); selects `/etc/ceph/NAME.conf`.
    pub cluster: Option<String>,
    /// Explicit configuration file.
    pub conf: Option<std::path::PathBuf>,
    /// Client id without `client.` (`admin` by default).
    pub client_id: Option<String>,
    /// Keyring file holding the client's key (default: librados' search,
    /// `/etc/ceph/$cluster.$name.keyring` and the `keyring` option of the
    /// configuration file).
    pub keyring: Option<std::path::PathBuf>,
}

impl ClusterSpec {
    /// The cephx user, `client.ID`.
    pub fn user(&self) -> String {
        format!("client.{}", self.client_id.as_deref().unwrap_or("admin"))
    }

    /// "cluster NAME as client.ID (keyring PATH)", for messages.
    pub fn describe(&self) -> String {
        let mut out = match (&self.conf, &self.cluster) {
            (Some(conf), _) => format!("cluster (conf {})", conf.display()),
            (None, Some(name)) => format!("cluster {name}"),
            (None, None) => "cluster ceph".to_owned(),
        };
        out.push_str(" as ");
        out.push_str(&self.user());
        if let Some(keyring) = &self.keyring {
            out.push_str(&format!(" (keyring {})", keyring.display()));
        }
        out
    }
}

/// A connected librados cluster handle.
pub struct Cluster {
    handle: RadosT,
    api: &'static Api,
    name: String,
    /// The cephx user, `client.ID`.
    user: String,
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
        let user = cstring("client id", &spec.user())?;
        let mut handle: RadosT = std::ptr::null_mut();
        // SAFETY: valid out-pointer and NUL-terminated strings.
        let rc =
            unsafe { (api.rados_create2)(&mut handle, cluster_name.as_ptr(), user.as_ptr(), 0) };
        check(rc, "rados_create2", || describe.clone())?;
        let cluster = Self {
            handle,
            api,
            name: describe.clone(),
            user: spec.user(),
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
        // CEPH_ARGS (and CEPH_KEYRING) over the file, as the `rbd` tool
        // applies them: `--mon_host`, `--debug_*` and the like. The options
        // that choose the user were read into `spec` by the caller
        // (`ClusterSpec::with_env_ceph_args`).
        // SAFETY: handle valid and unconnected; NULL selects CEPH_ARGS.
        let rc = unsafe { (api.rados_conf_parse_env)(cluster.handle, std::ptr::null()) };
        check(rc, "rados_conf_parse_env", || describe.clone())?;
        // An explicit keyring overrides the configuration file's and
        // CEPH_ARGS' (the caller already layered CEPH_ARGS below it).
        if let Some(keyring) = &spec.keyring {
            let (k, v) = (
                cstring("option", "keyring")?,
                cstring("keyring path", &keyring.to_string_lossy())?,
            );
            // SAFETY: handle valid and unconnected; strings NUL-terminated.
            let rc = unsafe { (api.rados_conf_set)(cluster.handle, k.as_ptr(), v.as_ptr()) };
            check(rc, "rados_conf_set", || format!("{describe} keyring"))?;
        }
        // Fail fast instead of librados' default 300 s when a cluster is down.
        // No librbd cache: ferry streams whole extents with its own requests
        // in flight and flushes before it acknowledges, so a writeback cache
        // only adds a copy (and its 24 MiB dirty limit throttles streaming).
        // Zero-copy writes: librbd copies every `rbd_aio_write` buffer
        // unless told not to (the option guards against callers that change
        // a buffer while it is in flight). ferry writes immutable `Bytes`
        // that each `Aio` keeps alive until its completion, and librbd then
        // delays that completion until it has released the buffer, so the
        // copy (a memmove of every byte the standby applies) is not needed.
        for (key, value) in [
            ("client_mount_timeout", "30"),
            ("rados_mon_op_timeout", "60"),
            ("rbd_cache", "false"),
            ("rbd_disable_zero_copy_writes", "false"),
        ] {
            let (k, v) = (cstring("option", key)?, cstring("option", value)?);
            // SAFETY: handle valid and unconnected; strings NUL-terminated.
            let rc = unsafe { (api.rados_conf_set)(cluster.handle, k.as_ptr(), v.as_ptr()) };
            check(rc, "rados_conf_set", || format!("{describe} {key}"))?;
        }
        // SAFETY: handle valid; configuration read.
        let rc = unsafe { (api.rados_connect)(cluster.handle) };
        if rc >= 0 {
            tracing::info!(cluster = %describe, "connected to the Ceph cluster");
        }
        check(rc, "rados_connect", || {
            if [libc::ENOENT, libc::EACCES, libc::EPERM].contains(&rc.saturating_neg()) {
                // librados says "No such file or directory" when it finds no
                // key for the user: name what it looked for.
                format!(
                    "{describe}: the monitors refused this user or no key for it was found \
                     (check --id/--keyring, [ceph] client_id/keyring, CEPH_ARGS)"
                )
            } else {
                describe.clone()
            }
        })?;
        Ok(Arc::new(cluster))
    }

    /// Opens an I/O context on `pool`, in RBD namespace `namespace` (the
    /// pool's default namespace when `None`).
    pub fn pool(
        self: &Arc<Self>,
        pool: &str,
        namespace: Option<&str>,
    ) -> Result<Arc<Pool>, CephError> {
        let name = cstring("pool", pool)?;
        let ns = namespace.map(|n| cstring("namespace", n)).transpose()?;
        let mut ioctx: IoctxT = std::ptr::null_mut();
        // SAFETY: connected handle, valid out-pointer, NUL-terminated name.
        let rc = unsafe { (self.api.rados_ioctx_create)(self.handle, name.as_ptr(), &mut ioctx) };
        check(rc, "rados_ioctx_create", || {
            format!("pool {pool} in {}", self.name)
        })?;
        if let Some(ns) = &ns {
            // SAFETY: ioctx was just created; the string is NUL-terminated and
            // librados copies it.
            unsafe { (self.api.rados_ioctx_set_namespace)(ioctx, ns.as_ptr()) };
        }
        Ok(Arc::new(Pool {
            ioctx,
            cluster: self.clone(),
            name: match namespace {
                Some(ns) => format!("{pool}/{ns}"),
                None => pool.to_owned(),
            },
            pool: pool.to_owned(),
            namespace: namespace.map(str::to_owned),
        }))
    }
}

impl Cluster {
    /// The raw `rados_t`, for the object layer in [`super::librados`].
    pub(in crate::sys) fn raw(&self) -> RadosT {
        self.handle
    }

    /// "cluster NAME as client.ID", for messages.
    pub fn describe(&self) -> &str {
        &self.name
    }

    /// `target` of a call that failed with `rc`, naming the cephx user
    /// when the cluster refused the call (EPERM/EACCES): the user's caps
    /// are what is missing.
    fn annotate(&self, rc: c_int, target: String) -> String {
        if [libc::EPERM, libc::EACCES].contains(&rc.saturating_neg()) {
            format!(
                "{target} as {} (the Ceph user lacks a cap: README \"Ceph users and caps\")",
                self.user
            )
        } else {
            target
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: the handle is valid and every Pool (holding an Arc to us)
        // is already gone.
        unsafe { (self.api.rados_shutdown)(self.handle) }
    }
}

/// An I/O context on one pool (and RBD namespace).
pub struct Pool {
    ioctx: IoctxT,
    cluster: Arc<Cluster>,
    /// `POOL` or `POOL/NAMESPACE`, as `rbd` addresses it.
    name: String,
    pool: String,
    namespace: Option<String>,
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

    /// Sets a further uint64 option (`RBD_IMAGE_OPTION_*`).
    fn set(&self, key: c_int, value: u64) -> Result<(), CephError> {
        // SAFETY: handle valid; the caller names a known option key of type uint64.
        let rc = unsafe { (self.api.rbd_image_options_set_uint64)(self.handle, key, value) };
        check(rc, "rbd_image_options_set_uint64", || {
            format!("option {key}")
        })
    }
}

impl Drop for Options {
    fn drop(&mut self) {
        // SAFETY: created by rbd_image_options_create, destroyed once.
        unsafe { (self.api.rbd_image_options_destroy)(self.handle) }
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

/// An asynchronous librbd request in flight. Dropping it waits for it.
pub struct Aio {
    completion: CompletionT,
    image: Arc<Image>,
    op: &'static str,
    offset: u64,
    read_buf: Option<BytesMut>,
    _write_bufs: Vec<Bytes>,
    waited: bool,
}

// SAFETY: the completion handle may be waited on from any thread, and the
// buffers it owns move with it.
unsafe impl Send for Aio {}
