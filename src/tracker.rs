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

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::IpAddr;

use crate::jail::{Bantime, Increment, Jail, JailId, PrefixPolicy};
use crate::net::IpNet;
use crate::ticket::{Ban, Failure, Micros};

/// Above this many tracked addresses, the oldest tenth is forgotten: the
/// memory bound under a flood of one-shot addresses. The ban history has
/// the same bound.
pub const MAX_TRACKED: usize = 1_000_000;

/// How long an address's ban history outlives its last ban, unless the
/// jail's `bantime_maxtime` is longer: the decay of escalation.
pub const HISTORY_KEEP: Micros = 7 * 86_400 * 1_000_000;

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

/// An active ban as the tracker remembers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActiveBan {
    /// When it ends (`Micros::MAX`: permanent).
    pub until: Micros,
    /// Its full length.
    pub bantime: Bantime,
}

/// How often, and when last, an address was banned in a jail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct History {
    /// Bans so far.
    pub count: u32,
    /// When the last one started.
    pub last: Micros,
}

struct Policy {
    maxretry: u32,
    findtime: Micros,
    bantime: Bantime,
    increment: Option<Increment>,
    ignoreip: Vec<IpNet>,
    ignoreself: bool,
    prefix: Option<PrefixPolicy>,
}

impl Policy {
    fn ignores(&self, ip: IpAddr, own: &[IpAddr]) -> bool {
        self.ignoreip.iter().any(|net| net.contains(ip))
            || (self.ignoreself && own.binary_search(&ip).is_ok())
    }
}

/// Failure counts, active bans and ban history for every jail.
pub struct Tracker {
    policies: Vec<Policy>,
    /// Timestamps of the most recent failures (at most maxretry), ascending.
    failures: HashMap<(JailId, IpAddr), Vec<Micros>>,
    /// Active bans: suppress counting while banned, and what `state`
    /// restores after a reboot.
    banned: HashMap<(JailId, IpAddr), ActiveBan>,
    history: HashMap<(JailId, IpAddr), History>,
    /// Key for the `bantime_rndtime` jitter, so the unban time cannot be
    /// predicted from the address.
    seed: u64,
    /// The host's own addresses (sorted), for `ignoreself`.
    own: Vec<IpAddr>,
    /// Banned IPv6 addresses per jail and prefix, with their end, for
    /// prefix widening.
    prefix_members: HashMap<(JailId, IpNet), Vec<(IpAddr, Micros)>>,
    /// Active prefix bans.
    prefix_banned: HashMap<(JailId, IpNet), ActiveBan>,
    /// Prefix bans decided but not yet taken by [`Tracker::take_prefix_bans`].
    pending_prefixes: Vec<PrefixBan>,
    /// How many failure windows hold maxretry - 1 failures: the addresses
    /// whose next failure bans. Kept up to date on every change, so that
    /// the daemon can ask it on every loop turn (see
    /// [`Tracker::ban_imminent`]) without scanning the map.
    near: usize,
    /// Some jail has maxretry = 1: any failure bans.
    eager: bool,
}

/// A decision to ban a whole IPv6 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixBan {
    /// The jail that bans.
    pub jail: JailId,
    /// The network.
    pub net: IpNet,
    /// Its length.
    pub bantime: Bantime,
    /// When it started.
    pub time: Micros,
}

impl Tracker {
    /// A tracker for `jails` (`jails[i]` is `JailId(i)`); `seed` keys the
    /// rndtime jitter.
    pub fn new(jails: &[Jail], seed: u64) -> Tracker {
        let policies = jails
            .iter()
            .map(|j| Policy {
                maxretry: j.maxretry.max(1),
                findtime: micros(j.findtime),
                bantime: j.bantime,
                increment: j.increment.clone(),
                ignoreip: j.ignoreip.clone(),
                ignoreself: j.ignoreself,
                prefix: j.ipv6_prefix,
            })
            .collect::<Vec<Policy>>();
        let eager = policies.iter().any(|p| p.maxretry == 1);
        Tracker {
            eager,
            near: 0,
            policies,
            failures: HashMap::new(),
            banned: HashMap::new(),
            history: HashMap::new(),
            seed,
            own: Vec::new(),
            prefix_members: HashMap::new(),
            prefix_banned: HashMap::new(),
            pending_prefixes: Vec::new(),
        }
    }

