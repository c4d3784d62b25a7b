//! Ruleset change notifications, for self-healing.
//!
//! nf_tables announces every committed change on the netlink multicast
//! group NFNLGRP_NFTABLES, one message per object (table, chain, rule,
//! set, set element), each carrying in `nlmsg_pid` the port id of the
//! socket whose batch made the change (0 for the kernel itself). A
//! [`Watch`] listens on that group and keeps only the deletions that hit
//! banjo's own table and were made by some other socket: what `nft flush
//! ruleset`, `nft delete element ...` or another tool did behind banjo's
//! back. The firewall's own changes are dropped twice: in the kernel by a
//! socket filter on the port id (so bulk bans cannot fill the receive
//! buffer), and again here.
//!
//! Additions by others are not reported: they cannot unban anybody.
//! Elements that simply expire are removed by the kernel without any
//! notification.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::PoisonError;

use nix::errno::Errno;

use crate::jail::JailId;
use crate::net::IpNet;

use super::elements::{pair_prefixes, parse_dump, Parsed};
use super::netlink::{
    is_nft, string, Listener, Malformed, Messages, NlMsg, NFPROTO_INET, NFTA_CHAIN_NAME,
    NFTA_CHAIN_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_TABLE, NFTA_SET_ELEM_LIST_SET,
    NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_NAME, NFTA_SET_TABLE, NFTA_TABLE_NAME, NFT_MSG_DELCHAIN,
    NFT_MSG_DELRULE, NFT_MSG_DELSET, NFT_MSG_DELSETELEM, NFT_MSG_DELTABLE,
};
use super::ruleset::{Family, CHAIN};
use super::{kernel_error, Error, JailNames};

/// Datagrams one [`Watch::read`] takes at most; the rest wait for the next
/// call, so a flood of changes cannot keep the caller in one read forever.
const MAX_DATAGRAMS_PER_READ: usize = 4096;

/// A change another process made to banjo's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The whole table is gone (e.g. `nft flush ruleset`), with every set,
    /// ban and rule in it; the changes it implies are not reported apart.
    TableDeleted,
    /// The `input` chain is gone with all its rules: nothing is blocked.
    ChainDeleted,
    /// This many rules of the `input` chain were deleted (e.g. `nft flush
    /// chain`): some bans no longer block.
    RulesDeleted(usize),
    /// A jail's set was deleted with all the bans in it.
    SetDeleted {
        /// The jail the set belongs to.
        jail: JailId,
        /// The set's name, e.g. `sshd_v4`.
        set: String,
    },
    /// Bans were deleted from a jail's address sets.
    ElementsDeleted {
        /// The jail whose sets lost the bans.
        jail: JailId,
        /// The unbanned addresses, in the order the kernel reported them.
        ips: Vec<IpAddr>,
    },
    /// IPv6 prefix bans were deleted from a jail's `_v6net` set.
    PrefixesDeleted {
        /// The jail whose set lost the bans.
        jail: JailId,
        /// The unbanned networks.
        nets: Vec<IpNet>,
    },
    /// Notifications were lost (the receive buffer overflowed, or one could
    /// not be read): the state is unknown, check everything with
    /// [`super::Firewall::verify`] and the bans with `list`.
    Overrun,
}

/// A subscription to the changes other processes make to banjo's table;
/// poll its file descriptor for readability, then call [`Watch::read`].
pub struct Watch {
    listener: Listener,
    own_ports: Vec<u32>,
    table: String,
    jails: JailNames,
}

impl AsFd for Watch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

impl Watch {
    /// A watch on `table` that ignores changes made by the sockets of
    /// `own_ports`.
    pub(super) fn new(
        listener: Listener,
        own_ports: Vec<u32>,
        table: String,
        jails: JailNames,
    ) -> Watch {
        Watch {
            listener,
            own_ports,
            table,
            jails,
        }
    }

    /// Drains the pending notifications without blocking and returns the
    /// changes to banjo's table made by other sockets, oldest first; empty
    /// when nothing relevant happened. After an overrun the result is just
    /// `[Change::Overrun]`: everything else is unknown anyway.
    pub fn read(&mut self) -> Result<Vec<Change>, Error> {
        let names = self
            .jails
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut decoder = Decoder::new(&self.own_ports, &self.table, &names);
        let mut overrun = false;
        for _ in 0..MAX_DATAGRAMS_PER_READ {
            match self.listener.recv() {
                Ok(Some(datagram)) => {
                    if decoder.datagram(datagram).is_err() {
                        overrun = true;
                    }
                }
                Ok(None) => break,
                // Keep draining: what is still queued is stale too.
                Err(Errno::ENOBUFS) => overrun = true,
                Err(Errno::EINTR) => {}
                Err(errno) => {
                    return Err(kernel_error(
                        format!("reading change notifications of table inet {}", self.table),
                        errno,
                    ))
                }
            }
        }
        if overrun {
            return Ok(vec![Change::Overrun]);
        }
        Ok(decoder.finish())
    }

