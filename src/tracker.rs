//! The tracker: failures per (jail, address) inside findtime, and the
//! decision to ban at the maxretry-th (fail2ban's FailManager).
//!
//! Pure and deterministic: no I/O, no clock. Time arrives on each
//! [`Failure`] (the journal's own timestamp) and as `now` in
//! [`Tracker::expire`], so a journal replay after a restart rebuilds exactly
//! the counts the daemon had. The kernel keeps the ban list; the tracker
//! only remembers until when each address is banned, so that the failures
//! still in the journal after a ban (lines already queued when the element
//! landed) do not ban it again.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::jail::{Bantime, Jail, JailId};
use crate::net::IpNet;
use crate::ticket::{Ban, Failure, Micros};

/// Above this many tracked addresses, the oldest tenth is forgotten: the
/// memory bound under a flood of one-shot addresses.
pub const MAX_TRACKED: usize = 1_000_000;

/// What the tracker made of one failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The address is in the jail's ignoreip: not counted.
    IgnoredIp,
    /// The address is banned in this jail already: not counted.
    AlreadyBanned,
    /// Counted; `failures` within findtime so far (below maxretry).
    Counted {
        /// Failures inside the window, this one included.
        failures: u32,
    },
    /// This failure reached maxretry.
    Ban(Ban),
}

struct Policy {
    maxretry: u32,
    findtime: Micros,
    bantime: Bantime,
    ignoreip: Vec<IpNet>,
}

/// Failure counts and ban suppression for every jail.
pub struct Tracker {
    policies: Vec<Policy>,
    /// Timestamps of the most recent failures (at most maxretry), ascending.
    failures: HashMap<(JailId, IpAddr), Vec<Micros>>,
    /// Until when each address is banned (`Micros::MAX`: permanent).
    banned: HashMap<(JailId, IpAddr), Micros>,
}

impl Tracker {
    /// A tracker for `jails` (`jails[i]` is `JailId(i)`).
    pub fn new(jails: &[Jail]) -> Tracker {
        let policies = jails
            .iter()
            .map(|j| Policy {
                maxretry: j.maxretry.max(1),
                findtime: micros(j.findtime),
                bantime: j.bantime,
                ignoreip: j.ignoreip.clone(),
            })
            .collect();
        Tracker {
            policies,
            failures: HashMap::new(),
            banned: HashMap::new(),
        }
    }

    /// Counts one failure; returns the ban when it is the maxretry-th
    /// within findtime.
    pub fn observe(&mut self, failure: &Failure) -> Verdict {
        let Some(policy) = self.policies.get(failure.jail.index()) else {
            return Verdict::IgnoredIp;
        };
        let ip = failure.ip.to_canonical();
        if policy.ignoreip.iter().any(|net| net.contains(ip)) {
            return Verdict::IgnoredIp;
        }
        let (maxretry, findtime, bantime) =
            (policy.maxretry as usize, policy.findtime, policy.bantime);
        let key = (failure.jail, ip);
        if let Some(&until) = self.banned.get(&key) {
            if failure.time < until {
                return Verdict::AlreadyBanned;
            }
            self.banned.remove(&key);
        }
        if self.failures.len() >= MAX_TRACKED && !self.failures.contains_key(&key) {
            self.evict_oldest();
        }
        let window_start = failure.time.saturating_sub(findtime);
        let times = self.failures.entry(key).or_default();
        // Entries arrive in journal order, which is time order within one
        // file but may step back slightly across interleaved files.
        let at = times.partition_point(|t| *t <= failure.time);
        times.insert(at, failure.time);
        times.retain(|t| *t > window_start || *t == failure.time);
        if times.len() > maxretry {
            let excess = times.len() - maxretry;
            times.drain(..excess);
        }
        let count = times.iter().filter(|t| **t > window_start).count();
        if count < maxretry {
            return Verdict::Counted {
                failures: count as u32,
            };
        }
        self.failures.remove(&key);
        let until = match bantime {
            Bantime::For(d) => failure.time.saturating_add(micros(d)),
            Bantime::Permanent => Micros::MAX,
        };
        self.banned.insert(key, until);
        Verdict::Ban(Ban {
            jail: failure.jail,
            ip,
            bantime,
            time: failure.time,
        })
    }