    /// Tells the tracker the host's own addresses (for `ignoreself`).
    pub fn set_own_addresses(&mut self, addresses: &[IpAddr]) {
        let mut own: Vec<IpAddr> = addresses.iter().map(|a| a.to_canonical()).collect();
        own.sort();
        own.dedup();
        self.own = own;
    }

    /// Whether `ip` is in the jail's ignoreip (or one of ours, with ignoreself).
    pub fn is_ignored(&self, jail: JailId, ip: IpAddr) -> bool {
        self.policies
            .get(jail.index())
            .is_some_and(|p| p.ignores(ip.to_canonical(), &self.own))
    }

    /// Counts one failure; returns the ban when it is the maxretry-th
    /// within findtime.
    pub fn observe(&mut self, failure: &Failure) -> Verdict {
        let Some(policy) = self.policies.get(failure.jail.index()) else {
            return Verdict::IgnoredIp;
        };
        let ip = failure.ip.to_canonical();
        if policy.ignores(ip, &self.own) {
            return Verdict::IgnoredIp;
        }
        let (maxretry, findtime) = (policy.maxretry as usize, policy.findtime);
        let key = (failure.jail, ip);
        if let Some(ban) = self.banned.get(&key) {
            if failure.time < ban.until {
                return Verdict::AlreadyBanned;
            }
            self.banned.remove(&key);
        }
        if self.in_banned_prefix(failure.jail, ip, failure.time) {
            return Verdict::AlreadyBanned;
        }
        match self.count(key, failure.time, maxretry, findtime) {
            Some(failures) => Verdict::Counted { failures },
            None => Verdict::Ban(self.record_ban(failure.jail, ip, failure.time, None)),
        }
    }

    /// Counts a failure seen before a restart or reload, while the journal
    /// is replayed: it rebuilds the failure window, but a window that
    /// reaches maxretry records no ban, since that ban was already decided
    /// then and saved with the state (or has since been lifted).
    pub fn replay(&mut self, failure: &Failure) {
        let Some(policy) = self.policies.get(failure.jail.index()) else {
            return;
        };
        let ip = failure.ip.to_canonical();
        if policy.ignores(ip, &self.own) {
            return;
        }
        let (maxretry, findtime) = (policy.maxretry as usize, policy.findtime);
        let key = (failure.jail, ip);
        if self
            .banned
            .get(&key)
            .is_some_and(|b| failure.time < b.until)
        {
            return;
        }
        // A window that reached maxretry is gone: the ban it led to then
        // is in the state already.
        let _ = self.count(key, failure.time, maxretry, findtime);
    }

