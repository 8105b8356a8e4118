//! The console's sign-in sessions, in memory only (an agent restart signs
//! everyone out): a random 256-bit session id (the `ferry_session` cookie)
//! and a random 256-bit CSRF token per session, the access of the token the
//! operator signed in with, an idle expiry that slides with every use and an
//! absolute one that does not, and a bound on how many sessions exist.
//!
//! The store never holds a session id itself, only its BLAKE3 hash: a map
//! look-up's timing (or a memory dump) says nothing about a valid cookie.
//! The CSRF token is compared in constant time (`subtle`).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::wire::tokens::Access;

/// A session unused for this long is gone.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// A session is gone this long after sign-in, used or not.
pub const ABSOLUTE_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at most; signing in beyond it ends the least recently
/// used one.
pub const MAX_SESSIONS: usize = 64;

/// What a valid session grants, as the store hands it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionView {
    /// The access of the token signed in with.
    pub access: Access,
    /// The session's CSRF token (base64url).
    pub csrf: String,
    /// When the session ends unless used again (the earlier of the idle and
    /// the absolute expiry), wall clock.
    pub expires_at: SystemTime,
}

struct Session {
    access: Access,
    csrf: String,
    created: Instant,
    last_used: Instant,
}

impl Session {
    fn ends(&self) -> Instant {
        (self.last_used + IDLE_TIMEOUT).min(self.created + ABSOLUTE_TIMEOUT)
    }

    fn view(&self, now: Instant) -> SessionView {
        let left = self.ends().saturating_duration_since(now);
        SessionView {
            access: self.access,
            csrf: self.csrf.clone(),
            expires_at: SystemTime::now() + left,
        }
    }
}

/// The sessions of one agent (see the module doc).
#[derive(Default)]
pub struct SessionStore {
    sessions: HashMap<[u8; 32], Session>,
}

/// 256 random bits, base64url without padding (43 characters).
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn key(id: &str) -> [u8; 32] {
    *blake3::hash(id.as_bytes()).as_bytes()
}

impl SessionStore {
    /// Starts a session with `access` at `now`; returns its id (the cookie
    /// value) and what it grants. Expired sessions are dropped first; at
    /// [`MAX_SESSIONS`] the least recently used one is ended.
    pub fn create(&mut self, access: Access, now: Instant) -> (String, SessionView) {
        self.sessions.retain(|_, s| s.ends() > now);
        while self.sessions.len() >= MAX_SESSIONS {
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => self.sessions.remove(&k),
                None => break,
            };
        }
        let id = random_token();
        let session = Session {
            access,
            csrf: random_token(),
            created: now,
            last_used: now,
        };
        let view = session.view(now);
        self.sessions.insert(key(&id), session);
        (id, view)
    }

    /// The session with cookie value `id` if it is valid at `now`, marking
    /// it used (the idle expiry slides); an expired one is removed.
    pub fn touch(&mut self, id: &str, now: Instant) -> Option<SessionView> {
        let k = key(id);
        let session = self.sessions.get_mut(&k)?;
        if session.ends() <= now {
            self.sessions.remove(&k);
            return None;
        }
        session.last_used = now;
        Some(session.view(now))
    }

    /// Ends the session with cookie value `id`; whether there was one.
    pub fn remove(&mut self, id: &str) -> bool {
        self.sessions.remove(&key(id)).is_some()
    }

    /// Sessions held (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

