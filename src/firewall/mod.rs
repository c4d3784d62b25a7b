//! The firewall: fail2ban's "banaction", done with nftables sets whose
//! elements carry their own kernel timeouts.
//!
//! This module owns the table `inet <table>` (by default `inet banjo`):
//!
//! ```text
//! table inet banjo {
//!     set <jail>_v4 { type ipv4_addr; flags timeout; }   # one pair per jail,
//!     set <jail>_v6 { type ipv6_addr; flags timeout; }   # no default timeout
//!     chain input {
//!         type filter hook input priority filter - 1; policy accept;
//!         ip saddr @<jail>_v4 tcp dport { 25, 465, 587 } reject with tcp reset
//!         ...                                            # see `ruleset`
//!     }
//! }
//! ```
//!
//! A ban is a set element with TIMEOUT and EXPIRATION (or neither, for a
//! permanent ban); the kernel unbans by itself when it expires, so banjo
//! keeps no timers and a crashed daemon leaves correct bans behind.
//!
//! Why the messages are built by hand: rustables cannot put a timeout on an
//! element nor list elements, and netlink-packet-netfilter's parser is
//! quadratic and its encoder panics past 64 KiB. Encoding the dozen message
//! kinds banjo needs is a few hundred lines (`netlink`, `elements`,
//! `ruleset`), uses one long-lived socket, and lets every error name the
//! exact message that failed.
//!
//! Why one batch: nf_tables applies a batch atomically. [`Firewall::setup`]
//! replaces the chain and its rules in one transaction while keeping the
//! sets and their elements, so a restart or reload never opens a window
//! without bans; [`Firewall::add`] sends any number of bans in one send.
//!
//! Re-bans: NEWSETELEM without NLM_F_EXCL carrying TIMEOUT and EXPIRATION
//! updates an existing element in place on Linux ≥ 6.12; older kernels
//! (Debian 12's 6.1) silently keep the old timeout, so there, and for
//! permanent bans everywhere, an element is sent as add + delete + add in
//! the same batch, which leaves it exactly as asked whatever was there.
//! Unbans: one absent element makes DELSETELEM fail the whole batch with
//! ENOENT, so [`Firewall::remove`] then re-lists the set and retries with
//! the addresses still present.
//!
//! Never touches anything outside its own table, and never runs `nft`.

mod elements;
mod netlink;
mod ruleset;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use nix::errno::Errno;

use crate::jail::{Jail, JailId, Ports};
use elements::{key_of, parse_dump, push_message, Item, ELEMS_PER_MSG, MAX_ELEM_MSG};
use netlink::{
    string, Batch, BatchError, RequestError, Socket, NFPROTO_INET, NFPROTO_UNSPEC, NFTA_CHAIN_NAME,
    NFTA_CHAIN_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_FLAGS,
    NFTA_SET_NAME, NFTA_SET_TABLE, NFTA_TABLE_NAME, NFT_MSG_DELSETELEM, NFT_MSG_DELTABLE,
    NFT_MSG_GETCHAIN, NFT_MSG_GETGEN, NFT_MSG_GETSET, NFT_MSG_GETSETELEM, NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM, NFT_SET_ANONYMOUS,
};
use ruleset::{encode_setup, set_name, Family};

/// The name of the base chain banjo owns in its table.
pub const CHAIN: &str = ruleset::CHAIN;

/// The default table name: `inet banjo`.
pub const DEFAULT_TABLE: &str = "banjo";

/// The reply type of NFT_MSG_GETGEN.
const NFT_MSG_NEWGEN: u8 = 15;

/// How often [`Firewall::remove`] retries after a ban vanished under it.
const REMOVE_ATTEMPTS: usize = 3;

/// The names of a jail's two sets: `(<jail>_v4, <jail>_v6)`.
pub fn set_names(jail_name: &str) -> (String, String) {
    (
        set_name(jail_name, Family::V4),
        set_name(jail_name, Family::V6),
    )
}

/// Whether `name` is usable as a jail or table name: `[A-Za-z0-9_.-]{1,64}`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// One ban to put into a jail's set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Element {
    /// The jail whose set receives the address.
    pub jail: JailId,
    /// The banned address (IPv4-mapped IPv6 addresses are banned as IPv4).
    pub ip: IpAddr,
    /// How long the ban lasts in total; `None` = permanent.
    pub timeout: Option<Duration>,
    /// Time left, e.g. when restoring a ban after a restart; `None` = the
    /// full `timeout`. Clamped to `1 ms..=timeout`.
    pub expires: Option<Duration>,
}

/// One ban as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listed {
    /// The banned address.
    pub ip: IpAddr,
    /// The element's total timeout; `None` = permanent.
    pub timeout: Option<Duration>,
    /// Time left before the kernel drops it; `None` = permanent.
    pub expires: Option<Duration>,
}