    /// Adds a failure to the window of `key`; `Some(count)` below
    /// maxretry, `None` when it reaches maxretry.
    fn count(
        &mut self,
        key: (JailId, IpAddr),
        time: Micros,
        maxretry: usize,
        findtime: Micros,
    ) -> Option<u32> {
        if self.failures.len() >= MAX_TRACKED && !self.failures.contains_key(&key) {
            evict_oldest(&mut self.failures, |t| t.last().copied());
            self.recount_near();
        }
        let window_start = time.saturating_sub(findtime);
        let mut window = match self.failures.entry(key) {
            Entry::Occupied(window) => window,
            Entry::Vacant(empty) => {
                let count = usize::from(time > window_start);
                if count >= maxretry {
                    // Banned at the first failure: no window to keep.
                    return None;
                }
                // Most addresses fail once and are never seen again: room
                // for one timestamp, not the four an empty Vec's first push
                // makes room for (100,000 such addresses: 1.6 MB less).
                let times = empty.insert(Vec::with_capacity(1));
                times.push(time);
                if one_short(times, maxretry) {
                    self.near += 1;
                }
                return Some(count as u32);
            }
        };
        let times = window.get_mut();
        // Stored windows are trimmed to findtime as of their last failure,
        // so the stored length is the count (see `near`).
        let was_near = one_short(times, maxretry);
        // Entries arrive in journal order, which is time order within one
        // file but may step back slightly across interleaved files.
        let at = times.partition_point(|t| *t <= time);
        times.insert(at, time);
        times.retain(|t| *t > window_start || *t == time);
        if times.len() > maxretry {
            let excess = times.len() - maxretry;
            times.drain(..excess);
        }
        let count = times.iter().filter(|t| **t > window_start).count();
        if count >= maxretry {
            // The window has done its work: the ban replaces it.
            window.remove();
            if was_near {
                self.near = self.near.saturating_sub(1);
            }
            return None;
        }
        match (was_near, one_short(times, maxretry)) {
            (false, true) => self.near += 1,
            (true, false) => self.near = self.near.saturating_sub(1),
            _ => {}
        }
        Some(count as u32)
    }

    /// Records a ban decided outside the failure count (`banjo ban`):
    /// `bantime` overrides the jail's (no escalation), `None` uses the
    /// jail's with escalation.
    pub fn ban(&mut self, jail: JailId, ip: IpAddr, time: Micros, bantime: Option<Bantime>) -> Ban {
        let ip = ip.to_canonical();
        self.drop_failures((jail, ip));
        self.record_ban(jail, ip, time, bantime)
    }

    /// [`Tracker::ban`] of a canonical address that has no failure window
    /// (the count that decided it has dropped it).
    fn record_ban(
        &mut self,
        jail: JailId,
        ip: IpAddr,
        time: Micros,
        bantime: Option<Bantime>,
    ) -> Ban {
        let policy = self.policies.get(jail.index());
        let overall = policy
            .and_then(|p| p.increment.as_ref())
            .is_some_and(|i| i.overalljails);
        let overall_previous = overall.then(|| self.previous_bans_overall(ip));
        if self.history.len() >= MAX_TRACKED && !self.history.contains_key(&(jail, ip)) {
            evict_oldest(&mut self.history, |h| Some(h.last));
        }
        let history = self.history.entry((jail, ip)).or_insert(History {
            count: 0,
            last: time,
        });
        let previous = overall_previous.unwrap_or(history.count);
        history.count = history.count.saturating_add(1);
        history.last = time;
        let bantime = match (bantime, policy) {
            (Some(b), _) => b,
            (None, Some(p)) => escalate(
                p.bantime,
                p.increment.as_ref(),
                previous,
                self.seed ^ hash_ip(ip),
            ),
            (None, None) => Bantime::Permanent,
        };
        let until = match bantime {
            Bantime::For(d) => time.saturating_add(micros(d)),
            Bantime::Permanent => Micros::MAX,
        };
        self.banned.insert((jail, ip), ActiveBan { until, bantime });
        self.widen(jail, ip, time, until, bantime);
        Ban {
            jail,
            ip,
            bantime,
            time,
            count: previous.saturating_add(1),
        }
    }

    /// Forgets the failure window of `key`, keeping `near` right.
    fn drop_failures(&mut self, key: (JailId, IpAddr)) {
        if let Some(times) = self.failures.remove(&key) {
            if near(&self.policies, key.0, &times) {
                self.near = self.near.saturating_sub(1);
            }
        }
    }

    /// Counts `near` afresh, after windows were dropped in bulk.
    fn recount_near(&mut self) {
        let policies = &self.policies;
        self.near = self
            .failures
            .iter()
            .filter(|((jail, _), times)| near(policies, *jail, times))
            .count();
    }

    /// Whether the next failure may complete a ban: some address is one
    /// failure short of maxretry, or some jail bans at the first failure.
    /// O(1). It may say yes for a while after such a window has aged out
    /// of findtime (until the next [`Tracker::expire`]), never no while
    /// one is live.
    pub fn ban_imminent(&self) -> bool {
        self.eager || self.near > 0
    }

