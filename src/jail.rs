//! A jail as the rest of banjo sees it: validated settings, no strings to parse.
//!
//! `config` produces these; `filter`, `tracker`, `firewall` and `journal`
//! read them. Jails are addressed by [`JailId`], their index in the
//! configuration, so hot paths carry a small integer rather than a name.

use std::fmt;
use std::time::Duration;

use crate::net::IpNet;

/// Index of a jail in [`crate::config::Config::jails`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JailId(pub u16);

impl JailId {
    /// The index as a `usize`, for slices.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// The most jails one configuration may hold; [`JailSet`] is sized for it.
pub const MAX_JAILS: usize = 256;

/// How long a ban lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bantime {
    /// The kernel drops the element after this long.
    For(Duration),
    /// `bantime = -1`: the element carries no timeout.
    Permanent,
}

impl Bantime {
    /// The kernel timeout: `None` for a permanent ban.
    pub fn timeout(self) -> Option<Duration> {
        match self {
            Bantime::For(d) => Some(d),
            Bantime::Permanent => None,
        }
    }

    /// Seconds, with fail2ban's `-1` for permanent.
    pub fn secs(self) -> i64 {
        match self {
            Bantime::For(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Bantime::Permanent => -1,
        }
    }

    /// The bantime of a kernel element's `timeout` attribute.
    pub fn from_timeout(timeout: Option<Duration>) -> Bantime {
        timeout.map_or(Bantime::Permanent, Bantime::For)
    }
}

impl fmt::Display for Bantime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bantime::For(d) => write!(f, "{}s", d.as_secs()),
            Bantime::Permanent => f.write_str("permanent"),
        }
    }
}

/// `bantime_increment`: longer bans for repeat offenders, with fail2ban's
/// semantics. The n-th ban of an address (n = previous bans + 1) lasts
/// `bantime × m × factor`, where m is `multipliers[min(n-1, len-1)]` when
/// multipliers are given and `2^min(n-1, 20)` otherwise; plus a random
/// `0..rndtime`; at most `maxtime`.
#[derive(Clone, Debug, PartialEq)]
pub struct Increment {
    /// `bantime_factor`: common multiplier (default 1).
    pub factor: f64,
    /// `bantime_multipliers`: per-count multipliers; empty means doubling.
    pub multipliers: Vec<f64>,
    /// `bantime_maxtime`: upper bound of a ban.
    pub maxtime: Option<Duration>,
    /// `bantime_rndtime`: random extra time, so botnets cannot predict the unban.
    pub rndtime: Option<Duration>,
    /// `bantime_overalljails`: count previous bans of the address in every jail.
    pub overalljails: bool,
}

/// IPv6 attackers rotate addresses inside one prefix; when `threshold`
/// distinct addresses of one `/len` are banned at once, the whole prefix
/// is banned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixPolicy {
    /// The prefix length, e.g. 64.
    pub len: u8,
    /// Distinct banned addresses in one prefix that ban the prefix.
    pub threshold: u32,
}

/// An inclusive port range; a single port has `first == last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// First port of the range.
    pub first: u16,
    /// Last port of the range (inclusive).
    pub last: u16,
}

/// Which destination ports a ban blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ports {
    /// `allports = true`: everything the banned address sends.
    All,
    /// The jail's `port` list, never empty.
    List(Vec<PortRange>),
}

/// Transport protocol of the jail's ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP: refused with a TCP reset.
    Tcp,
    /// UDP: refused with ICMP port-unreachable.
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// One `FIELD=value` term of a journalmatch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MatchTerm {
    /// Journal field name, e.g. `_SYSTEMD_UNIT`.
    pub field: String,
    /// Exact value the field must have.
    pub value: String,
}

/// Which journal entries a jail reads, with sd_journal's semantics: within a
/// group, terms on the same field are ORed and different fields ANDed; the
/// groups themselves are ORed (fail2ban's `+` separator).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JournalMatch {
    /// The ORed groups; never empty, no group empty.
    pub groups: Vec<Vec<MatchTerm>>,
}

impl JournalMatch {
    /// Whether an entry satisfies the match; `field(name)` returns the
    /// entry's values of that field (a field may repeat in an entry).
    pub fn accepts<'a, F, I>(&self, mut field: F) -> bool
    where
        F: FnMut(&str) -> I,
        I: IntoIterator<Item = &'a [u8]>,
    {
        self.groups.iter().any(|group| {
            let mut fields: Vec<&str> = group.iter().map(|t| t.field.as_str()).collect();
            fields.dedup();
            fields.iter().all(|name| {
                field(name).into_iter().any(|value| {
                    group
                        .iter()
                        .any(|t| t.field == *name && t.value.as_bytes() == value)
                })
            })
        })
    }
}

impl fmt::Display for JournalMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, group) in self.groups.iter().enumerate() {
            if i > 0 {
                f.write_str(" + ")?;
            }
            for (j, t) in group.iter().enumerate() {
                if j > 0 {
                    f.write_str(" ")?;
                }
                write!(f, "{}={}", t.field, t.value)?;
            }
        }
        Ok(())
    }
}

/// What a jail's failregexes are matched against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FilterInput {
    /// banjo's own filters: the bare journal MESSAGE, failregexes anchored
    /// at its start.
    #[default]
    Message,
    /// fail2ban filters: the line fail2ban's systemd backend builds,
    /// `HOSTNAME IDENT[PID]: MESSAGE`, searched as fail2ban searches it.
    Fail2banLine,
}

