//! RADOS objects through librados' C API (`rados/librados.h`), for the
//! state a multi-agent site keeps in its Ceph cluster: omap key/values
//! written by atomic, compare-guarded write ops ([`omap`]), watch/notify
//! ([`watch`]), and advisory locks with a duration, client identities and
//! blocklisting for leases and fencing ([`lock`]).
//!
//! The functions are resolved at run time from `librados.so.2`, like the
//! librbd binding in [`super::librbd`], whose [`Cluster`] and [`Pool`]
//! handles these calls run on; only a site that asks for RADOS needs the
//! library. The table is loaded on its own, so a librados too old for one of
//! these symbols still lets the RBD backend work.

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::OnceLock;

pub use super::librbd::{CephError, Cluster, ClusterSpec, Pool};

pub mod lock;
pub mod omap;
pub mod watch;

type RadosT = *mut c_void;
type IoctxT = *mut c_void;
type WriteOpT = *mut c_void;
type ReadOpT = *mut c_void;
type OmapIterT = *mut c_void;
/// `rados_watchcb2_t`: (arg, notify_id, cookie, notifier_id, data, len).
type WatchCb = unsafe extern "C" fn(*mut c_void, u64, u64, u64, *mut c_void, usize);
/// `rados_watcherrcb_t`: (arg, cookie, err).
type WatchErrCb = unsafe extern "C" fn(*mut c_void, u64, c_int);
/// `rados_blocklist_add` / `rados_blacklist_add`.
type BlocklistFn = unsafe extern "C" fn(RadosT, *mut c_char, u32) -> c_int;

macro_rules! rados_api {
    ($( $name:ident : fn($($arg:ty),*) $(-> $ret:ty)? ;)*) => {
        /// Function pointers resolved from librados.so.2.
        struct RadosApi {
            $( $name: unsafe extern "C" fn($($arg),*) $(-> $ret)?, )*
            /// `rados_blocklist_add`, or `rados_blacklist_add` before Pacific.
            blocklist_add: BlocklistFn,
        }

        impl RadosApi {
            fn load(lib: &libloading::Library) -> Result<Self, String> {
                Ok(Self {
                    $( $name: {
                        // SAFETY: the symbol is declared with its C signature
                        // from Pacific's librados.h (ABI stable since each
                        // function appeared); the pointer is copied out while
                        // the library stays loaded for the life of the
                        // process (it lives in a static).
                        let symbol = unsafe {
                            lib.get::<unsafe extern "C" fn($($arg),*) $(-> $ret)?>(
                                concat!(stringify!($name), "\0").as_bytes(),
                            )
                        };
                        *symbol.map_err(|e| e.to_string())?
                    }, )*
                    blocklist_add: {
                        // SAFETY: both names have the signature of
                        // `BlocklistFn` in librados.h; the library stays
                        // loaded as above.
                        let symbol = unsafe {
                            lib.get::<BlocklistFn>(b"rados_blocklist_add\0")
                                .or_else(|_| lib.get::<BlocklistFn>(b"rados_blacklist_add\0"))
                        };
                        *symbol.map_err(|e| e.to_string())?
                    },
                })
            }
        }
    };
}

