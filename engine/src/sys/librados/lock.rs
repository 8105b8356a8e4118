//! Advisory RADOS locks (`cls_lock`) with a duration, and the client
//! identities and blocklisting that leases and fencing need: who holds a
//! lock ([`Pool::lockers`]), this client's global id and address
//! ([`Cluster::instance_id`], [`Cluster::addrs`]), and refusing a client
//! at the OSDs ([`Cluster::blocklist_add`]).

use std::ffi::{c_char, c_int};
use std::time::Duration;

use super::{api, check, cstring, CephError, Cluster, Pool};

/// `LIBRADOS_LOCK_FLAG_MAY_RENEW`.
const FLAG_MAY_RENEW: u8 = 1 << 0;
/// `LIBRADOS_LOCK_FLAG_MUST_RENEW`.
const FLAG_MUST_RENEW: u8 = 1 << 1;

/// How [`Pool::lock_exclusive`] treats a lock this (client, cookie)
/// already holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// Take it; `EEXIST` when this (client, cookie) already holds it.
    Acquire,
    /// Take it, or extend it when already held by this (client, cookie).
    MayRenew,
    /// Extend it only: `ENOENT` unless this (client, cookie) still holds
    /// it (it expired, was broken, or another client took it).
    MustRenew,
}

/// One holder of a lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Locker {
    /// `client.GID`.
    pub client: String,
    /// The holder's cookie.
    pub cookie: String,
    /// The holder's address, suitable for [`Cluster::blocklist_add`].
    pub address: String,
}

/// The holders of a lock.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockInfo {
    /// Whether the lock is exclusive.
    pub exclusive: bool,
    /// The lock's tag.
    pub tag: String,
    /// Its holders (none when free).
    pub lockers: Vec<Locker>,
}