    /// Shrinks the socket's receive buffer, for tests of [`Change::Overrun`].
    #[cfg(test)]
    pub(super) fn set_rcvbuf_for_test(&self, bytes: usize) {
        self.listener.set_rcvbuf_for_test(bytes);
    }
}

/// One change before coalescing; v6net elements are paired into prefixes
/// only at the end, since a prefix's start and end arrive apart.
#[derive(Debug)]
enum Raw {
    Change(Change),
    Elements(JailId, Vec<IpAddr>),
    Prefixes(JailId, Vec<Parsed>),
}

/// Turns notification datagrams into [`Change`]s.
struct Decoder<'a> {
    own_ports: &'a [u32],
    table: &'a str,
    jails: HashMap<&'a str, JailId>,
    raw: Vec<Raw>,
}

impl<'a> Decoder<'a> {
    fn new(own_ports: &'a [u32], table: &'a str, names: &'a [String]) -> Decoder<'a> {
        let jails = names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| Some((n.as_str(), JailId(u16::try_from(i).ok()?))))
            .collect();
        Decoder {
            own_ports,
            table,
            jails,
            raw: Vec::new(),
        }
    }

    /// Decodes one datagram; on a malformed one, keeps what came before.
    fn datagram(&mut self, buf: &[u8]) -> Result<(), Malformed> {
        for m in Messages::new(buf) {
            self.message(m?)?;
        }
        Ok(())
    }

    /// The jail owning `set`, and the kind of set, if it is one of banjo's.
    fn jail_of(&self, set: &str) -> Option<(JailId, Family)> {
        let (jail, family) = Family::jail_of(set)?;
        Some((*self.jails.get(jail)?, family))
    }

    fn message(&mut self, m: NlMsg<'_>) -> Result<(), Malformed> {
        if self.own_ports.contains(&m.pid) || m.payload.first() != Some(&NFPROTO_INET) {
            return Ok(());
        }
        let attrs = || m.nft_attrs();
        let str_attr = |ty: u16| -> Result<Option<&str>, Malformed> {
            for a in attrs()? {
                let (t, data) = a?;
                if t == ty {
                    return Ok(Some(string(data)?));
                }
            }
            Ok(None)
        };
        let ours = |ty: u16| -> Result<bool, Malformed> { Ok(str_attr(ty)? == Some(self.table)) };
        if is_nft(m.ty, NFT_MSG_DELTABLE) {
            if ours(NFTA_TABLE_NAME)? {
                self.raw.push(Raw::Change(Change::TableDeleted));
            }
        } else if is_nft(m.ty, NFT_MSG_DELCHAIN) {
            if ours(NFTA_CHAIN_TABLE)? && str_attr(NFTA_CHAIN_NAME)? == Some(CHAIN) {
                self.raw.push(Raw::Change(Change::ChainDeleted));
            }
        } else if is_nft(m.ty, NFT_MSG_DELRULE) {
            if ours(NFTA_RULE_TABLE)? && str_attr(NFTA_RULE_CHAIN)? == Some(CHAIN) {
                match self.raw.last_mut() {
                    Some(Raw::Change(Change::RulesDeleted(n))) => *n += 1,
                    _ => self.raw.push(Raw::Change(Change::RulesDeleted(1))),
                }
            }
        } else if is_nft(m.ty, NFT_MSG_DELSET) {
            if ours(NFTA_SET_TABLE)? {
                let name = str_attr(NFTA_SET_NAME)?.unwrap_or("");
                if let Some((jail, _)) = self.jail_of(name) {
                    self.raw.push(Raw::Change(Change::SetDeleted {
                        jail,
                        set: name.to_string(),
                    }));
                }
            }
        } else if is_nft(m.ty, NFT_MSG_DELSETELEM) && ours(NFTA_SET_ELEM_LIST_TABLE)? {
            let name = str_attr(NFTA_SET_ELEM_LIST_SET)?.unwrap_or("");
            if let Some((jail, family)) = self.jail_of(name) {
                let mut elems = Vec::new();
                parse_dump(attrs()?, &mut elems)?;
                self.push_elements(jail, family, elems);
            }
        }
        Ok(())
    }

