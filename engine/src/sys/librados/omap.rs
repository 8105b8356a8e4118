//! Omap key/values of one RADOS object. A [`WriteOp`] collects a create,
//! compare guards, removals and sets that [`Pool::write`] applies as ONE
//! RADOS write operation: the OSD applies all of it or, when a guard
//! fails, none of it (`ECANCELED`). Reads go by key ([`Pool::omap_get`])
//! or by sorted pages ([`Pool::omap_page`], [`Pool::omap_list`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{c_char, c_int};

use super::{api, check, cstring, CephError, OmapIterT, Pool, RadosApi, ReadOpT};

/// `LIBRADOS_CMPXATTR_OP_EQ`.
const CMP_EQ: u8 = 1;
/// `LIBRADOS_CREATE_EXCLUSIVE`.
const CREATE_EXCLUSIVE: c_int = 1;
/// `LIBRADOS_CREATE_IDEMPOTENT`.
const CREATE_IDEMPOTENT: c_int = 0;
/// Entries asked for per page by [`Pool::omap_list`] (the OSD caps a page
/// at `osd_max_omap_entries_per_request`, 131072 by default).
const PAGE: u64 = 1024;

/// How a [`WriteOp`] treats a missing object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Create {
    /// Create it when missing; an existing object is fine.
    IfMissing,
    /// Create it; fail with `EEXIST` if it exists.
    Exclusive,
    /// Require it to exist (`ENOENT` otherwise).
    MustExist,
}

/// Changes to one object's omap, applied atomically by [`Pool::write`].
///
/// Order within the op: the create (or existence check), then every
/// guard, then removals, then sets. A key both removed and set ends set
/// (the later call of [`WriteOp::set`]/[`WriteOp::remove`] wins).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteOp {
    create: Option<Create>,
    guards: Vec<(String, Vec<u8>)>,
    removes: BTreeSet<String>,
    sets: BTreeMap<String, Vec<u8>>,
}

impl WriteOp {
    /// An empty op.
    pub fn new() -> Self {
        Self::default()
    }

    /// What to do about a missing object (by default nothing is said: a
    /// missing object fails guards and sets create it).
    pub fn create(mut self, create: Create) -> Self {
        self.create = Some(create);
        self
    }

    /// Applies the op only if omap key `key` holds exactly `value` (a
    /// missing key compares as empty); otherwise the whole op fails with
    /// `ECANCELED` and changes nothing.
    pub fn guard_eq(mut self, key: &str, value: &[u8]) -> Self {
        self.guards.push((key.to_owned(), value.to_vec()));
        self
    }

    /// Sets `key` to `value`.
    pub fn set(&mut self, key: &str, value: &[u8]) -> &mut Self {
        self.removes.remove(key);
        self.sets.insert(key.to_owned(), value.to_vec());
        self
    }

    /// Removes `key` (a missing key is fine).
    pub fn remove(&mut self, key: &str) -> &mut Self {
        self.sets.remove(key);
        self.removes.insert(key.to_owned());
        self
    }

    /// Whether the op changes no key.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty() && self.removes.is_empty()
    }

    /// Number of keys set or removed.
    pub fn len(&self) -> usize {
        self.sets.len() + self.removes.len()
    }
}

/// One page of an object's omap, sorted by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OmapPage {
    /// The entries.
    pub entries: Vec<(String, Vec<u8>)>,
    /// Whether keys follow the last one.
    pub more: bool,
}

/// Keys as the pointer/length arrays of the `*2` calls; borrows `keys`.
struct KeyArrays {
    ptrs: Vec<*const c_char>,
    lens: Vec<usize>,
}

impl KeyArrays {
    fn new<'a>(keys: impl Iterator<Item = &'a [u8]>) -> Self {
        let (ptrs, lens) = keys.map(|k| (k.as_ptr().cast::<c_char>(), k.len())).unzip();
        Self { ptrs, lens }
    }
}

/// A `rados_write_op_t`, released on drop.
struct RawWriteOp {
    op: super::WriteOpT,
    api: &'static RadosApi,
}