fn split_nul(buf: &[u8], count: usize) -> Vec<String> {
    buf.split(|b| *b == 0)
        .take(count)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

impl Pool {
    /// Takes (or renews, per `mode`) exclusive lock `name` on object `oid`
    /// as `cookie`, for `duration` (for ever when `None`); the object is
    /// created if missing. `EBUSY` ([`CephError::is_busy`]) while another
    /// (client, cookie) holds an unexpired lock.
    pub fn lock_exclusive(
        &self,
        oid: &str,
        name: &str,
        cookie: &str,
        description: &str,
        duration: Option<Duration>,
        mode: LockMode,
    ) -> Result<(), CephError> {
        let api = api()?;
        let (c_oid, c_name) = (cstring("object", oid)?, cstring("lock", name)?);
        let c_cookie = cstring("lock cookie", cookie)?;
        let c_desc = cstring("lock description", description)?;
        let mut tv = duration.map(|d| libc::timeval {
            tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_usec: libc::suseconds_t::from(d.subsec_micros()),
        });
        let flags = match mode {
            LockMode::Acquire => 0,
            LockMode::MayRenew => FLAG_MAY_RENEW,
            LockMode::MustRenew => FLAG_MUST_RENEW,
        };
        // SAFETY: live ioctx, NUL-terminated strings, and a timeval on this
        // frame or NULL (no expiry).
        let rc = unsafe {
            (api.rados_lock_exclusive)(
                self.raw_ioctx(),
                c_oid.as_ptr(),
                c_name.as_ptr(),
                c_cookie.as_ptr(),
                c_desc.as_ptr(),
                tv.as_mut()
                    .map_or(std::ptr::null_mut(), |t| t as *mut libc::timeval),
                flags,
            )
        };
        check(self, rc, "rados_lock_exclusive", oid)
    }

    /// Releases lock `name` on `oid` held by this client as `cookie`
    /// (`ENOENT` when it does not hold it).
    pub fn unlock(&self, oid: &str, name: &str, cookie: &str) -> Result<(), CephError> {
        let api = api()?;
        let (c_oid, c_name) = (cstring("object", oid)?, cstring("lock", name)?);
        let c_cookie = cstring("lock cookie", cookie)?;
        // SAFETY: live ioctx, NUL-terminated strings.
        let rc = unsafe {
            (api.rados_unlock)(
                self.raw_ioctx(),
                c_oid.as_ptr(),
                c_name.as_ptr(),
                c_cookie.as_ptr(),
            )
        };
        check(self, rc, "rados_unlock", oid)
    }

    /// Who holds lock `name` on `oid` (expired holders are still listed
    /// until someone takes the lock over).
    pub fn lockers(&self, oid: &str, name: &str) -> Result<LockInfo, CephError> {
        let api = api()?;
        let (c_oid, c_name) = (cstring("object", oid)?, cstring("lock", name)?);
        let mut sizes = [256usize; 4];
        loop {
            let mut bufs: [Vec<u8>; 4] = sizes.map(|n| vec![0u8; n.max(1)]);
            let mut lens = sizes.map(|n| n.max(1));
            let mut exclusive: c_int = 0;
            let [tag, clients, cookies, addrs] = &mut bufs;
            let [tag_len, clients_len, cookies_len, addrs_len] = &mut lens;
            // SAFETY: live ioctx, NUL-terminated strings; each buffer holds
            // at least the length passed with it, and librados writes no
            // more (it returns ERANGE with the sizes it needs instead).
            let rc = unsafe {
                (api.rados_list_lockers)(
                    self.raw_ioctx(),
                    c_oid.as_ptr(),
                    c_name.as_ptr(),
                    &mut exclusive,
                    tag.as_mut_ptr().cast::<c_char>(),
                    tag_len,
                    clients.as_mut_ptr().cast::<c_char>(),
                    clients_len,
                    cookies.as_mut_ptr().cast::<c_char>(),
                    cookies_len,
                    addrs.as_mut_ptr().cast::<c_char>(),
                    addrs_len,
                )
            };
            if rc == -(libc::ERANGE as isize) {
                let grown = lens.map(|n| n.max(1));
                if grown.iter().zip(&sizes).all(|(g, s)| g <= s) {
                    // Nothing asked for more: grow all to make progress.
                    sizes = sizes.map(|n| n * 2);
                } else {
                    sizes = grown;
                }
                continue;
            }
            let count = c_int::try_from(rc).unwrap_or(c_int::MIN);
            check(self, count, "rados_list_lockers", oid)?;
            let count = usize::try_from(rc).unwrap_or(0);
            let used = |buf: &[u8], len: usize| buf[..len.min(buf.len())].to_vec();
            let clients = split_nul(&used(&bufs[1], lens[1]), count);
            let cookies = split_nul(&used(&bufs[2], lens[2]), count);
            let addrs = split_nul(&used(&bufs[3], lens[3]), count);
            let tag = split_nul(&used(&bufs[0], lens[0]), 1);
            return Ok(LockInfo {
                exclusive: exclusive != 0,
                tag: tag.into_iter().next().unwrap_or_default(),
                lockers: clients
                    .into_iter()
                    .zip(cookies)
                    .zip(addrs)
                    .map(|((client, cookie), address)| Locker {
                        client,
                        cookie,
                        address,
                    })
                    .collect(),
            });
        }
    }

    /// Breaks lock `name` on `oid` held by `client` (`client.GID`) as
    /// `cookie`. The holder is not stopped: fence it with
    /// [`Cluster::blocklist_add`] first.
    pub fn break_lock(
        &self,
        oid: &str,
        name: &str,
        client: &str,
        cookie: &str,
    ) -> Result<(), CephError> {
        let api = api()?;
        let (c_oid, c_name) = (cstring("object", oid)?, cstring("lock", name)?);
        let (c_client, c_cookie) = (cstring("client", client)?, cstring("lock cookie", cookie)?);
        // SAFETY: live ioctx, NUL-terminated strings.
        let rc = unsafe {
            (api.rados_break_lock)(
                self.raw_ioctx(),
                c_oid.as_ptr(),
                c_name.as_ptr(),
                c_client.as_ptr(),
                c_cookie.as_ptr(),
            )
        };
        check(self, rc, "rados_break_lock", oid)
    }
}

impl Cluster {
    /// This client's global id (`client.ID`, as lockers and notifiers name
    /// it).
    pub fn instance_id(&self) -> Result<u64, CephError> {
        let api = api()?;
        // SAFETY: connected cluster handle.
        Ok(unsafe { (api.rados_get_instance_id)(self.raw()) })
    }

    /// This client's addresses, as librados prints them (e.g.
    /// `[v2:127.0.0.1:0/1234,...]` or a single `127.0.0.1:0/1234`).
    pub fn addrs(&self) -> Result<String, CephError> {
        let api = api()?;
        let mut out: *mut c_char = std::ptr::null_mut();
        // SAFETY: connected handle, valid out-pointer.
        let rc = unsafe { (api.rados_getaddrs)(self.raw(), &mut out) };
        crate::sys::librbd::check(rc, "rados_getaddrs", || self.describe().to_owned())?;
        if out.is_null() {
            return Ok(String::new());
        }
        // SAFETY: librados returns a strdup'ed NUL-terminated string; it is
        // copied, then freed once with free(3).
        let addrs = unsafe { std::ffi::CStr::from_ptr(out) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: as above.
        unsafe { libc::free(out.cast()) };
        Ok(addrs)
    }

    /// Blocklists client address `address` (as [`Locker::address`] gives
    /// it) at the OSDs for `expire` (the cluster's default, one hour, when
    /// zero): its later operations fail with `EBLOCKLISTED`. Returns once
    /// the OSD map that says so is out.
    pub fn blocklist_add(&self, address: &str, expire: Duration) -> Result<(), CephError> {
        let api = api()?;
        let c_addr = cstring("client address", address)?;
        let secs = u32::try_from(expire.as_secs()).unwrap_or(u32::MAX);
        // SAFETY: connected handle; librados only reads the NUL-terminated
        // address (the C prototype lacks `const`).
        let rc = unsafe { (api.blocklist_add)(self.raw(), c_addr.as_ptr().cast_mut(), secs) };
        crate::sys::librbd::check(rc, "rados_blocklist_add", || address.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_separated_lists_split_into_count_entries() {
        assert_eq!(
            split_nul(b"client.1\0client.22\0", 2),
            vec!["client.1".to_owned(), "client.22".to_owned()]
        );
        assert_eq!(split_nul(b"", 0), Vec::<String>::new());
        assert_eq!(split_nul(b"x\0", 1), vec!["x".to_owned()]);
    }
}