    fn prefix_of(&self, jail: JailId, ip: IpAddr) -> Option<IpNet> {
        let policy = self.policies.get(jail.index())?.prefix?;
        match ip {
            IpAddr::V6(_) => IpNet::new(ip, policy.len),
            IpAddr::V4(_) => None,
        }
    }

    fn in_banned_prefix(&self, jail: JailId, ip: IpAddr, time: Micros) -> bool {
        self.prefix_of(jail, ip)
            .and_then(|net| self.prefix_banned.get(&(jail, net)))
            .is_some_and(|b| time < b.until)
    }

    /// Counts a new IPv6 ban towards its prefix; at the threshold, the
    /// prefix itself is banned (as long as the longest member ban).
    fn widen(&mut self, jail: JailId, ip: IpAddr, time: Micros, until: Micros, bantime: Bantime) {
        let (Some(net), Some(policy)) = (
            self.prefix_of(jail, ip),
            self.policies.get(jail.index()).and_then(|p| p.prefix),
        ) else {
            return;
        };
        if self.in_banned_prefix(jail, ip, time) {
            return;
        }
        let members = self.prefix_members.entry((jail, net)).or_default();
        members.retain(|(a, end)| *end > time && *a != ip);
        members.push((ip, until));
        if members.len() < policy.threshold as usize {
            return;
        }
        let until = members.iter().map(|(_, end)| *end).max().unwrap_or(until);
        let bantime = if until == Micros::MAX {
            Bantime::Permanent
        } else {
            match bantime {
                Bantime::For(_) => Bantime::For(std::time::Duration::from_micros(until - time)),
                Bantime::Permanent => Bantime::Permanent,
            }
        };
        self.prefix_members.remove(&(jail, net));
        self.prefix_banned
            .insert((jail, net), ActiveBan { until, bantime });
        self.pending_prefixes.push(PrefixBan {
            jail,
            net,
            bantime,
            time,
        });
    }

    /// The prefix bans decided since the last call.
    pub fn take_prefix_bans(&mut self) -> Vec<PrefixBan> {
        std::mem::take(&mut self.pending_prefixes)
    }