impl RawWriteOp {
    /// A new write op for object `oid` of `pool` (for the error message).
    fn new(pool: &Pool, api: &'static RadosApi, oid: &str) -> Result<Self, CephError> {
        // SAFETY: no preconditions; NULL means allocation failure.
        let op = unsafe { (api.rados_create_write_op)() };
        if op.is_null() {
            check(pool, -libc::ENOMEM, "rados_create_write_op", oid)?;
        }
        Ok(Self { op, api })
    }

    /// Adds a guard: the op applies only while omap key `key` holds
    /// `value`; librados writes the comparison's result into `rc`, which
    /// must stay alive (and in place) until the op is operated.
    fn guard_eq(&self, key: &[u8], value: &[u8], rc: &mut c_int) {
        // SAFETY: live write op; key and value are (pointer, length) pairs
        // that librados copies; `rc` outlives the operate call (the
        // caller's contract above).
        unsafe {
            (self.api.rados_write_op_omap_cmp2)(
                self.op,
                key.as_ptr().cast(),
                CMP_EQ,
                value.as_ptr().cast(),
                key.len(),
                value.len(),
                rc,
            )
        };
    }
}

impl Drop for RawWriteOp {
    fn drop(&mut self) {
        // SAFETY: created by rados_create_write_op, released once.
        unsafe { (self.api.rados_release_write_op)(self.op) }
    }
}

/// A `rados_read_op_t` and the omap iterator it fills, both released on
/// drop (the iterator first: it is allocated when the action is added,
/// whatever the op's outcome).
struct RawReadOp {
    op: ReadOpT,
    iter: OmapIterT,
    api: &'static RadosApi,
}

impl RawReadOp {
    fn new(api: &'static RadosApi) -> Result<Self, CephError> {
        // SAFETY: no preconditions; NULL means allocation failure.
        let op = unsafe { (api.rados_create_read_op)() };
        if op.is_null() {
            return Err(CephError::Call {
                op: "rados_create_read_op",
                target: String::new(),
                source: std::io::Error::from_raw_os_error(libc::ENOMEM),
            });
        }
        Ok(Self {
            op,
            iter: std::ptr::null_mut(),
            api,
        })
    }

    /// Copies out every entry of the iterator.
    fn drain(&self) -> Result<Vec<(String, Vec<u8>)>, CephError> {
        let mut out = Vec::new();
        if self.iter.is_null() {
            return Ok(out);
        }
        loop {
            let mut key: *mut c_char = std::ptr::null_mut();
            let mut val: *mut c_char = std::ptr::null_mut();
            let (mut key_len, mut val_len) = (0usize, 0usize);
            // SAFETY: the iterator was filled by a successful read op and is
            // still open; the out-pointers are valid.
            let rc = unsafe {
                (self.api.rados_omap_get_next2)(
                    self.iter,
                    &mut key,
                    &mut val,
                    &mut key_len,
                    &mut val_len,
                )
            };
            if rc < 0 {
                return Err(crate::sys::librbd::call_error(
                    rc,
                    "rados_omap_get_next2",
                    String::new(),
                ));
            }
            if key.is_null() {
                return Ok(out);
            }
            // SAFETY: librados returned `key_len` bytes at `key` and
            // `val_len` at `val` (NULL only when empty), valid until the
            // iterator is ended; they are copied here.
            let (k, v) = unsafe {
                (
                    std::slice::from_raw_parts(key.cast::<u8>(), key_len),
                    if val.is_null() || val_len == 0 {
                        &[][..]
                    } else {
                        std::slice::from_raw_parts(val.cast::<u8>(), val_len)
                    },
                )
            };
            out.push((String::from_utf8_lossy(k).into_owned(), v.to_vec()));
        }
    }
}

impl Drop for RawReadOp {
    fn drop(&mut self) {
        if !self.iter.is_null() {
            // SAFETY: the iterator was allocated by the read action and is
            // ended once.
            unsafe { (self.api.rados_omap_get_end)(self.iter) }
        }
        // SAFETY: created by rados_create_read_op, released once.
        unsafe { (self.api.rados_release_read_op)(self.op) }
    }
}