/// A failed firewall operation; each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused: banjo lacks CAP_NET_ADMIN in its network namespace.
    #[error("{step}: permission denied (managing nftables needs CAP_NET_ADMIN)")]
    PermissionDenied {
        /// What banjo was doing.
        step: String,
    },
    /// The kernel has no usable nf_tables (module missing or disabled).
    #[error("{step}: the kernel has no usable nf_tables ({errno})")]
    Unsupported {
        /// What banjo was doing.
        step: String,
        /// The errno that says so.
        errno: Errno,
    },
    /// The kernel (or the socket) failed one step with an errno.
    #[error("{step}: {errno}")]
    Kernel {
        /// The netlink step that failed, e.g. "creating set postfix_v4".
        step: String,
        /// The errno the kernel returned.
        errno: Errno,
    },
    /// A reply from the kernel made no sense, or never came.
    #[error("{step}: unexpected reply from the kernel: {detail}")]
    Protocol {
        /// What banjo was doing.
        step: String,
        /// What was wrong with the reply.
        detail: String,
    },
    /// The caller asked for something that cannot be expressed.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// The errno behind the error, if any.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::PermissionDenied { .. } => Some(Errno::EPERM),
            Error::Unsupported { errno, .. } | Error::Kernel { errno, .. } => Some(*errno),
            Error::Protocol { .. } | Error::Invalid(_) => None,
        }
    }
}

fn kernel_error(step: String, errno: Errno) -> Error {
    match errno {
        Errno::EPERM => Error::PermissionDenied { step },
        _ => Error::Kernel { step, errno },
    }
}

fn request_error(step: String, err: RequestError) -> Error {
    match err {
        RequestError::Errno(e) => kernel_error(step, e),
        RequestError::Protocol(detail) => Error::Protocol { step, detail },
    }
}

/// Errnos that mean "no nf_tables here" when they answer the first request.
fn means_unsupported(errno: Errno) -> bool {
    matches!(
        errno,
        Errno::EOPNOTSUPP | Errno::EPROTONOSUPPORT | Errno::EAFNOSUPPORT | Errno::ENOENT
    )
}