/// A validated jail.
#[derive(Clone, Debug, PartialEq)]
pub struct Jail {
    /// The jail's name, `[jail.NAME]`.
    pub name: String,
    /// Which journal entries the jail reads.
    pub journalmatch: JournalMatch,
    /// Regexes (with fail2ban's `<HOST>`-style tags) whose hits are failures.
    pub failregex: Vec<String>,
    /// Regexes that veto a failregex hit on the same line.
    pub ignoreregex: Vec<String>,
    /// What the regexes are matched against.
    pub input: FilterInput,
    /// Failures within `findtime` that trigger a ban.
    pub maxretry: u32,
    /// The window in which failures are counted.
    pub findtime: Duration,
    /// How long a ban lasts.
    pub bantime: Bantime,
    /// Escalation for repeat offenders (`bantime_increment = true`).
    pub increment: Option<Increment>,
    /// Addresses never counted nor banned.
    pub ignoreip: Vec<IpNet>,
    /// `ignoreself`: the host's own addresses are never counted nor banned.
    pub ignoreself: bool,
    /// IPv6 prefix widening (`ipv6_prefix`, `ipv6_prefix_threshold`).
    pub ipv6_prefix: Option<PrefixPolicy>,
    /// Destination ports the ban blocks.
    pub ports: Ports,
    /// Transport protocol of `ports`.
    pub protocol: Protocol,
}

#[cfg(test)]
impl Jail {
    /// A jail for unit tests: every option at fail2ban's default, all
    /// ports, no regexes; tests override what they exercise with
    /// `Jail { maxretry: 1, ..Jail::test("x") }`.
    pub fn test(name: &str) -> Jail {
        Jail {
            name: name.into(),
            journalmatch: JournalMatch { groups: vec![] },
            failregex: vec![],
            ignoreregex: vec![],
            input: FilterInput::Message,
            maxretry: 5,
            findtime: Duration::from_secs(600),
            bantime: Bantime::For(Duration::from_secs(600)),
            increment: None,
            ignoreip: vec![],
            ignoreself: false,
            ipv6_prefix: None,
            ports: Ports::All,
            protocol: Protocol::Tcp,
        }
    }
}

/// A set of jails, as a fixed-size bitset: cheap to copy along with each
/// journal entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JailSet([u64; MAX_JAILS / 64]);

impl JailSet {
    /// The empty set.
    pub const EMPTY: JailSet = JailSet([0; MAX_JAILS / 64]);

    /// Adds a jail.
    pub fn insert(&mut self, id: JailId) {
        self.0[id.index() / 64] |= 1 << (id.index() % 64);
    }

    /// Whether the set holds `id`.
    pub fn contains(&self, id: JailId) -> bool {
        self.0[id.index() / 64] & (1 << (id.index() % 64)) != 0
    }

    /// Adds every jail of `other`.
    pub fn union_with(&mut self, other: &JailSet) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a |= b;
        }
    }

    /// Whether no jail is in the set.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// The set holding jails `0..n`.
    pub fn first(n: usize) -> JailSet {
        let mut set = JailSet::EMPTY;
        for i in 0..n.min(MAX_JAILS) {
            set.0[i / 64] |= 1 << (i % 64);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn term(field: &str, value: &str) -> MatchTerm {
        MatchTerm {
            field: field.into(),
            value: value.into(),
        }
    }

    #[test]
    fn journalmatch_same_field_or_other_field_and() {
        let m = JournalMatch {
            groups: vec![vec![
                term("_SYSTEMD_UNIT", "postfix.service"),
                term("_SYSTEMD_UNIT", "postfix@-.service"),
                term("PRIORITY", "4"),
            ]],
        };
        let entry = |unit: &'static str, prio: &'static str| {
            move |name: &str| -> Vec<&'static [u8]> {
                match name {
                    "_SYSTEMD_UNIT" => vec![unit.as_bytes()],
                    "PRIORITY" => vec![prio.as_bytes()],
                    _ => vec![],
                }
            }
        };
        assert!(m.accepts(entry("postfix@-.service", "4")));
        assert!(m.accepts(entry("postfix.service", "4")));
        assert!(!m.accepts(entry("postfix@-.service", "6")));
        assert!(!m.accepts(entry("sshd.service", "4")));
    }

    #[test]
    fn journalmatch_groups_are_ored() {
        let m = JournalMatch {
            groups: vec![
                vec![term("_SYSTEMD_UNIT", "sshd.service")],
                vec![term("SYSLOG_IDENTIFIER", "sshd")],
            ],
        };
        let ident = |name: &str| -> Vec<&'static [u8]> {
            if name == "SYSLOG_IDENTIFIER" {
                vec![b"sshd"]
            } else {
                vec![]
            }
        };
        assert!(m.accepts(ident));
        assert!(!m.accepts(|_: &str| -> Vec<&'static [u8]> { vec![] }));
    }

    #[test]
    fn jailset_bits() {
        let mut s = JailSet::EMPTY;
        assert!(s.is_empty());
        s.insert(JailId(0));
        s.insert(JailId(200));
        assert!(s.contains(JailId(200)) && s.contains(JailId(0)));
        assert!(!s.contains(JailId(1)));
        assert!(JailSet::first(3).contains(JailId(2)));
        assert!(!JailSet::first(3).contains(JailId(3)));
    }
}