impl Pool {
    /// Applies `op` to object `oid` as one atomic RADOS operation. A failed
    /// guard gives `Err` with [`CephError::is_canceled`] and changes
    /// nothing.
    pub fn write(&self, oid: &str, op: &WriteOp) -> Result<(), CephError> {
        let api = api()?;
        let c_oid = cstring("object", oid)?;
        let raw = RawWriteOp::new(self, api, oid)?;
        let exclusive = match op.create {
            Some(Create::IfMissing) => Some(CREATE_IDEMPOTENT),
            Some(Create::Exclusive) => Some(CREATE_EXCLUSIVE),
            Some(Create::MustExist) => {
                // SAFETY: live write op.
                unsafe { (api.rados_write_op_assert_exists)(raw.op) };
                None
            }
            None => None,
        };
        if let Some(exclusive) = exclusive {
            // SAFETY: live write op; the category is unused and may be NULL.
            unsafe { (api.rados_write_op_create)(raw.op, exclusive, std::ptr::null()) };
        }
        // The guards' result slots must outlive the operate call.
        let mut guard_rc: Vec<c_int> = vec![0; op.guards.len()];
        for ((key, value), rc) in op.guards.iter().zip(guard_rc.iter_mut()) {
            raw.guard_eq(key.as_bytes(), value, rc);
        }
        if !op.removes.is_empty() {
            let keys = KeyArrays::new(op.removes.iter().map(|k| k.as_bytes()));
            // SAFETY: live write op; `keys` holds `removes.len()` valid
            // (pointer, length) pairs into `op`, copied by librados.
            unsafe {
                (api.rados_write_op_omap_rm_keys2)(
                    raw.op,
                    keys.ptrs.as_ptr(),
                    keys.lens.as_ptr(),
                    keys.ptrs.len(),
                )
            };
        }
        if !op.sets.is_empty() {
            let keys = KeyArrays::new(op.sets.keys().map(|k| k.as_bytes()));
            let vals = KeyArrays::new(op.sets.values().map(Vec::as_slice));
            // SAFETY: live write op; `keys` and `vals` hold `sets.len()`
            // valid (pointer, length) pairs into `op`, copied by librados.
            unsafe {
                (api.rados_write_op_omap_set2)(
                    raw.op,
                    keys.ptrs.as_ptr(),
                    vals.ptrs.as_ptr(),
                    keys.lens.as_ptr(),
                    vals.lens.as_ptr(),
                    keys.ptrs.len(),
                )
            };
        }
        // SAFETY: live write op and ioctx, NUL-terminated oid; NULL mtime
        // means "now"; the guard slots live on this frame.
        let rc = unsafe {
            (api.rados_write_op_operate2)(
                raw.op,
                self.raw_ioctx(),
                c_oid.as_ptr(),
                std::ptr::null_mut(),
                0,
            )
        };
        drop(raw);
        check(self, rc, "rados_write_op_operate2", oid)
    }

    /// Removes object `oid` in one write op, only while omap key `key`
    /// holds `value` (`ECANCELED` otherwise, and the object stays).
    pub fn remove_guarded(&self, oid: &str, key: &str, value: &[u8]) -> Result<(), CephError> {
        let api = api()?;
        let c_oid = cstring("object", oid)?;
        let raw = RawWriteOp::new(self, api, oid)?;
        let mut rc_guard: c_int = 0;
        raw.guard_eq(key.as_bytes(), value, &mut rc_guard);
        // SAFETY: live write op.
        unsafe { (api.rados_write_op_remove)(raw.op) };
        // SAFETY: as in `write`.
        let rc = unsafe {
            (api.rados_write_op_operate2)(
                raw.op,
                self.raw_ioctx(),
                c_oid.as_ptr(),
                std::ptr::null_mut(),
                0,
            )
        };
        check(self, rc, "rados_write_op_operate2", oid)
    }