/// Whether `presented` is the session's CSRF token (constant time).
pub fn csrf_matches(view: &SessionView, presented: Option<&str>) -> bool {
    match presented {
        Some(p) => p.as_bytes().ct_eq(view.csrf.as_bytes()).into(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_id_only_and_carries_its_access() {
        let mut store = SessionStore::default();
        let now = Instant::now();
        let (id, view) = store.create(Access::ReadOnly, now);
        assert_eq!(id.len(), 43);
        assert_eq!(view.csrf.len(), 43);
        assert_ne!(id, view.csrf);
        let found = store.touch(&id, now).expect("the session");
        assert_eq!(found.access, Access::ReadOnly);
        assert_eq!(found.csrf, view.csrf);
        assert!(store.touch(&view.csrf, now).is_none());
        assert!(store.touch("", now).is_none());
        let (other, _) = store.create(Access::Operator, now);
        assert_ne!(other, id);
        assert_eq!(store.touch(&other, now).unwrap().access, Access::Operator);
    }

    #[test]
    fn idle_expiry_slides_with_use() {
        let mut store = SessionStore::default();
        let t0 = Instant::now();
        let (id, _) = store.create(Access::Operator, t0);
        let step = IDLE_TIMEOUT - Duration::from_secs(1);
        // Used just before each idle expiry: still valid well past one
        // idle period after sign-in.
        let mut t = t0;
        for _ in 0..4 {
            t += step;
            assert!(store.touch(&id, t).is_some());
        }
        // Then left alone for a full idle period: gone, and removed.
        assert!(store.touch(&id, t + IDLE_TIMEOUT).is_none());
        assert!(store.is_empty());
        assert!(store.touch(&id, t).is_none());
    }

    #[test]
    fn absolute_expiry_ends_a_session_in_constant_use() {
        let mut store = SessionStore::default();
        let t0 = Instant::now();
        let (id, _) = store.create(Access::Operator, t0);
        let mut t = t0;
        while t + Duration::from_secs(600) < t0 + ABSOLUTE_TIMEOUT {
            t += Duration::from_secs(600);
            assert!(store.touch(&id, t).is_some(), "{:?}", t - t0);
        }
        assert!(store.touch(&id, t0 + ABSOLUTE_TIMEOUT).is_none());
    }

    #[test]
    fn the_expiry_reported_is_the_earlier_of_idle_and_absolute() {
        let mut store = SessionStore::default();
        let t0 = Instant::now();
        let (id, view) = store.create(Access::Operator, t0);
        let idle_end = SystemTime::now() + IDLE_TIMEOUT;
        let slack = Duration::from_secs(5);
        assert!(view.expires_at <= idle_end + slack && view.expires_at + slack >= idle_end);
        // Near the absolute end, the absolute end is what is left.
        let late = t0 + ABSOLUTE_TIMEOUT - Duration::from_secs(60);
        let mut t = t0;
        while t + IDLE_TIMEOUT / 2 < late {
            t += IDLE_TIMEOUT / 2;
            store.touch(&id, t).unwrap();
        }
        let view = store.touch(&id, late).unwrap();
        let left = view
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        assert!(left <= Duration::from_secs(60), "{left:?}");
    }

    #[test]
    fn the_count_is_bounded_and_the_least_recently_used_goes_first() {
        let mut store = SessionStore::default();
        let t0 = Instant::now();
        let ids: Vec<String> = (0..MAX_SESSIONS)
            .map(|i| {
                store
                    .create(Access::Operator, t0 + Duration::from_secs(i as u64))
                    .0
            })
            .collect();
        assert_eq!(store.len(), MAX_SESSIONS);
        let t = t0 + Duration::from_secs(MAX_SESSIONS as u64);
        // The first is used again: the second is now the least recent.
        assert!(store.touch(&ids[0], t).is_some());
        let (newest, _) = store.create(Access::Operator, t);
        assert_eq!(store.len(), MAX_SESSIONS);
        assert!(
            store.touch(&ids[1], t).is_none(),
            "the LRU session survived"
        );
        assert!(store.touch(&ids[0], t).is_some());
        assert!(store.touch(&newest, t).is_some());
        for _ in 0..3 * MAX_SESSIONS {
            store.create(Access::ReadOnly, t);
            assert!(store.len() <= MAX_SESSIONS);
        }
    }

    #[test]
    fn expired_sessions_are_dropped_when_signing_in() {
        let mut store = SessionStore::default();
        let t0 = Instant::now();
        for _ in 0..10 {
            store.create(Access::Operator, t0);
        }
        store.create(Access::Operator, t0 + IDLE_TIMEOUT + Duration::from_secs(1));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn logout_removes_and_csrf_is_compared_exactly() {
        let mut store = SessionStore::default();
        let now = Instant::now();
        let (id, view) = store.create(Access::Operator, now);
        assert!(csrf_matches(&view, Some(&view.csrf)));
        assert!(!csrf_matches(&view, None));
        assert!(!csrf_matches(&view, Some("")));
        assert!(!csrf_matches(&view, Some(&view.csrf[..42])));
        assert!(!csrf_matches(&view, Some(&format!("{}x", view.csrf))));
        assert!(store.remove(&id));
        assert!(!store.remove(&id));
        assert!(store.touch(&id, now).is_none());
    }
}