/// "1 element", "2 elements".
fn count_elements(n: usize) -> String {
    if n == 1 {
        "1 element".into()
    } else {
        format!("{n} elements")
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whether the running kernel updates the timeout of an element that is
/// re-added (Linux 6.12 and later); older kernels silently keep the old one.
fn kernel_updates_timeouts() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .and_then(|s| parse_release(&s))
        .is_some_and(|v| v >= (6, 12))
}

fn parse_release(s: &str) -> Option<(u32, u32)> {
    let mut parts = s.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// One NEWSETELEM/DELSETELEM message to send.
struct ElemMsg<'a> {
    msg: u8,
    set: &'a str,
    items: &'a [Item],
    verb: &'static str,
}

/// banjo's handle on its nftables table, over one netlink socket.
pub struct Firewall {
    sock: Socket,
    table: String,
    /// Jail names by [`JailId`], from the last [`Firewall::setup`].
    jails: Vec<String>,
    /// Re-adding updates timeouts in place (Linux ≥ 6.12); otherwise a
    /// re-ban is sent as add + delete + add in the same batch.
    update_in_place: bool,
}

impl Firewall {
    /// Opens the netlink socket and checks that nf_tables answers; `table`
    /// is the name of banjo's `inet` table.
    pub fn open(table: &str) -> Result<Firewall, Error> {
        if !valid_name(table) {
            return Err(Error::Invalid(format!(
                "invalid nftables table name {table:?}: use 1 to 64 of [A-Za-z0-9_.-]"
            )));
        }
        let sock = Socket::open().map_err(|(step, errno)| {
            if means_unsupported(errno) {
                Error::Unsupported {
                    step: step.into(),
                    errno,
                }
            } else {
                kernel_error(step.into(), errno)
            }
        })?;
        let mut fw = Firewall {
            sock,
            table: table.into(),
            jails: Vec::new(),
            update_in_place: kernel_updates_timeouts(),
        };
        // nfnetlink checks CAP_NET_ADMIN on every message and loads
        // nf_tables on demand, so a harmless GETGEN tells both.
        let step = "asking nf_tables for its generation".to_string();
        match fw.sock.request(
            NFT_MSG_GETGEN,
            NFPROTO_UNSPEC,
            false,
            &|_| {},
            NFT_MSG_NEWGEN,
            &mut |_| Ok(()),
        ) {
            Ok(()) => Ok(fw),
            Err(RequestError::Errno(errno)) if means_unsupported(errno) => {
                Err(Error::Unsupported { step, errno })
            }
            Err(e) => Err(request_error(step, e)),
        }
    }

    /// The table's name (without the `inet` family).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates or updates the table for `jails` (jail `i` has `JailId(i)`)
    /// in one atomic batch: the table and each jail's sets are created if
    /// missing (existing sets keep their elements), sets of jails no longer
    /// configured are deleted, and the `input` chain is replaced with fresh
    /// rules. Then checks that every set exists.
    pub fn setup(&mut self, jails: &[Jail]) -> Result<(), Error> {
        let names = validate_jails(jails)?;
        let wanted: HashSet<&str> = names.iter().map(String::as_str).collect();
        let stale: Vec<String> = self
            .list_sets()?
            .into_iter()
            .filter(|set| {
                let jail = set
                    .strip_suffix(Family::V4.suffix())
                    .or_else(|| set.strip_suffix(Family::V6.suffix()));
                jail.is_some_and(|j| valid_name(j) && !wanted.contains(j))
            })
            .collect();
        let chain_exists = self.chain_exists()?;

        let mut batch = self.sock.batch();
        encode_setup(&mut batch, &self.table, jails, chain_exists, &stale);
        let context = format!("setting up table inet {}", self.table);
        self.run(&mut batch, &context)?;

        // Like mullvad's firewall: trust, but verify.
        let present: HashSet<String> = self.list_sets()?.into_iter().collect();
        for name in &names {
            for family in Family::BOTH {
                let set = set_name(name, family);
                if !present.contains(&set) {
                    return Err(Error::Protocol {
                        step: format!("verifying set {set} of table inet {}", self.table),
                        detail: "the set is missing after a successful setup".into(),
                    });
                }
            }
        }
        self.jails = names;
        Ok(())
    }

    /// Records the jails' set names without touching the kernel, for a
    /// process that manages elements of a table another process set up.
    pub fn adopt(&mut self, jails: &[Jail]) -> Result<(), Error> {
        self.jails = validate_jails(jails)?;
        Ok(())
    }

    /// Bans: puts every element into its jail's set, in one atomic batch
    /// (split only beyond the socket's buffer, about 150 000 elements).
    /// Re-adding a banned address sets its timeout and time left anew;
    /// a duplicate address in `elems` counts once, the last one winning.
    pub fn add(&mut self, elems: &[Element]) -> Result<(), Error> {
        if elems.is_empty() {
            return Ok(());
        }
        // (set, in-place items, replaced items), in first-seen order.
        let mut groups: Vec<(String, Vec<Item>, Vec<Item>)> = Vec::new();
        let mut group_of: HashMap<(JailId, bool), usize> = HashMap::new();
        let mut seen: HashMap<(JailId, IpAddr), usize> = HashMap::new();
        let mut items: Vec<(usize, Item)> = Vec::with_capacity(elems.len());
        for e in elems {
            let ip = e.ip.to_canonical();
            let family = Family::of(ip);
            let jail = self.jail_name(e.jail)?;
            let g = *group_of
                .entry((e.jail, family == Family::V4))
                .or_insert_with(|| {
                    groups.push((set_name(jail, family), Vec::new(), Vec::new()));
                    groups.len() - 1
                });
            let ttl = e.timeout.map(|t| {
                let t = millis(t).max(1);
                (t, e.expires.map_or(t, millis).clamp(1, t))
            });
            let item = Item { ip, ttl };
            match seen.get(&(e.jail, ip)) {
                Some(&i) => items[i] = (g, item),
                None => {
                    seen.insert((e.jail, ip), items.len());
                    items.push((g, item));
                }
            }
        }
        for (g, item) in items {
            // A permanent ban must drop an existing timeout, which only
            // delete + add does; older kernels need that for timeouts too.
            let replace = item.ttl.is_none() || !self.update_in_place;
            if let Some(group) = groups.get_mut(g) {
                if replace {
                    group.2.push(item);
                } else {
                    group.1.push(item);
                }
            }
        }
        let mut units: Vec<Vec<ElemMsg<'_>>> = Vec::new();
        for (set, plain, replaced) in &groups {
            for chunk in plain.chunks(ELEMS_PER_MSG) {
                units.push(vec![ElemMsg {
                    msg: NFT_MSG_NEWSETELEM,
                    set,
                    items: chunk,
                    verb: "adding",
                }]);
            }
            // add (creates it if absent), delete, add: whatever was there,
            // the element ends up exactly as asked, in one transaction.
            for chunk in replaced.chunks(ELEMS_PER_MSG) {
                units.push(
                    [
                        (NFT_MSG_NEWSETELEM, "adding"),
                        (NFT_MSG_DELSETELEM, "deleting (to replace)"),
                        (NFT_MSG_NEWSETELEM, "re-adding"),
                    ]
                    .into_iter()
                    .map(|(msg, verb)| ElemMsg {
                        msg,
                        set,
                        items: chunk,
                        verb,
                    })
                    .collect(),
                );
            }
        }
        let context = format!(
            "adding {} to table inet {}",
            count_elements(elems.len()),
            self.table
        );
        self.send_units(&units, &context)
    }

    /// Unbans: deletes the addresses from the jail's sets. An address that
    /// is not there (never banned, already expired) is not an error.
    pub fn remove(&mut self, jail: JailId, ips: &[IpAddr]) -> Result<(), Error> {
        let name = self.jail_name(jail)?.to_string();
        let mut ips: Vec<IpAddr> = ips
            .iter()
            .map(|ip| ip.to_canonical())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut last = None;
        for _ in 0..REMOVE_ATTEMPTS {
            if ips.is_empty() {
                return Ok(());
            }
            match self.delete_elements(&name, &ips) {
                Ok(()) => return Ok(()),
                // One absent element aborts the whole batch: keep only the
                // addresses still listed and try again.
                Err(e @ Error::Kernel { .. }) if e.errno() == Some(Errno::ENOENT) => {
                    let present: HashSet<IpAddr> =
                        self.list(jail)?.into_iter().map(|l| l.ip).collect();
                    ips.retain(|ip| present.contains(ip));
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        match last {
            Some(e) if !ips.is_empty() => Err(e),
            _ => Ok(()),
        }
    }

    /// Lists a jail's bans, IPv4 set first, as the kernel reports them.
    pub fn list(&mut self, jail: JailId) -> Result<Vec<Listed>, Error> {
        let name = self.jail_name(jail)?.to_string();
        let mut out = Vec::new();
        for family in Family::BOTH {
            let set = set_name(&name, family);
            let step = format!("listing set {set} of table inet {}", self.table);
            let table = self.table.clone();
            let mut found = Vec::new();
            self.sock
                .request(
                    NFT_MSG_GETSETELEM,
                    NFPROTO_INET,
                    true,
                    &|b| {
                        b.put_str(NFTA_SET_ELEM_LIST_TABLE, &table);
                        b.put_str(NFTA_SET_ELEM_LIST_SET, &set);
                    },
                    NFT_MSG_NEWSETELEM,
                    &mut |m| match m {
                        None => {
                            found.clear();
                            Ok(())
                        }
                        Some(m) => parse_dump(m.nft_attrs()?, &mut found),
                    },
                )
                .map_err(|e| request_error(step, e))?;
            out.append(&mut found);
        }
        Ok(out)
    }

    /// Deletes the whole table with its sets and bans; an absent table is
    /// not an error. For tests and for purging the package.
    pub fn delete_table(&mut self) -> Result<(), Error> {
        let mut batch = self.sock.batch();
        let m = batch.begin(
            NFT_MSG_DELTABLE,
            0,
            NFPROTO_INET,
            format!("deleting table inet {}", self.table),
        );
        batch.buf().put_str(NFTA_TABLE_NAME, &self.table);
        batch.end(m);
        let context = format!("deleting table inet {}", self.table);
        self.jails.clear();
        match self.run(&mut batch, &context) {
            Err(e) if e.errno() == Some(Errno::ENOENT) => Ok(()),
            other => other,
        }
    }

    fn jail_name(&self, jail: JailId) -> Result<&str, Error> {
        self.jails
            .get(jail.index())
            .map(String::as_str)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "jail #{} is not set up in table inet {}",
                    jail.0, self.table
                ))
            })
    }

    fn delete_elements(&mut self, jail: &str, ips: &[IpAddr]) -> Result<(), Error> {
        let mut by_family: [(String, Vec<Item>); 2] =
            Family::BOTH.map(|f| (set_name(jail, f), Vec::new()));
        for ip in ips {
            let i = usize::from(Family::of(*ip) == Family::V6);
            by_family[i].1.push(Item { ip: *ip, ttl: None });
        }
        let mut units = Vec::new();
        for (set, items) in &by_family {
            for chunk in items.chunks(ELEMS_PER_MSG) {
                units.push(vec![ElemMsg {
                    msg: NFT_MSG_DELSETELEM,
                    set,
                    items: chunk,
                    verb: "deleting",
                }]);
            }
        }
        let context = format!(
            "deleting {} of jail {jail} from table inet {}",
            count_elements(ips.len()),
            self.table
        );
        self.send_units(&units, &context)
    }

    /// Sends element messages; each unit stays within one batch, and a new
    /// batch starts only when the socket buffer would overflow.
    fn send_units(&mut self, units: &[Vec<ElemMsg<'_>>], context: &str) -> Result<(), Error> {
        let limit = self.sock.send_limit();
        let mut batch = self.sock.batch();
        for unit in units {
            if batch.messages() > 0 && batch.len() + unit.len() * MAX_ELEM_MSG > limit {
                self.run(&mut batch, context)?;
                batch = self.sock.batch();
            }
            for m in unit {
                let prep = if m.msg == NFT_MSG_NEWSETELEM {
                    "to"
                } else {
                    "from"
                };
                let step = format!(
                    "{} {} {prep} set {} of table inet {}",
                    m.verb,
                    count_elements(m.items.len()),
                    m.set,
                    self.table
                );
                push_message(
                    &mut batch,
                    m.msg,
                    &self.table,
                    m.set,
                    None,
                    &mut m.items.iter().map(|i| (key_of(i.ip), i.ttl)),
                    step,
                );
            }
        }
        if batch.messages() > 0 {
            self.run(&mut batch, context)?;
        }
        Ok(())
    }

    /// Runs a batch; on failure names the first message the kernel refused.
    fn run(&mut self, batch: &mut Batch, context: &str) -> Result<(), Error> {
        match self.sock.run_batch(batch) {
            Ok(()) => Ok(()),
            Err(BatchError::Io(io, errno)) => Err(kernel_error(format!("{context} ({io})"), errno)),
            Err(BatchError::Protocol(detail)) => Err(Error::Protocol {
                step: context.into(),
                detail,
            }),
            Err(BatchError::Rejected(failures)) => {
                let (index, errno) = failures.first().copied().unwrap_or((None, Errno::EIO));
                let step = match index {
                    Some(i) => batch.step(i).to_string(),
                    None => format!("{context} (committing the batch)"),
                };
                Err(kernel_error(step, errno))
            }
        }
    }

    /// Names of the named (not anonymous) sets in the table; none if the
    /// table does not exist.
    fn list_sets(&mut self) -> Result<Vec<String>, Error> {
        let table = self.table.clone();
        let mut names = Vec::new();
        let result = self.sock.request(
            NFT_MSG_GETSET,
            NFPROTO_INET,
            true,
            &|b| b.put_str(NFTA_SET_TABLE, &table),
            NFT_MSG_NEWSET,
            &mut |m| {
                let Some(m) = m else {
                    names.clear();
                    return Ok(());
                };
                let (mut in_table, mut name, mut anonymous) = (false, None, false);
                for attr in m.nft_attrs()? {
                    let (ty, data) = attr?;
                    match ty {
                        NFTA_SET_TABLE => in_table = string(data)? == table,
                        NFTA_SET_NAME => name = Some(string(data)?.to_string()),
                        NFTA_SET_FLAGS => anonymous = netlink::be32(data)? & NFT_SET_ANONYMOUS != 0,
                        _ => {}
                    }
                }
                if let (true, false, Some(name)) = (in_table, anonymous, name) {
                    names.push(name);
                }
                Ok(())
            },
        );
        match result {
            Ok(()) => Ok(names),
            Err(RequestError::Errno(Errno::ENOENT)) => Ok(Vec::new()),
            Err(e) => Err(request_error(
                format!("listing the sets of table inet {}", self.table),
                e,
            )),
        }
    }

    /// Whether the table has banjo's chain.
    fn chain_exists(&mut self) -> Result<bool, Error> {
        let table = self.table.clone();
        let result = self.sock.request(
            NFT_MSG_GETCHAIN,
            NFPROTO_INET,
            false,
            &|b| {
                b.put_str(NFTA_CHAIN_TABLE, &table);
                b.put_str(NFTA_CHAIN_NAME, CHAIN);
            },
            NFT_MSG_NEWCHAIN,
            &mut |_| Ok(()),
        );
        match result {
            Ok(()) => Ok(true),
            Err(RequestError::Errno(Errno::ENOENT)) => Ok(false),
            Err(e) => Err(request_error(
                format!("looking up chain {CHAIN} of table inet {}", self.table),
                e,
            )),
        }
    }
}

/// Checks what the firewall relies on; returns the names by [`JailId`].
fn validate_jails(jails: &[Jail]) -> Result<Vec<String>, Error> {
    if jails.len() > usize::from(u16::MAX) + 1 {
        return Err(Error::Invalid(format!("too many jails: {}", jails.len())));
    }
    let mut seen = HashSet::new();
    for jail in jails {
        let name = &jail.name;
        if !valid_name(name) {
            return Err(Error::Invalid(format!(
                "invalid jail name {name:?}: use 1 to 64 of [A-Za-z0-9_.-]"
            )));
        }
        if !seen.insert(name.as_str()) {
            return Err(Error::Invalid(format!("duplicate jail name {name:?}")));
        }
        if let Ports::List(ranges) = &jail.ports {
            if ranges.is_empty() {
                return Err(Error::Invalid(format!("jail {name}: empty port list")));
            }
            if let Some(r) = ranges.iter().find(|r| r.first > r.last) {
                return Err(Error::Invalid(format!(
                    "jail {name}: port range {}-{} is reversed",
                    r.first, r.last
                )));
            }
        }
    }
    Ok(jails.iter().map(|j| j.name.clone()).collect())
}

#[cfg(test)]
mod tests {
    //! Pure tests here; the root tests run in a private network namespace
    //! on a thread of their own and never touch the host's firewall.

    use super::*;
    use crate::jail::{Bantime, JournalMatch, PortRange, Protocol};
    use nix::sched::{unshare, CloneFlags};
    use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::process::Command;
    use std::time::Instant;

    const TABLE: &str = "banjo_test";

    fn jail(name: &str, ports: Ports, protocol: Protocol) -> Jail {
        Jail {
            name: name.into(),
            journalmatch: JournalMatch { groups: vec![] },
            failregex: vec![],
            ignoreregex: vec![],
            input: Default::default(),
            increment: None,
            ignoreself: false,
            maxretry: 3,
            findtime: Duration::from_secs(600),
            bantime: Bantime::For(Duration::from_secs(600)),
            ignoreip: vec![],
            ports,
            protocol,
        }
    }

    /// Jail 0 "mail": tcp 25, 465, 587 and 8000-8010; jail 1 "all": allports.
    fn two_jails() -> Vec<Jail> {
        let p = |first, last| PortRange { first, last };
        vec![
            jail(
                "mail",
                Ports::List(vec![p(25, 25), p(465, 465), p(587, 587), p(8000, 8010)]),
                Protocol::Tcp,
            ),
            jail("all", Ports::All, Protocol::Tcp),
        ]
    }

    const MAIL: JailId = JailId(0);
    const ALL: JailId = JailId(1);

    /// Runs `test` on a new thread inside a new network namespace.
    fn in_netns(test: impl FnOnce() + Send + 'static) {
        if !nix::unistd::geteuid().is_root() {
            println!("skipped: needs root (nftables in a private network namespace)");
            return;
        }
        let t = std::thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
            test();
        });
        if let Err(panic) = t.join() {
            std::panic::resume_unwind(panic);
        }
    }

    /// `nft ARGS` as a child of this thread, hence in its namespace: an
    /// independent view of what the kernel holds.
    fn nft(args: &str) -> String {
        let out = Command::new("nft")
            .args(args.split_whitespace())
            .output()
            .expect("run nft");
        assert!(
            out.status.success(),
            "nft {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ban(jail: JailId, addr: &str, secs: Option<u64>) -> Element {
        Element {
            jail,
            ip: ip(addr),
            timeout: secs.map(Duration::from_secs),
            expires: None,
        }
    }

    fn find(list: &[Listed], addr: &str) -> Listed {
        *list
            .iter()
            .find(|l| l.ip == ip(addr))
            .unwrap_or_else(|| panic!("{addr} not listed in {list:?}"))
    }

    /// Asserts a timed element: exact timeout, `expires` within `slack` below `left`.
    fn assert_timed(l: Listed, timeout: u64, left: u64) {
        assert_eq!(l.timeout, Some(Duration::from_secs(timeout)), "{l:?}");
        let e = l.expires.expect("expires");
        assert!(e <= Duration::from_secs(left), "{l:?}");
        assert!(
            e > Duration::from_secs(left) - Duration::from_secs(5),
            "{l:?}"
        );
    }

    #[test]
    fn names_and_releases() {
        assert_eq!(
            set_names("postfix"),
            ("postfix_v4".to_string(), "postfix_v6".to_string())
        );
        assert!(valid_name("sshd-ddos.2"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"x".repeat(65)));
        assert_eq!(parse_release("6.18.44-fc-v657\n"), Some((6, 18)));
        assert_eq!(parse_release("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(parse_release("garbage"), None);
        let e = Error::Kernel {
            step: "creating set postfix_v4".into(),
            errno: Errno::EEXIST,
        };
        assert_eq!(
            e.to_string(),
            "creating set postfix_v4: EEXIST: File exists"
        );
    }

    #[test]
    fn root_setup_add_list_extend_remove() {
        in_netns(|| {
            let mut fw = Firewall::open(TABLE).unwrap();
            fw.setup(&two_jails()).unwrap();
            let ruleset = nft(&format!("list table inet {TABLE}"));
            println!("{ruleset}");
            for want in [
                "type filter hook input priority filter - 1; policy accept;",
                "set mail_v4 {\n\t\ttype ipv4_addr\n\t\tflags timeout\n\t}",
                "set all_v6 {\n\t\ttype ipv6_addr\n\t\tflags timeout\n\t}",
                "ip saddr @mail_v4 tcp dport { 25, 465, 587 } reject with tcp reset",
                "ip saddr @mail_v4 tcp dport 8000-8010 reject with tcp reset",
                "ip6 saddr @mail_v6 tcp dport { 25, 465, 587 } reject with tcp reset",
                "ip6 saddr @mail_v6 tcp dport 8000-8010 reject with tcp reset",
                "ip saddr @all_v4 meta l4proto tcp reject with tcp reset",
                // icmpx port-unreachable is nft's default, printed bare.
                "ip saddr @all_v4 reject\n",
                "ip6 saddr @all_v6 reject\n",
            ] {
                assert!(ruleset.contains(want), "missing {want:?}");
            }

            fw.add(&[
                ban(MAIL, "192.0.2.1", Some(600)),
                ban(MAIL, "2001:db8::1", Some(600)),
                ban(ALL, "198.51.100.7", Some(60)),
                ban(MAIL, "192.0.2.9", None),
                ban(MAIL, "::ffff:192.0.2.50", Some(600)),
            ])
            .unwrap();
            let mail = fw.list(MAIL).unwrap();
            assert_eq!(mail.len(), 4, "{mail:?}");
            assert_timed(find(&mail, "192.0.2.1"), 600, 600);
            assert_timed(find(&mail, "2001:db8::1"), 600, 600);
            assert_timed(find(&mail, "192.0.2.50"), 600, 600); // mapped -> v4
            let perm = find(&mail, "192.0.2.9");
            assert_eq!((perm.timeout, perm.expires), (None, None));
            let all = fw.list(ALL).unwrap();
            assert_eq!(all.len(), 1);
            assert_timed(all[0], 60, 60);
            let set = nft(&format!("list set inet {TABLE} mail_v4"));
            assert!(set.contains("192.0.2.1 timeout 10m expires"), "{set}");
            assert!(
                set.contains("192.0.2.9,") || set.contains("192.0.2.9 }"),
                "{set}"
            );

            // A re-ban with a longer timeout extends in place ...
            fw.add(&[ban(MAIL, "192.0.2.1", Some(1200))]).unwrap();
            assert_timed(find(&fw.list(MAIL).unwrap(), "192.0.2.1"), 1200, 1200);
            // ... and `expires` restores a partly served ban.
            let mut e = ban(MAIL, "192.0.2.1", Some(1200));
            e.expires = Some(Duration::from_secs(100));
            fw.add(&[e]).unwrap();
            assert_timed(find(&fw.list(MAIL).unwrap(), "192.0.2.1"), 1200, 100);
            // A permanent re-ban drops the timeout.
            fw.add(&[ban(MAIL, "192.0.2.1", None)]).unwrap();
            let l = find(&fw.list(MAIL).unwrap(), "192.0.2.1");
            assert_eq!((l.timeout, l.expires), (None, None));
            // Duplicates in one call: the last one wins.
            fw.add(&[
                ban(MAIL, "192.0.2.77", Some(10)),
                ban(MAIL, "192.0.2.77", Some(20)),
            ])
            .unwrap();
            assert_timed(find(&fw.list(MAIL).unwrap(), "192.0.2.77"), 20, 20);

            // Unban: absent addresses are fine, in the same call or alone.
            fw.remove(
                MAIL,
                &[
                    ip("192.0.2.1"),
                    ip("203.0.113.99"),
                    ip("2001:db8::1"),
                    ip("2001:db8::99"),
                ],
            )
            .unwrap();
            let left: Vec<IpAddr> = fw.list(MAIL).unwrap().iter().map(|l| l.ip).collect();
            assert_eq!(left.len(), 3, "{left:?}");
            assert!(!left.contains(&ip("192.0.2.1")) && !left.contains(&ip("2001:db8::1")));
            fw.remove(MAIL, &[ip("203.0.113.99")]).unwrap();
            fw.remove(MAIL, &[]).unwrap();
            fw.remove(MAIL, &left).unwrap();
            assert!(fw.list(MAIL).unwrap().is_empty());
            fw.delete_table().unwrap();
        });
    }

    #[test]
    fn root_restart_keeps_bans_and_drops_unconfigured_jails() {
        in_netns(|| {
            let jails = two_jails();
            let mut fw = Firewall::open(TABLE).unwrap();
            fw.setup(&jails).unwrap();
            fw.add(&[
                ban(MAIL, "192.0.2.1", Some(600)),
                ban(MAIL, "2001:db8::1", Some(600)),
                ban(MAIL, "192.0.2.9", None),
                ban(ALL, "198.51.100.7", Some(600)),
            ])
            .unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            drop(fw);

            // A new process: same jails, chain already there.
            let mut fw = Firewall::open(TABLE).unwrap();
            fw.setup(&jails).unwrap();
            let mail = fw.list(MAIL).unwrap();
            assert_eq!(mail.len(), 3);
            let l = find(&mail, "192.0.2.1");
            assert_eq!(l.timeout, Some(Duration::from_secs(600)));
            // Still counting down from the first add, not reset.
            assert!(l.expires.unwrap() < Duration::from_millis(598_600), "{l:?}");
            assert!(l.expires.unwrap() > Duration::from_secs(590), "{l:?}");
            assert_eq!(find(&mail, "192.0.2.9").timeout, None);
            assert_eq!(fw.list(ALL).unwrap().len(), 1);
            // The chain was replaced, not appended to.
            let ruleset = nft(&format!("list table inet {TABLE}"));
            assert_eq!(ruleset.matches("chain input").count(), 1);
            assert_eq!(ruleset.matches("saddr @mail_v4").count(), 2, "{ruleset}");
            assert_eq!(ruleset.matches("saddr @all_v6").count(), 2, "{ruleset}");

            // Reload without jail "all": its sets go, mail's bans stay.
            fw.setup(&jails[..1]).unwrap();
            let ruleset = nft(&format!("list table inet {TABLE}"));
            assert!(
                !ruleset.contains("all_v4") && !ruleset.contains("all_v6"),
                "{ruleset}"
            );
            assert_eq!(fw.list(MAIL).unwrap().len(), 3);
            assert!(matches!(fw.list(ALL), Err(Error::Invalid(_))));
            fw.delete_table().unwrap();
        });
    }

    #[test]
    fn root_bulk_2500_in_one_add() {
        in_netns(|| {
            let mut fw = Firewall::open(TABLE).unwrap();
            fw.setup(&two_jails()).unwrap();
            fw.update_in_place = true;
            let mut elems: Vec<Element> = (0..2500u32)
                .map(|i| Element {
                    jail: MAIL,
                    ip: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
                    timeout: Some(Duration::from_secs(3600)),
                    expires: None,
                })
                .collect();
            elems.extend((0..1500u16).map(|i| Element {
                jail: ALL,
                ip: IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 1, i]),
                timeout: Some(Duration::from_secs(60)),
                expires: Some(Duration::from_secs(30)),
            }));
            let seq = fw.sock.seq_for_test();
            let t = Instant::now();
            fw.add(&elems).unwrap();
            println!("added {} elements in {:?}", elems.len(), t.elapsed());
            // One batch: BEGIN + 3 messages (1000+1000+500) + 2 (1000+500) + END.
            assert_eq!(fw.sock.seq_for_test().wrapping_sub(seq), 7);
            let t = Instant::now();
            let mail = fw.list(MAIL).unwrap();
            println!("listed {} elements in {:?}", mail.len(), t.elapsed());
            assert_eq!(mail.len(), 2500);
            assert!(mail
                .iter()
                .all(|l| l.timeout == Some(Duration::from_secs(3600))));
            let all = fw.list(ALL).unwrap();
            assert_eq!(all.len(), 1500);
            assert_timed(all[0], 60, 30);
            let v4 = nft(&format!("list set inet {TABLE} mail_v4"));
            assert_eq!(v4.matches("timeout 1h").count(), 2500);

            // Past the socket buffer the slice is split into several
            // batches (here: a tiny limit, so one or two messages each).
            fw.sock.set_send_limit_for_test(100_000);
            for e in &mut elems {
                e.timeout = Some(Duration::from_secs(7200));
            }
            let seq = fw.sock.seq_for_test();
            fw.add(&elems).unwrap();
            // 5 messages; every extra batch adds a BEGIN/END pair.
            let used = fw.sock.seq_for_test().wrapping_sub(seq);
            assert!(used > 5 + 2 && used <= 5 * 3, "{used}");
            let mail = fw.list(MAIL).unwrap();
            assert_eq!(mail.len(), 2500);
            assert!(mail
                .iter()
                .all(|l| l.timeout == Some(Duration::from_secs(7200))));
            fw.delete_table().unwrap();
        });
    }

    #[test]
    fn root_replace_mode_for_kernels_before_6_12() {
        in_netns(|| {
            let mut fw = Firewall::open(TABLE).unwrap();
            fw.setup(&two_jails()).unwrap();
            fw.update_in_place = false;
            fw.add(&[ban(MAIL, "192.0.2.1", Some(600))]).unwrap();
            fw.add(&[ban(MAIL, "192.0.2.1", Some(1200))]).unwrap();
            assert_timed(find(&fw.list(MAIL).unwrap(), "192.0.2.1"), 1200, 1200);
            fw.add(&[ban(MAIL, "192.0.2.1", None)]).unwrap();
            assert_eq!(find(&fw.list(MAIL).unwrap(), "192.0.2.1").timeout, None);
            // Replacing also turns a permanent ban back into a timed one.
            fw.add(&[ban(MAIL, "192.0.2.1", Some(60))]).unwrap();
            assert_timed(find(&fw.list(MAIL).unwrap(), "192.0.2.1"), 60, 60);
            assert_eq!(fw.list(MAIL).unwrap().len(), 1);

            // In-place mode on this kernel, for the record.
            fw.update_in_place = true;
            fw.add(&[ban(MAIL, "192.0.2.2", None)]).unwrap();
            fw.add(&[ban(MAIL, "192.0.2.2", Some(60))]).unwrap();
            println!(
                "in place, timed over permanent: {:?}",
                find(&fw.list(MAIL).unwrap(), "192.0.2.2")
            );
            fw.delete_table().unwrap();
        });
    }

    /// Connects over TCP from `src` to 127.0.0.1:`port`.
    fn connect_from(src: Ipv4Addr, port: u16) -> Result<(), Errno> {
        use nix::sys::socket::SockaddrIn;
        use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType};
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(src, 0)))?;
        connect(
            fd.as_raw_fd(),
            &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)),
        )
    }

    /// Sends a UDP datagram from `src` to `to` and waits for an ICMP error.
    fn udp_refused(src: Ipv4Addr, to: &UdpSocket) -> bool {
        let s = UdpSocket::bind((src, 0)).unwrap();
        s.connect(to.local_addr().unwrap()).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s.send(b"x").unwrap();
        let mut buf = [0u8; 4];
        matches!(s.recv(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
    }

    #[test]
    fn root_traffic_is_refused_from_banned_sources() {
        in_netns(|| {
            let up = Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status();
            if !up.map(|s| s.success()).unwrap_or(false) {
                println!("skipped: cannot bring lo up with ip(8)");
                return;
            }
            let mut fw = Firewall::open(TABLE).unwrap();
            fw.setup(&two_jails()).unwrap();
            let _l25 = TcpListener::bind("127.0.0.1:25").unwrap();
            let _l8005 = TcpListener::bind("127.0.0.1:8005").unwrap();
            let _l9000 = TcpListener::bind("127.0.0.1:9000").unwrap();
            let udp = UdpSocket::bind("127.0.0.1:9001").unwrap();
            let a2 = Ipv4Addr::new(127, 0, 0, 2);
            let a3 = Ipv4Addr::new(127, 0, 0, 3);
            let a4 = Ipv4Addr::new(127, 0, 0, 4);
            assert_eq!(connect_from(a2, 25), Ok(()));

            fw.add(&[
                ban(MAIL, "127.0.0.2", Some(60)),
                ban(ALL, "127.0.0.3", Some(60)),
            ])
            .unwrap();
            assert_eq!(connect_from(a2, 25), Err(Errno::ECONNREFUSED));
            assert_eq!(connect_from(a2, 8005), Err(Errno::ECONNREFUSED)); // range rule
            assert_eq!(connect_from(a2, 9000), Ok(())); // not a jail port
            assert_eq!(connect_from(a3, 9000), Err(Errno::ECONNREFUSED)); // allports
            assert!(udp_refused(a3, &udp)); // allports, not tcp: icmpx
            assert!(!udp_refused(a4, &udp));
            assert_eq!(connect_from(a4, 25), Ok(()));

            fw.remove(MAIL, &[ip("127.0.0.2")]).unwrap();
            assert_eq!(connect_from(a2, 25), Ok(()));
            fw.delete_table().unwrap();
            assert_eq!(connect_from(a3, 9000), Ok(()));
        });
    }

    #[test]
    fn root_delete_table_and_errors_name_the_step() {
        in_netns(|| {
            let jails = two_jails();
            let mut fw = Firewall::open(TABLE).unwrap();
            let err = fw.add(&[ban(MAIL, "192.0.2.1", Some(60))]).unwrap_err();
            assert!(matches!(err, Error::Invalid(_)), "{err}");
            fw.delete_table().unwrap(); // absent: fine
            fw.setup(&jails).unwrap();
            fw.delete_table().unwrap();
            assert!(!nft("list tables").contains(TABLE));
            fw.delete_table().unwrap();

            // The table is gone under a firewall that still knows the jails.
            fw.adopt(&jails).unwrap();
            let err = fw.list(MAIL).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "listing set mail_v4 of table inet {TABLE}: ENOENT: No such file or directory"
                )
            );
            let err = fw.add(&[ban(MAIL, "192.0.2.1", Some(60))]).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "adding 1 element to set mail_v4 of table inet {TABLE}: \
                     ENOENT: No such file or directory"
                )
            );
            let err = fw.remove(MAIL, &[ip("192.0.2.1")]).unwrap_err();
            assert_eq!(err.errno(), Some(Errno::ENOENT), "{err}");

            let mut bad = jails.clone();
            bad[1].name = "no spaces".into();
            assert!(matches!(fw.setup(&bad), Err(Error::Invalid(_))));
            bad[1].name = "mail".into();
            assert!(matches!(fw.setup(&bad), Err(Error::Invalid(_))));
            assert!(matches!(Firewall::open("bad name"), Err(Error::Invalid(_))));
        });
    }

    #[test]
    fn root_without_cap_net_admin_is_permission_denied() {
        in_netns(|| {
            // Drop to nobody on this thread only (the raw syscall, unlike
            // libc's setresuid, does not touch the other threads).
            // SAFETY: plain syscall with integer arguments.
            let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
            assert_eq!(rc, 0);
            let err = Firewall::open(TABLE).err().expect("open must fail");
            assert!(matches!(err, Error::PermissionDenied { .. }), "{err}");
            assert!(err.to_string().contains("CAP_NET_ADMIN"), "{err}");
            println!("{err}");
        });
    }
}