    /// Adds deleted elements, merged with the previous change when that
    /// is a deletion from the same jail's sets of the same kind.
    fn push_elements(&mut self, jail: JailId, family: Family, elems: Vec<Parsed>) {
        if family == Family::V6Net {
            match self.raw.last_mut() {
                Some(Raw::Prefixes(j, v)) if *j == jail => v.extend(elems),
                _ => self.raw.push(Raw::Prefixes(jail, elems)),
            }
        } else {
            let ips = elems.into_iter().filter(|p| !p.end).map(|p| p.ip);
            match self.raw.last_mut() {
                Some(Raw::Elements(j, v)) if *j == jail => v.extend(ips),
                _ => self.raw.push(Raw::Elements(jail, ips.collect())),
            }
        }
    }

    /// The changes, coalesced: a table deletion swallows the deletions of
    /// its contents reported before it, and a chain deletion its rules.
    fn finish(self) -> Vec<Change> {
        let mut out: Vec<Change> = Vec::new();
        for raw in self.raw {
            let change = match raw {
                Raw::Change(c) => c,
                Raw::Elements(jail, ips) => Change::ElementsDeleted { jail, ips },
                Raw::Prefixes(jail, elems) => {
                    let nets: Vec<IpNet> =
                        pair_prefixes(elems).into_iter().map(|(n, _)| n).collect();
                    if nets.is_empty() {
                        continue;
                    }
                    Change::PrefixesDeleted { jail, nets }
                }
            };
            match change {
                Change::TableDeleted => out.clear(),
                Change::ChainDeleted => out.retain(|c| !matches!(c, Change::RulesDeleted(_))),
                _ => {}
            }
            out.push(change);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::elements::{put_wire, Wire};
    use super::super::netlink::{
        MsgBuf, NFPROTO_IPV4, NFTA_SET_ELEM_LIST_ELEMENTS, NFT_MSG_NEWSETELEM,
    };
    use super::*;

    const PORT: u32 = 77;

    /// One notification as the kernel would send it.
    fn note(buf: &mut MsgBuf, msg: u8, pid: u32, family: u8, attrs: &[(u16, &str)]) {
        let m = buf.begin_nft(msg, 0, 0, family);
        for (ty, s) in attrs {
            buf.put_str(*ty, s);
        }
        buf.end_msg(m);
        buf.set_pid_for_test(m, pid);
    }

    fn elems(buf: &mut MsgBuf, msg: u8, pid: u32, set: &str, keys: &[(&[u8], bool)]) {
        let m = buf.begin_nft(msg, 0, 0, NFPROTO_INET);
        buf.put_str(NFTA_SET_ELEM_LIST_TABLE, "banjo");
        buf.put_str(NFTA_SET_ELEM_LIST_SET, set);
        let n = buf.begin_nest(NFTA_SET_ELEM_LIST_ELEMENTS);
        for (key, end) in keys {
            let w = Wire {
                key: key.to_vec(),
                ttl: None,
                end: *end,
            };
            put_wire(buf, &w);
        }
        buf.end_nest(n);
        buf.end_msg(m);
        buf.set_pid_for_test(m, pid);
    }

    fn decode(buf: &MsgBuf) -> Vec<Change> {
        let names = vec!["mail".to_string(), "all".to_string()];
        let mut d = Decoder::new(&[PORT], "banjo", &names);
        d.datagram(buf.bytes()).unwrap();
        d.finish()
    }

    #[test]
    fn keeps_only_other_sockets_deletions_in_our_table() {
        let mut b = MsgBuf::new();
        // Ours (same port), another table, another family, another chain,
        // an unknown set, an anonymous set, an addition: all ignored.
        elems(
            &mut b,
            NFT_MSG_DELSETELEM,
            PORT,
            "mail_v4",
            &[(&[1, 2, 3, 4], false)],
        );
        note(
            &mut b,
            NFT_MSG_DELTABLE,
            9,
            NFPROTO_INET,
            &[(NFTA_TABLE_NAME, "other")],
        );
        note(
            &mut b,
            NFT_MSG_DELTABLE,
            9,
            NFPROTO_IPV4,
            &[(NFTA_TABLE_NAME, "banjo")],
        );
        note(
            &mut b,
            NFT_MSG_DELCHAIN,
            9,
            NFPROTO_INET,
            &[(NFTA_CHAIN_TABLE, "banjo"), (NFTA_CHAIN_NAME, "forward")],
        );
        note(
            &mut b,
            NFT_MSG_DELSET,
            9,
            NFPROTO_INET,
            &[(NFTA_SET_TABLE, "banjo"), (NFTA_SET_NAME, "gone_v4")],
        );
        note(
            &mut b,
            NFT_MSG_DELSET,
            9,
            NFPROTO_INET,
            &[(NFTA_SET_TABLE, "banjo"), (NFTA_SET_NAME, "__set0")],
        );
        elems(
            &mut b,
            NFT_MSG_NEWSETELEM,
            9,
            "mail_v4",
            &[(&[1, 2, 3, 4], false)],
        );
        assert_eq!(decode(&b), vec![]);

        // Someone else's: reported, consecutive deletions merged.
        let mut b = MsgBuf::new();
        elems(
            &mut b,
            NFT_MSG_DELSETELEM,
            9,
            "mail_v4",
            &[(&[1, 2, 3, 4], false)],
        );
        let v6 = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        elems(&mut b, NFT_MSG_DELSETELEM, 0, "mail_v6", &[(&v6, false)]);
        note(
            &mut b,
            NFT_MSG_DELRULE,
            9,
            NFPROTO_INET,
            &[(NFTA_RULE_TABLE, "banjo"), (NFTA_RULE_CHAIN, "input")],
        );
        note(
            &mut b,
            NFT_MSG_DELRULE,
            9,
            NFPROTO_INET,
            &[(NFTA_RULE_TABLE, "banjo"), (NFTA_RULE_CHAIN, "input")],
        );
        note(
            &mut b,
            NFT_MSG_DELSET,
            9,
            NFPROTO_INET,
            &[(NFTA_SET_TABLE, "banjo"), (NFTA_SET_NAME, "all_v6net")],
        );
        let start = [0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let end = [0x20, 1, 0xd, 0xb8, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        elems(&mut b, NFT_MSG_DELSETELEM, 9, "mail_v6net", &[(&end, true)]);
        elems(
            &mut b,
            NFT_MSG_DELSETELEM,
            9,
            "mail_v6net",
            &[(&start, false)],
        );
        assert_eq!(
            decode(&b),
            vec![
                Change::ElementsDeleted {
                    jail: JailId(0),
                    ips: vec!["1.2.3.4".parse().unwrap(), "2001:db8::1".parse().unwrap()],
                },
                Change::RulesDeleted(2),
                Change::SetDeleted {
                    jail: JailId(1),
                    set: "all_v6net".into(),
                },
                Change::PrefixesDeleted {
                    jail: JailId(0),
                    nets: vec!["2001:db8:1::/64".parse().unwrap()],
                },
            ]
        );
    }

    #[test]
    fn table_and_chain_deletions_swallow_what_they_imply() {
        let mut b = MsgBuf::new();
        let rule = [(NFTA_RULE_TABLE, "banjo"), (NFTA_RULE_CHAIN, "input")];
        note(&mut b, NFT_MSG_DELRULE, 9, NFPROTO_INET, &rule);
        let chain = [(NFTA_CHAIN_TABLE, "banjo"), (NFTA_CHAIN_NAME, "input")];
        note(&mut b, NFT_MSG_DELCHAIN, 9, NFPROTO_INET, &chain);
        assert_eq!(decode(&b), vec![Change::ChainDeleted]);
        note(
            &mut b,
            NFT_MSG_DELSET,
            9,
            NFPROTO_INET,
            &[(NFTA_SET_TABLE, "banjo"), (NFTA_SET_NAME, "mail_v4")],
        );
        note(
            &mut b,
            NFT_MSG_DELTABLE,
            9,
            NFPROTO_INET,
            &[(NFTA_TABLE_NAME, "banjo")],
        );
        // A later change (after someone re-created the table) stays.
        note(&mut b, NFT_MSG_DELRULE, 9, NFPROTO_INET, &rule);
        assert_eq!(
            decode(&b),
            vec![Change::TableDeleted, Change::RulesDeleted(1)]
        );
    }

    #[test]
    fn malformed_datagrams_are_errors_not_panics() {
        let mut b = MsgBuf::new();
        elems(
            &mut b,
            NFT_MSG_DELSETELEM,
            9,
            "mail_v4",
            &[(&[1, 2, 3, 4], false)],
        );
        let bytes = b.bytes().to_vec();
        let names = vec!["mail".to_string()];
        for len in 0..bytes.len() {
            let mut d = Decoder::new(&[PORT], "banjo", &names);
            let _ = d.datagram(&bytes[..len]);
            let _ = d.finish();
        }
        for i in 0..bytes.len() {
            let mut c = bytes.clone();
            c[i] ^= 0xff;
            let mut d = Decoder::new(&[PORT], "banjo", &names);
            let _ = d.datagram(&c);
            let _ = d.finish();
        }
    }
}