    /// Every active prefix ban (for the state file and reconciliation).
    pub fn active_prefix_bans(&self) -> impl Iterator<Item = (JailId, IpNet, ActiveBan)> + '_ {
        self.prefix_banned.iter().map(|((j, n), b)| (*j, *n, *b))
    }

    /// Restores a prefix ban (state file, or found in the kernel).
    pub fn restore_prefix_ban(&mut self, jail: JailId, net: IpNet, ban: ActiveBan) {
        if jail.index() < self.policies.len() {
            self.prefix_banned.insert((jail, net), ban);
        }
    }

    /// Forgets a prefix ban (a manual unban).
    pub fn forget_prefix_ban(&mut self, jail: JailId, net: IpNet) -> bool {
        self.prefix_banned.remove(&(jail, net)).is_some()
    }

    /// Whether a prefix ban is active.
    pub fn active_prefix_ban(&self, jail: JailId, net: IpNet) -> Option<ActiveBan> {
        self.prefix_banned.get(&(jail, net)).copied()
    }

    /// Previous bans of `ip` in every jail (`bantime.overalljails`): one
    /// lookup per jail, not a walk of the whole history (a million
    /// entries at most, for every ban of a flood).
    fn previous_bans_overall(&self, ip: IpAddr) -> u32 {
        (0..self.policies.len())
            .filter_map(|j| u16::try_from(j).ok())
            .filter_map(|j| self.history.get(&(JailId(j), ip)))
            .fold(0u32, |sum, h| sum.saturating_add(h.count))
    }

    /// Forgets failures older than their jail's findtime, bans that have
    /// ended and history that has decayed, as of `now`. Call it now and
    /// then; correctness never depends on it, only memory.
    pub fn expire(&mut self, now: Micros) {
        let policies = &self.policies;
        self.failures.retain(|(jail, _), times| {
            let findtime = policies.get(jail.index()).map_or(0, |p| p.findtime);
            times
                .last()
                .is_some_and(|t| *t > now.saturating_sub(findtime))
        });
        self.banned.retain(|_, ban| ban.until > now);
        self.prefix_banned.retain(|_, ban| ban.until > now);
        self.prefix_members.retain(|_, members| {
            members.retain(|(_, end)| *end > now);
            !members.is_empty()
        });
        self.history.retain(|(jail, _), h| {
            let keep = policies
                .get(jail.index())
                .and_then(|p| p.increment.as_ref())
                .and_then(|i| i.maxtime)
                .map_or(HISTORY_KEEP, |m| micros(m).max(HISTORY_KEEP));
            h.last.saturating_add(keep) > now
        });
        self.recount_near();
    }

    /// Forgets a ban (a manual unban), so the address is counted afresh.
    pub fn forget_ban(&mut self, jail: JailId, ip: IpAddr) -> bool {
        self.banned.remove(&(jail, ip.to_canonical())).is_some()
    }

    /// The active ban of `ip` in `jail`, if any.
    pub fn active_ban(&self, jail: JailId, ip: IpAddr) -> Option<ActiveBan> {
        self.banned.get(&(jail, ip.to_canonical())).copied()
    }

    /// How many bans (addresses and prefixes) are active.
    pub fn active_ban_count(&self) -> usize {
        self.banned.len() + self.prefix_banned.len()
    }

    /// Every active ban (for the state file and reconciliation).
    pub fn active_bans(&self) -> impl Iterator<Item = (JailId, IpAddr, ActiveBan)> + '_ {
        self.banned.iter().map(|((j, ip), b)| (*j, *ip, *b))
    }

    /// Every history record (for the state file).
    pub fn histories(&self) -> impl Iterator<Item = (JailId, IpAddr, History)> + '_ {
        self.history.iter().map(|((j, ip), h)| (*j, *ip, *h))
    }

    /// Restores an active ban from the state file.
    pub fn restore_ban(&mut self, jail: JailId, ip: IpAddr, ban: ActiveBan) {
        if jail.index() < self.policies.len() {
            self.banned.insert((jail, ip.to_canonical()), ban);
        }
    }

    /// Restores a history record from the state file.
    pub fn restore_history(&mut self, jail: JailId, ip: IpAddr, history: History) {
        if jail.index() < self.policies.len() {
            self.history.insert((jail, ip.to_canonical()), history);
        }
    }

    /// Bans recorded for `ip` in `jail` (0 if none).
    pub fn ban_count(&self, jail: JailId, ip: IpAddr) -> u32 {
        self.history
            .get(&(jail, ip.to_canonical()))
            .map_or(0, |h| h.count)
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
}

/// Whether a stored failure window is one failure short of its jail's
/// maxretry (windows are trimmed to findtime whenever a failure is added).
fn near(policies: &[Policy], jail: JailId, times: &[Micros]) -> bool {
    policies
        .get(jail.index())
        .is_some_and(|p| one_short(times, p.maxretry as usize))
}

/// Whether a window of `times` needs exactly one more failure to ban.
fn one_short(times: &[Micros], maxretry: usize) -> bool {
    !times.is_empty() && times.len() + 1 == maxretry
}

/// The bantime of an address's ban number `previous + 1`.
fn escalate(base: Bantime, increment: Option<&Increment>, previous: u32, noise: u64) -> Bantime {
    let (Bantime::For(base), Some(inc)) = (base, increment) else {
        return base;
    };
    let multiplier = if inc.multipliers.is_empty() {
        f64::from(1u32 << previous.min(20))
    } else {
        let i = (previous as usize).min(inc.multipliers.len() - 1);
        inc.multipliers[i]
    };
    let mut secs = base.as_secs_f64() * multiplier * inc.factor;
    if let Some(rnd) = inc.rndtime {
        // splitmix64 of the keyed address: uniform in 0..rndtime.
        let mut z = noise.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        secs += rnd.as_secs_f64() * (z as f64 / u64::MAX as f64);
    }
    let mut d = std::time::Duration::try_from_secs_f64(secs).unwrap_or(std::time::Duration::MAX);
    if let Some(max) = inc.maxtime {
        d = d.min(max);
    }
    Bantime::For(d.max(std::time::Duration::from_secs(1)))
}