    /// The values of `keys` in object `oid`'s omap (missing keys are left
    /// out), read in one operation. `ENOENT` when the object is missing.
    pub fn omap_get(
        &self,
        oid: &str,
        keys: &[&str],
    ) -> Result<BTreeMap<String, Vec<u8>>, CephError> {
        let api = api()?;
        let c_oid = cstring("object", oid)?;
        let mut raw = RawReadOp::new(api)?;
        let arrays = KeyArrays::new(keys.iter().map(|k| k.as_bytes()));
        let mut prval: c_int = 0;
        // SAFETY: live read op; `arrays` holds `keys.len()` (pointer,
        // length) pairs copied by librados; `iter` and `prval` are filled
        // when the op runs below, while both still live.
        unsafe {
            (api.rados_read_op_omap_get_vals_by_keys2)(
                raw.op,
                arrays.ptrs.as_ptr(),
                arrays.ptrs.len(),
                arrays.lens.as_ptr(),
                &mut raw.iter,
                &mut prval,
            )
        };
        self.operate_read(&raw, &c_oid, oid, prval)?;
        Ok(raw.drain()?.into_iter().collect())
    }

    /// Up to `max` omap entries of object `oid` whose keys start with
    /// `prefix`, after key `start_after` (from the first when empty).
    pub fn omap_page(
        &self,
        oid: &str,
        prefix: &str,
        start_after: &str,
        max: u64,
    ) -> Result<OmapPage, CephError> {
        let api = api()?;
        let c_oid = cstring("object", oid)?;
        let c_prefix = cstring("omap key prefix", prefix)?;
        let c_after = cstring("omap key", start_after)?;
        let mut raw = RawReadOp::new(api)?;
        let mut prval: c_int = 0;
        let mut more: u8 = 0;
        // SAFETY: live read op; NUL-terminated strings copied by librados;
        // `iter`, `more` and `prval` are filled when the op runs below,
        // while they still live.
        unsafe {
            (api.rados_read_op_omap_get_vals2)(
                raw.op,
                c_after.as_ptr(),
                c_prefix.as_ptr(),
                max,
                &mut raw.iter,
                &mut more,
                &mut prval,
            )
        };
        self.operate_read(&raw, &c_oid, oid, prval)?;
        Ok(OmapPage {
            entries: raw.drain()?,
            more: more != 0,
        })
    }

    /// Every omap entry of object `oid` whose key starts with `prefix`,
    /// page by page. The pages are separate reads: a caller that needs one
    /// consistent view compares a version key before and after.
    pub fn omap_list(&self, oid: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, CephError> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let page = self.omap_page(oid, prefix, &after, PAGE)?;
            if let Some((last, _)) = page.entries.last() {
                after = last.clone();
            }
            let done = !page.more || page.entries.is_empty();
            out.extend(page.entries);
            if done {
                return Ok(out);
            }
        }
    }

    fn operate_read(
        &self,
        raw: &RawReadOp,
        c_oid: &std::ffi::CStr,
        oid: &str,
        prval: c_int,
    ) -> Result<(), CephError> {
        // SAFETY: live read op and ioctx, NUL-terminated oid.
        let rc =
            unsafe { (raw.api.rados_read_op_operate)(raw.op, self.raw_ioctx(), c_oid.as_ptr(), 0) };
        check(self, rc, "rados_read_op_operate", oid)?;
        check(self, prval, "rados_read_op_omap_get_vals", oid)
    }
}

/// A version key's value as ferry's guarded writes compare it: empty for 0
/// (a missing key compares as empty), else the decimal number.
pub fn version_bytes(v: u64) -> Vec<u8> {
    if v == 0 {
        Vec::new()
    } else {
        v.to_string().into_bytes()
    }
}

/// Reads a version key's value: missing or empty is 0; `None` when it is
/// not a decimal number.
pub fn parse_version(bytes: Option<&Vec<u8>>) -> Option<u64> {
    match bytes {
        None => Some(0),
        Some(b) if b.is_empty() => Some(0),
        Some(b) => std::str::from_utf8(b).ok()?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_set_or_remove_of_a_key_wins() {
        let mut op = WriteOp::new().guard_eq("version", b"3");
        op.set("a", b"1").remove("a").set("b", b"2");
        assert_eq!(op.len(), 2);
        assert!(op.removes.contains("a") && !op.sets.contains_key("a"));
        op.set("a", b"9");
        assert!(!op.removes.contains("a"));
        assert_eq!(op.sets.get("a").map(Vec::as_slice), Some(&b"9"[..]));
        assert!(!op.is_empty());
        assert!(WriteOp::new().is_empty());
    }
}
