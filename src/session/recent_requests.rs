//! Recent requests of conversation matching, by the hash of their raw body, so that a client's
//! identical retry attaches to the turn it resent (docs/HTTP_API.md §6.5): a request is
//! remembered while its turn runs and for `retry_grace` after it ended, at most
//! `MAX_REMEMBERED_REQUESTS` of them (the one that ended first is forgotten first).
//! `identity::Continuations` owns one; `note` and `retry_of` are its `note_request` and
//! `retry_of`.
//!
//! Expiry and the cap cost amortised O(1) per request: the ends are queued in the order they
//! happen, and only the front of the queue is looked at.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Requests remembered for retries at most (the oldest finished ones are dropped first).
pub const MAX_REMEMBERED_REQUESTS: usize = 10_000;

#[derive(Default)]
pub struct RecentRequests {
    inner: Mutex<Requests>,
}

#[derive(Default)]
struct Requests {
    /// Body hash → (session key, when its turn ended; None while running).
    by_hash: HashMap<u64, (String, Option<Instant>)>,
    /// (when, body hash) of each request end, oldest first: what expiry and the cap take
    /// from. A record whose request was retried since (running again, or ended later) is
    /// stale and skipped when it comes out (`pop_ended`).
    ends: VecDeque<(Instant, u64)>,
}

impl RecentRequests {
    /// The session of a request with this body that is still running, or that ended less than
    /// `retry_grace` ago.
    pub fn retry_of(&self, body_hash: u64, retry_grace: Duration) -> Option<String> {
        let requests = crate::session::shared::lock(&self.inner);
        requests
            .by_hash
            .get(&body_hash)
            .filter(|(_, ended)| ended.is_none_or(|at| at.elapsed() < retry_grace))
            .map(|(key, _)| key.clone())
    }

    /// Remembers a request of session `key` by its body hash until `retry_grace` after the
    /// returned guard is dropped (when its turn ended). A request remembered already (an
    /// identical retry) runs again under its first key. Forgets the requests that ended
    /// `retry_grace` ago or more, and at the cap the one that ended first.
    pub fn note(&self, body_hash: u64, key: &str, retry_grace: Duration) -> RequestNote<'_> {
        let mut requests = crate::session::shared::lock(&self.inner);
        let now = Instant::now();
        while requests.pop_ended(|at| now.duration_since(at) >= retry_grace) {}
        if requests.by_hash.len() >= MAX_REMEMBERED_REQUESTS {
            // The oldest ended request goes (none while every one is running).
            requests.pop_ended(|_| true);
        }
        requests
            .by_hash
            .entry(body_hash)
            .and_modify(|(_, ended)| *ended = None)
            .or_insert_with(|| (key.to_string(), None));
        RequestNote {
            requests: self,
            body_hash,
        }
    }
}

/// Marks a remembered request's turn as ended when dropped (the request may then be retried
/// for `retry_grace`).
pub struct RequestNote<'a> {
    requests: &'a RecentRequests,
    body_hash: u64,
}

impl Drop for RequestNote<'_> {
    fn drop(&mut self) {
        let mut requests = crate::session::shared::lock(&self.requests.inner);
        let now = Instant::now();
        if let Some((_, ended)) = requests.by_hash.get_mut(&self.body_hash) {
            *ended = Some(now);
            requests.ends.push_back((now, self.body_hash));
            requests.compact_ends();
        }
    }
}

impl Requests {
    /// Whether `ends`' record (`at`, `hash`) is the last end of a request still remembered.
    fn is_current(&self, at: Instant, hash: u64) -> bool {
        self.by_hash.get(&hash).and_then(|(_, ended)| *ended) == Some(at)
    }

    /// Forgets the request that ended longest ago if `due(when it ended)`, dropping the stale
    /// records (of requests retried since) in front of it. True when one was forgotten; false
    /// when the oldest end is not due or no request has ended. O(1) per record, and each
    /// record comes out once.
    fn pop_ended(&mut self, due: impl Fn(Instant) -> bool) -> bool {
        while let Some(&(at, hash)) = self.ends.front() {
            let current = self.is_current(at, hash);
            if current && !due(at) {
                return false;
            }
            self.ends.pop_front();
            if current {
                self.by_hash.remove(&hash);
                return true;
            }
        }
        false
    }