    /// Forgets failures older than their jail's findtime and bans that have
    /// ended, as of `now`. Call it now and then (the daemon does once a
    /// minute); correctness never depends on it, only memory.
    pub fn expire(&mut self, now: Micros) {
        let policies = &self.policies;
        self.failures.retain(|(jail, _), times| {
            let findtime = policies.get(jail.index()).map_or(0, |p| p.findtime);
            times
                .last()
                .is_some_and(|t| *t > now.saturating_sub(findtime))
        });
        self.banned.retain(|_, until| *until > now);
    }

    /// Forgets a ban (a manual unban), so the address is counted afresh.
    pub fn forget_ban(&mut self, jail: JailId, ip: IpAddr) {
        self.banned.remove(&(jail, ip.to_canonical()));
    }

    /// Failures inside findtime per jail, as of `now`: fail2ban's
    /// "currently failed".
    pub fn currently_failed(&self, jail: JailId, now: Micros) -> usize {
        let Some(policy) = self.policies.get(jail.index()) else {
            return 0;
        };
        self.failures
            .iter()
            .filter(|((j, _), times)| {
                *j == jail
                    && times
                        .last()
                        .is_some_and(|t| *t > now.saturating_sub(policy.findtime))
            })
            .count()
    }

    /// Number of (jail, address) pairs with failures on record.
    pub fn tracked(&self) -> usize {
        self.failures.len()
    }

    fn evict_oldest(&mut self) {
        let mut newest: Vec<Micros> = self
            .failures
            .values()
            .filter_map(|t| t.last().copied())
            .collect();
        let cut = newest.len() / 10;
        if cut == 0 {
            return;
        }
        let (_, nth, _) = newest.select_nth_unstable(cut);
        let threshold = *nth;
        self.failures
            .retain(|_, times| times.last().is_some_and(|t| *t > threshold));
    }
}