rados_api! {
    rados_get_instance_id: fn(RadosT) -> u64;
    rados_getaddrs: fn(RadosT, *mut *mut c_char) -> c_int;
    rados_buffer_free: fn(*mut c_char);
    rados_remove: fn(IoctxT, *const c_char) -> c_int;
    rados_create_write_op: fn() -> WriteOpT;
    rados_release_write_op: fn(WriteOpT);
    rados_write_op_create: fn(WriteOpT, c_int, *const c_char);
    rados_write_op_assert_exists: fn(WriteOpT);
    rados_write_op_omap_cmp2: fn(WriteOpT, *const c_char, u8, *const c_char, usize, usize, *mut c_int);
    rados_write_op_omap_set2: fn(WriteOpT, *const *const c_char, *const *const c_char, *const usize, *const usize, usize);
    rados_write_op_omap_rm_keys2: fn(WriteOpT, *const *const c_char, *const usize, usize);
    rados_write_op_remove: fn(WriteOpT);
    rados_write_op_operate2: fn(WriteOpT, IoctxT, *const c_char, *mut libc::timespec, c_int) -> c_int;
    rados_create_read_op: fn() -> ReadOpT;
    rados_release_read_op: fn(ReadOpT);
    rados_read_op_omap_get_vals2: fn(ReadOpT, *const c_char, *const c_char, u64, *mut OmapIterT, *mut u8, *mut c_int);
    rados_read_op_omap_get_vals_by_keys2: fn(ReadOpT, *const *const c_char, usize, *const usize, *mut OmapIterT, *mut c_int);
    rados_read_op_operate: fn(ReadOpT, IoctxT, *const c_char, c_int) -> c_int;
    rados_omap_get_next2: fn(OmapIterT, *mut *mut c_char, *mut *mut c_char, *mut usize, *mut usize) -> c_int;
    rados_omap_get_end: fn(OmapIterT);
    rados_watch3: fn(IoctxT, *const c_char, *mut u64, WatchCb, WatchErrCb, u32, *mut c_void) -> c_int;
    rados_unwatch2: fn(IoctxT, u64) -> c_int;
    rados_watch_check: fn(IoctxT, u64) -> c_int;
    rados_watch_flush: fn(RadosT) -> c_int;
    rados_notify2: fn(IoctxT, *const c_char, *const c_char, c_int, u64, *mut *mut c_char, *mut usize) -> c_int;
    rados_notify_ack: fn(IoctxT, *const c_char, u64, u64, *const c_char, c_int) -> c_int;
    rados_lock_exclusive: fn(IoctxT, *const c_char, *const c_char, *const c_char, *const c_char, *mut libc::timeval, u8) -> c_int;
    rados_unlock: fn(IoctxT, *const c_char, *const c_char, *const c_char) -> c_int;
    rados_list_lockers: fn(IoctxT, *const c_char, *const c_char, *mut c_int, *mut c_char, *mut usize, *mut c_char, *mut usize, *mut c_char, *mut usize, *mut c_char, *mut usize) -> isize;
    rados_break_lock: fn(IoctxT, *const c_char, *const c_char, *const c_char, *const c_char) -> c_int;
}

struct Loaded {
    api: RadosApi,
    _lib: libloading::Library,
}

static LOADED: OnceLock<Result<Loaded, String>> = OnceLock::new();

const LIBRARY: &str = "librados.so.2";

fn api() -> Result<&'static RadosApi, CephError> {
    let loaded = LOADED.get_or_init(|| {
        // SAFETY: loading librados runs its static initialisers, which have
        // no preconditions on the caller (the librbd binding loads the same
        // library; the loader shares it).
        let lib = unsafe { libloading::Library::new(LIBRARY) }.map_err(|e| e.to_string())?;
        let api = RadosApi::load(&lib)?;
        Ok(Loaded { api, _lib: lib })
    });
    match loaded {
        Ok(l) => Ok(&l.api),
        Err(detail) => Err(CephError::Load {
            library: LIBRARY,
            detail: detail.clone(),
        }),
    }
}

/// `Err` for a failed call (`rc < 0`) on object `oid` of `pool`.
fn check(pool: &Pool, rc: c_int, op: &'static str, oid: &str) -> Result<(), CephError> {
    pool.check(rc, op, || format!("object {oid} in pool {}", pool.name()))
}

fn cstring(what: &'static str, name: &str) -> Result<CString, CephError> {
    CString::new(name).map_err(|_| CephError::BadName {
        what,
        name: name.to_owned(),
    })
}

impl Pool {
    /// Removes object `oid` (`ENOENT` when it is not there).
    pub fn remove_object(&self, oid: &str) -> Result<(), CephError> {
        let api = api()?;
        let c_oid = cstring("object", oid)?;
        // SAFETY: valid ioctx (self lives), NUL-terminated name.
        let rc = unsafe { (api.rados_remove)(self.raw_ioctx(), c_oid.as_ptr()) };
        check(self, rc, "rados_remove", oid)
    }
}
