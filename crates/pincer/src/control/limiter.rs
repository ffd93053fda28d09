//! Rate limit of failed authentications per client address: after
//! [`AuthLimiter::MAX_FAILURES`] failures within [`AuthLimiter::WINDOW`], further attempts
//! from that address are refused without checking the token until the window has passed.
//! Bounded: at most [`AuthLimiter::MAX_ADDRESSES`] addresses are tracked (the oldest entry is
//! evicted), so a flood from many addresses cannot grow memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed-auth bookkeeping, shared by the WebSocket handshake and the HTTP API.
#[derive(Debug, Default)]
pub struct AuthLimiter {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl AuthLimiter {
    /// Failures allowed per address within the window.
    pub const MAX_FAILURES: u32 = 5;
    /// The window (60 s), counted from the first failure.
    pub const WINDOW: Duration = Duration::from_secs(60);
    /// Addresses tracked at most.
    pub const MAX_ADDRESSES: usize = 4096;

    /// `Err(retry_after)` when `ip` is locked out at `now`.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&ip) {
            Some((n, since)) if *n >= Self::MAX_FAILURES && now.duration_since(*since) < Self::WINDOW => {
                Err(Self::WINDOW - now.duration_since(*since))
            }
            _ => Ok(()),
        }
    }

    /// Record a failed authentication from `ip`.
    pub fn failure(&self, ip: IpAddr, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= Self::MAX_ADDRESSES && !map.contains_key(&ip) {
            if let Some(oldest) = map.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        let e = map.entry(ip).or_insert((0, now));
        if now.duration_since(e.1) >= Self::WINDOW {
            *e = (0, now);
        }
        e.0 += 1;
    }

    /// A successful authentication clears the address.
    pub fn success(&self, ip: IpAddr) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_out_after_five_failures_for_the_rest_of_the_window() {
        let l = AuthLimiter::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..AuthLimiter::MAX_FAILURES {
            assert!(l.check(ip, t0).is_ok());
            l.failure(ip, t0);
        }
        let wait = l.check(ip, t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        assert!(l.check(other, t0).is_ok(), "per address");
        assert!(l.check(ip, t0 + AuthLimiter::WINDOW).is_ok(), "the window passes");
        l.failure(ip, t0 + AuthLimiter::WINDOW);
        assert!(l.check(ip, t0 + AuthLimiter::WINDOW).is_ok(), "a new window starts counting at one");
        l.success(ip);
        assert!(l.failures.lock().unwrap().is_empty());
    }

    #[test]
    fn tracking_is_bounded() {
        let l = AuthLimiter::default();
        let t0 = Instant::now();
        for i in 0..(AuthLimiter::MAX_ADDRESSES as u32 + 10) {
            l.failure(IpAddr::from(i.to_be_bytes()), t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(l.failures.lock().unwrap().len(), AuthLimiter::MAX_ADDRESSES);
    }
}