fn micros(d: std::time::Duration) -> Micros {
    u64::try_from(d.as_micros()).unwrap_or(Micros::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jail::{JournalMatch, Ports, Protocol};
    use std::time::Duration;

    const S: Micros = 1_000_000;

    fn jail(maxretry: u32, findtime: u64, bantime: Bantime, ignoreip: &[&str]) -> Jail {
        Jail {
            name: "t".into(),
            journalmatch: JournalMatch { groups: vec![] },
            failregex: vec![],
            ignoreregex: vec![],
            maxretry,
            findtime: Duration::from_secs(findtime),
            bantime,
            ignoreip: ignoreip.iter().map(|s| s.parse().unwrap()).collect(),
            ports: Ports::All,
            protocol: Protocol::Tcp,
        }
    }

    fn fail(ip: &str, secs: u64) -> Failure {
        Failure {
            jail: JailId(0),
            ip: ip.parse().unwrap(),
            time: 1_700_000_000 * S + secs * S,
        }
    }

    fn ten_min() -> Bantime {
        Bantime::For(Duration::from_secs(600))
    }

    #[test]
    fn bans_at_the_maxretry_th_failure_within_findtime() {
        let mut t = Tracker::new(&[jail(3, 60, ten_min(), &[])]);
        assert_eq!(
            t.observe(&fail("192.0.2.1", 0)),
            Verdict::Counted { failures: 1 }
        );
        assert_eq!(
            t.observe(&fail("192.0.2.1", 10)),
            Verdict::Counted { failures: 2 }
        );
        let Verdict::Ban(ban) = t.observe(&fail("192.0.2.1", 20)) else {
            panic!("third failure must ban")
        };
        assert_eq!(ban.ip, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(ban.bantime, ten_min());
        assert_eq!(t.observe(&fail("192.0.2.1", 21)), Verdict::AlreadyBanned);
    }

    #[test]
    fn failures_outside_findtime_do_not_count() {
        let mut t = Tracker::new(&[jail(3, 60, ten_min(), &[])]);
        t.observe(&fail("192.0.2.1", 0));
        t.observe(&fail("192.0.2.1", 50));
        // 0 has left the window at 61.
        assert_eq!(
            t.observe(&fail("192.0.2.1", 61)),
            Verdict::Counted { failures: 2 }
        );
        assert!(matches!(t.observe(&fail("192.0.2.1", 70)), Verdict::Ban(_)));
    }

    #[test]
    fn addresses_and_jails_count_separately() {
        let mut t = Tracker::new(&[jail(2, 60, ten_min(), &[]), jail(2, 60, ten_min(), &[])]);
        t.observe(&fail("192.0.2.1", 0));
        assert_eq!(
            t.observe(&fail("192.0.2.2", 1)),
            Verdict::Counted { failures: 1 }
        );
        let mut other = fail("192.0.2.1", 2);
        other.jail = JailId(1);
        assert_eq!(t.observe(&other), Verdict::Counted { failures: 1 });
        assert!(matches!(t.observe(&fail("192.0.2.1", 3)), Verdict::Ban(_)));
    }

    #[test]
    fn ignoreip_is_checked_before_counting() {
        let mut t = Tracker::new(&[jail(1, 60, ten_min(), &["192.0.2.0/24", "2001:db8::/32"])]);
        assert_eq!(t.observe(&fail("192.0.2.9", 0)), Verdict::IgnoredIp);
        assert_eq!(t.observe(&fail("2001:db8::5", 0)), Verdict::IgnoredIp);
        assert_eq!(t.observe(&fail("::ffff:192.0.2.9", 0)), Verdict::IgnoredIp);
        assert!(matches!(
            t.observe(&fail("198.51.100.1", 0)),
            Verdict::Ban(_)
        ));
        assert_eq!(t.tracked(), 0);
    }

    #[test]
    fn counts_again_after_the_ban_ends() {
        let mut t = Tracker::new(&[jail(1, 60, Bantime::For(Duration::from_secs(5)), &[])]);
        assert!(matches!(t.observe(&fail("192.0.2.1", 0)), Verdict::Ban(_)));
        assert_eq!(t.observe(&fail("192.0.2.1", 4)), Verdict::AlreadyBanned);
        assert!(matches!(t.observe(&fail("192.0.2.1", 5)), Verdict::Ban(_)));
    }

    #[test]
    fn permanent_bans_never_end() {
        let mut t = Tracker::new(&[jail(1, 60, Bantime::Permanent, &[])]);
        assert!(matches!(t.observe(&fail("192.0.2.1", 0)), Verdict::Ban(_)));
        t.expire(Micros::MAX - 1);
        assert_eq!(
            t.observe(&fail("192.0.2.1", 999_999)),
            Verdict::AlreadyBanned
        );
    }

    #[test]
    fn out_of_order_failures_are_counted_by_their_time() {
        let mut t = Tracker::new(&[jail(3, 60, ten_min(), &[])]);
        t.observe(&fail("192.0.2.1", 100));
        t.observe(&fail("192.0.2.1", 30)); // older than the window of 100: 40..100
        assert_eq!(
            t.observe(&fail("192.0.2.1", 101)),
            Verdict::Counted { failures: 2 }
        );
    }

    #[test]
    fn expire_forgets_stale_addresses() {
        let mut t = Tracker::new(&[jail(5, 60, ten_min(), &[])]);
        t.observe(&fail("192.0.2.1", 0));
        t.observe(&fail("192.0.2.2", 100));
        t.expire(1_700_000_000 * S + 120 * S);
        assert_eq!(t.tracked(), 1);
        assert_eq!(
            t.currently_failed(JailId(0), 1_700_000_000 * S + 120 * S),
            1
        );
    }

    #[test]
    fn memory_per_address_is_bounded_by_maxretry() {
        // Out-of-window history is trimmed as failures arrive: an address
        // failing slowly forever keeps at most maxretry timestamps.
        let mut t = Tracker::new(&[jail(3, 10, ten_min(), &[])]);
        for i in 0..1000 {
            t.observe(&fail("192.0.2.1", i * 20));
        }
        assert!(t.failures.values().all(|v| v.len() <= 3));
        assert_eq!(t.tracked(), 1);
    }
}