    /// Drops the stale records of `ends` once they outnumber the requests (a request retried
    /// over and over within a long `retry_grace` leaves one per end); amortised O(1), since
    /// at most one record per request is current.
    fn compact_ends(&mut self) {
        if self.ends.len() > 2 * self.by_hash.len() + 64 {
            let ends = std::mem::take(&mut self.ends);
            self.ends = ends
                .into_iter()
                .filter(|&(at, hash)| self.is_current(at, hash))
                .collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Longer than any test runs: an ended request is remembered unless a test says otherwise.
    const GRACE: Duration = Duration::from_secs(3600);

    fn remembered(r: &RecentRequests, body_hash: u64) -> bool {
        crate::session::shared::lock(&r.inner)
            .by_hash
            .contains_key(&body_hash)
    }

    #[test]
    fn an_ended_request_is_forgotten_after_the_retry_grace() {
        let r = RecentRequests::default();
        drop(r.note(1, "k1", GRACE));
        let _running = r.note(2, "k2", GRACE);
        drop(r.note(3, "k3", GRACE));
        assert!(remembered(&r, 1) && remembered(&r, 3));
        // The next request with a zero grace expires every ended one, not the running one.
        let _n = r.note(4, "k4", Duration::ZERO);
        assert!(!remembered(&r, 1) && !remembered(&r, 3));
        assert_eq!(r.retry_of(1, GRACE), None, "forgotten, whatever the grace");
        assert_eq!(r.retry_of(2, Duration::ZERO).as_deref(), Some("k2"));
        assert_eq!(r.retry_of(4, Duration::ZERO).as_deref(), Some("k4"));
    }

    #[test]
    fn the_cap_forgets_the_request_that_ended_first() {
        let r = RecentRequests::default();
        let max = MAX_REMEMBERED_REQUESTS as u64;
        // Noted in one order, ended in the other: the last noted ends first.
        let notes: Vec<_> = (0..max).map(|h| r.note(h, "k", GRACE)).collect();
        for note in notes.into_iter().rev() {
            drop(note);
        }
        let _n = r.note(max, "k", GRACE);
        assert!(!remembered(&r, max - 1), "ended first, forgotten first");
        assert!(remembered(&r, 0) && remembered(&r, max - 2) && remembered(&r, max));
        let _m = r.note(max + 1, "k", GRACE);
        assert!(!remembered(&r, max - 2));
        assert!(remembered(&r, 0) && remembered(&r, max - 3));
    }

    #[test]
    fn a_retried_request_is_not_forgotten_by_its_earlier_end() {
        let r = RecentRequests::default();
        // Request 7 ends, then an identical retry runs it again.
        drop(r.note(7, "k7", GRACE));
        let retry = r.note(7, "k7", GRACE);
        // Expiry: its earlier end is past a zero GRACE, but it is running.
        let _n = r.note(8, "k8", Duration::ZERO);
        assert_eq!(r.retry_of(7, Duration::ZERO).as_deref(), Some("k7"));
        // The cap: every other request ended after 7's first end; 7 is running, so the
        // oldest ended request after it goes.
        for h in 100..100 + MAX_REMEMBERED_REQUESTS as u64 - 2 {
            drop(r.note(h, "k", GRACE));
        }
        let _m = r.note(1, "k1", GRACE);
        assert!(
            remembered(&r, 7),
            "running again: not evicted by its stale end"
        );
        assert!(
            !remembered(&r, 100),
            "the oldest ended request went instead"
        );
        // Ended again: now it is the latest end, and counts from there.
        drop(retry);
        let _o = r.note(2, "k2", GRACE);
        assert!(remembered(&r, 7) && !remembered(&r, 101));
    }

    #[test]
    fn retrying_one_request_over_and_over_keeps_its_end_records_bounded() {
        let r = RecentRequests::default();
        for _ in 0..10_000 {
            drop(r.note(5, "k", GRACE));
        }
        let requests = crate::session::shared::lock(&r.inner);
        assert_eq!(requests.by_hash.len(), 1);
        assert!(requests.ends.len() <= 2 * requests.by_hash.len() + 65);
    }

    /// Time per `note` with `MAX_REMEMBERED_REQUESTS` ended requests remembered (each call
    /// evicts one). `cargo test --release --lib note_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn note_cost_with_a_full_memory() {
        let r = RecentRequests::default();
        for h in 0..MAX_REMEMBERED_REQUESTS as u64 {
            drop(r.note(h, "k", GRACE));
        }
        let calls = 10_000u64;
        let started = Instant::now();
        for h in 0..calls {
            drop(r.note(1_000_000 + h, "k", GRACE));
        }
        let per_call = started.elapsed() / calls as u32;
        println!("note with {MAX_REMEMBERED_REQUESTS} remembered requests: {per_call:?} per call");
    }
}
