//! The lines fail2ban users read (`Found`, `Ban`, `Unban`), held as data
//! until written.
//!
//! Formatting and writing one costs some 3 µs, as much as reading the
//! entry that led to it: in a backlog where one entry in nine is a
//! failure, writing from the loop took a fifth of its time. So the daemon
//! hands each drain's lines to its second thread (`committer.rs`), which
//! writes them in the order they were handed over while the loop reads
//! on. Every such line goes that way, so they stay in order: an `Unban`
//! never comes out before the `Ban` it undoes.

use std::net::IpAddr;
use std::sync::Arc;

use crate::log;
use crate::net::IpNet;

/// One line, with the structured fields it carries in the journal.
#[derive(Debug)]
pub(super) enum Line {
    /// A failure was counted (`failures`: inside findtime; `None` for the
    /// one that bans).
    Found {
        jail: Arc<str>,
        ip: IpAddr,
        failures: Option<u32>,
    },
    /// An address entered the jail's set (`bantime` in seconds, -1 for
    /// ever; `count`: which ban of this address it is).
    Ban {
        jail: Arc<str>,
        ip: IpAddr,
        bantime: i64,
        count: u32,
        manual: bool,
    },
    /// A network entered the jail's set, several of its addresses having
    /// been banned.
    PrefixBan {
        jail: Arc<str>,
        net: IpNet,
        bantime: i64,
    },
    /// An address or network left the set before its time (`how`: by
    /// whom, if not through banjo).
    Unban {
        jail: Arc<str>,
        what: String,
        how: &'static str,
    },
}

impl Line {
    /// Writes the line to the log.
    pub(super) fn write(&self) {
        match self {
            Line::Found { jail, ip, failures } => {
                let jail = &**jail;
                // `failures` is recorded only when set.
                tracing::info!(message_id = log::FOUND, jail, ip = %ip, failures, "[{jail}] Found {ip}");
            }
            Line::Ban {
                jail,
                ip,
                bantime,
                count,
                manual,
            } => {
                let jail = &**jail;
                tracing::warn!(
                    message_id = log::BAN,
                    jail,
                    ip = %ip,
                    bantime,
                    ban_count = count,
                    manual,
                    "[{jail}] Ban {ip}"
                );
            }
            Line::PrefixBan { jail, net, bantime } => {
                let jail = &**jail;
                tracing::warn!(
                    message_id = log::BAN,
                    jail,
                    ip = %net,
                    bantime,
                    "[{jail}] Ban {net} (several addresses of this prefix were banned)"
                );
            }
            Line::Unban { jail, what, how } => {
                let jail = &**jail;
                tracing::warn!(message_id = log::UNBAN, jail, ip = %what, "[{jail}] Unban {what}{how}");
            }
        }
    }
}