fn hash_ip(ip: IpAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ip.hash(&mut h);
    h.finish()
}

/// Drops the oldest tenth of `map` by the time `key` gives each value.
fn evict_oldest<K, V>(map: &mut HashMap<K, V>, key: impl Fn(&V) -> Option<Micros>)
where
    K: std::hash::Hash + Eq,
{
    let mut times: Vec<Micros> = map.values().filter_map(&key).collect();
    let cut = times.len() / 10;
    if cut == 0 {
        return;
    }
    let (_, nth, _) = times.select_nth_unstable(cut);
    let threshold = *nth;
    map.retain(|_, v| key(v).is_some_and(|t| t > threshold));
}

fn micros(d: std::time::Duration) -> Micros {
    u64::try_from(d.as_micros()).unwrap_or(Micros::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const S: Micros = 1_000_000;

    fn jail(maxretry: u32, findtime: u64, bantime: Bantime, ignoreip: &[&str]) -> Jail {
        Jail {
            maxretry,
            findtime: Duration::from_secs(findtime),
            bantime,
            ignoreip: ignoreip.iter().map(|s| s.parse().unwrap()).collect(),
            ignoreself: true,
            ..Jail::test("t")
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
        let mut t = Tracker::new(&[jail(3, 60, ten_min(), &[])], 7);
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
        assert_eq!(t.tracked(), 0, "the ban replaced the failure window");
        assert_eq!(t.ban_count(JailId(0), ban.ip), 1);
    }

    #[test]
    fn maxretry_one_bans_at_once_and_keeps_no_window() {
        let mut t = Tracker::new(&[jail(1, 60, ten_min(), &[])], 7);
        assert!(matches!(t.observe(&fail("192.0.2.1", 0)), Verdict::Ban(_)));
        assert_eq!(t.tracked(), 0);
        // Banned for ten minutes; the next failure after that bans again,
        // as the second ban of the address.
        let Verdict::Ban(again) = t.observe(&fail("192.0.2.1", 601)) else {
            panic!("a failure after the ban ended bans again")
        };
        assert_eq!(again.count, 2);
    }

    #[test]
    fn failures_outside_findtime_do_not_count() {
        let mut t = Tracker::new(&[jail(3, 60, ten_min(), &[])], 7);
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
        let mut t = Tracker::new(
            &[jail(2, 60, ten_min(), &[]), jail(2, 60, ten_min(), &[])],
            7,
        );
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
        let mut t = Tracker::new(
            &[jail(1, 60, ten_min(), &["192.0.2.0/24", "2001:db8::/32"])],
            7,
        );
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
        let mut t = Tracker::new(&[jail(1, 60, Bantime::For(Duration::from_secs(5)), &[])], 7);
        assert!(matches!(t.observe(&fail("192.0.2.1", 0)), Verdict::Ban(_)));
        assert_eq!(t.observe(&fail("192.0.2.1", 4)), Verdict::AlreadyBanned);
        assert!(matches!(t.observe(&fail("192.0.2.1", 5)), Verdict::Ban(_)));
    }

    #[test]
    fn permanent_bans_never_end() {
        let mut t = Tracker::new(&[jail(1, 60, Bantime::Permanent, &[])], 7);
        assert!(matches!(t.observe(&fail("192.0.2.1", 0)), Verdict::Ban(_)));
        t.expire(Micros::MAX - 1);
        assert_eq!(
            t.observe(&fail("192.0.2.1", 999_999)),
            Verdict::AlreadyBanned
        );
    }

    #[test]
    fn out_of_order_failures_are_counted_by_their_time() {
        let mut t = Tracker::new(&[jail(3, 60, ten_min(), &[])], 7);
        t.observe(&fail("192.0.2.1", 100));
        t.observe(&fail("192.0.2.1", 30)); // older than the window of 100: 40..100
        assert_eq!(
            t.observe(&fail("192.0.2.1", 101)),
            Verdict::Counted { failures: 2 }
        );
    }

    #[test]
    fn expire_forgets_stale_addresses() {
        let mut t = Tracker::new(&[jail(5, 60, ten_min(), &[])], 7);
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
        let mut t = Tracker::new(&[jail(3, 10, ten_min(), &[])], 7);
        for i in 0..1000 {
            t.observe(&fail("192.0.2.1", i * 20));
        }
        assert!(t.failures.values().all(|v| v.len() <= 3));
        assert_eq!(t.tracked(), 1);
    }

    fn with_increment(mut j: Jail, inc: Increment) -> Jail {
        j.increment = Some(inc);
        j
    }

    fn inc(multipliers: &[f64], factor: f64, maxtime: Option<u64>) -> Increment {
        Increment {
            factor,
            multipliers: multipliers.to_vec(),
            maxtime: maxtime.map(Duration::from_secs),
            rndtime: None,
            overalljails: false,
        }
    }

    fn ban_secs(v: Verdict) -> u64 {
        match v {
            Verdict::Ban(Ban {
                bantime: Bantime::For(d),
                ..
            }) => d.as_secs(),
            other => panic!("expected a ban, got {other:?}"),
        }
    }

    #[test]
    fn escalation_doubles_by_default_and_caps_at_maxtime() {
        let j = with_increment(jail(1, 60, ten_min(), &[]), inc(&[], 1.0, Some(1800)));
        let mut t = Tracker::new(&[j], 7);
        // 600, 1200, then 2400 capped to 1800.
        assert_eq!(ban_secs(t.observe(&fail("192.0.2.1", 0))), 600);
        assert_eq!(ban_secs(t.observe(&fail("192.0.2.1", 700))), 1200);
        assert_eq!(ban_secs(t.observe(&fail("192.0.2.1", 2000))), 1800);
        // Another address starts from the beginning.
        assert_eq!(ban_secs(t.observe(&fail("192.0.2.2", 2000))), 600);
    }

    #[test]
    fn escalation_multipliers_and_factor() {
        let j = with_increment(
            jail(1, 60, ten_min(), &[]),
            inc(&[1.0, 3.0, 5.0], 2.0, None),
        );
        let mut t = Tracker::new(&[j], 7);
        let mut at = 0;
        let mut got = Vec::new();
        for _ in 0..4 {
            let secs = ban_secs(t.observe(&fail("192.0.2.1", at)));
            got.push(secs);
            at += secs + 1;
        }
        // The last multiplier repeats.
        assert_eq!(got, vec![1200, 3600, 6000, 6000]);
    }

    #[test]
    fn overalljails_counts_bans_of_every_jail() {
        let mut overall = inc(&[], 1.0, None);
        overall.overalljails = true;
        let a = jail(1, 60, ten_min(), &[]);
        let b = with_increment(jail(1, 60, ten_min(), &[]), overall);
        let mut t = Tracker::new(&[a, b], 7);
        t.observe(&fail("192.0.2.1", 0));
        let mut in_b = fail("192.0.2.1", 1);
        in_b.jail = JailId(1);
        // One earlier ban in jail 0: jail 1's first ban is already doubled.
        assert_eq!(ban_secs(t.observe(&in_b)), 1200);
    }

    #[test]
    fn rndtime_adds_bounded_jitter() {
        let mut i = inc(&[], 1.0, None);
        i.rndtime = Some(Duration::from_secs(100));
        let j = with_increment(jail(1, 60, ten_min(), &[]), i);
        let mut t = Tracker::new(&[j], 7);
        let mut seen = std::collections::HashSet::new();
        for n in 0..50 {
            let secs = ban_secs(t.observe(&fail(&format!("192.0.2.{n}"), 0)));
            assert!((600..=700).contains(&secs), "{secs}");
            seen.insert(secs);
        }
        assert!(seen.len() > 10, "jitter should vary: {seen:?}");
    }

    #[test]
    fn history_decays() {
        let j = with_increment(jail(1, 60, ten_min(), &[]), inc(&[], 1.0, None));
        let mut t = Tracker::new(&[j], 7);
        t.observe(&fail("192.0.2.1", 0));
        t.expire(fail("192.0.2.1", 0).time + HISTORY_KEEP + 1);
        assert_eq!(t.ban_count(JailId(0), "192.0.2.1".parse().unwrap()), 0);
    }

    #[test]
    fn a_ban_is_imminent_while_an_address_is_one_failure_short() {
        let mut t = Tracker::new(&[jail(3, 60, ten_min(), &[])], 7);
        assert!(!t.ban_imminent());
        t.observe(&fail("192.0.2.1", 0));
        t.observe(&fail("192.0.2.2", 0));
        assert!(!t.ban_imminent());
        t.observe(&fail("192.0.2.1", 1));
        t.observe(&fail("192.0.2.2", 1));
        assert!(t.ban_imminent());
        assert!(matches!(t.observe(&fail("192.0.2.1", 2)), Verdict::Ban(_)));
        assert!(t.ban_imminent(), "192.0.2.2 is still one short");
        // A manual ban drops the window too.
        t.ban(JailId(0), "192.0.2.2".parse().unwrap(), 3 * S, None);
        assert!(!t.ban_imminent());
        // A window that slid: 0 and 50, then 70 drops 0 and stays one short.
        t.observe(&fail("192.0.2.3", 0));
        t.observe(&fail("192.0.2.3", 50));
        assert!(t.ban_imminent());
        t.observe(&fail("192.0.2.3", 70));
        assert!(t.ban_imminent());
        // Aged out entirely: expire forgets it.
        t.expire(1_700_000_000 * S + 200 * S);
        assert!(!t.ban_imminent());
        // Replay rebuilds the same state.
        let f = fail("192.0.2.4", 300);
        t.replay(&f);
        t.replay(&fail("192.0.2.4", 301));
        assert!(t.ban_imminent());
        t.replay(&fail("192.0.2.4", 302));
        assert!(!t.ban_imminent());
    }

    #[test]
    fn maxretry_one_makes_every_failure_imminent() {
        let t = Tracker::new(
            &[jail(3, 60, ten_min(), &[]), jail(1, 60, ten_min(), &[])],
            7,
        );
        assert!(t.ban_imminent());
    }

    #[test]
    fn three_addresses_of_one_64_ban_the_prefix() {
        let mut j = jail(1, 60, ten_min(), &[]);
        j.ipv6_prefix = Some(PrefixPolicy {
            len: 64,
            threshold: 3,
        });
        let mut t = Tracker::new(&[j], 7);
        t.observe(&fail("2001:db8:1::1", 0));
        t.observe(&fail("2001:db8:1::2", 1));
        t.observe(&fail("2001:db8:2::3", 2)); // another /64
        assert!(t.take_prefix_bans().is_empty());
        t.observe(&fail("2001:db8:1::3", 3));
        let bans = t.take_prefix_bans();
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].net.to_string(), "2001:db8:1::/64");
        // Lasts as long as the longest member ban: 600 s from the first.
        assert_eq!(bans[0].bantime, Bantime::For(Duration::from_secs(600)));
        // A new address of that prefix is already banned.
        assert_eq!(
            t.observe(&fail("2001:db8:1::99", 4)),
            Verdict::AlreadyBanned
        );
        // IPv4 is never widened.
        assert!(matches!(t.observe(&fail("192.0.2.1", 5)), Verdict::Ban(_)));
        assert!(t.take_prefix_bans().is_empty());
    }
}
