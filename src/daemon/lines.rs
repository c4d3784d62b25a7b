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
//!
//! A line names its jail by index (a backlog holds tens of thousands of
//! lines: 40 bytes each, in batches of [`BATCH`]); the batch carries the
//! names.

use std::net::IpAddr;
use std::sync::Arc;

use crate::jail::JailId;
use crate::log;
use crate::net::IpNet;

/// Lines per batch: small enough that a batch's buffer is reused from the
/// heap rather than mapped and unmapped each time.
const BATCH: usize = 2048;

/// The jails' names, by [`JailId`].
pub(super) type Names = Arc<[Box<str>]>;

/// Lines, in order, and the jail names they refer to.
#[derive(Debug)]
pub(super) struct Batch {
    names: Names,
    lines: Vec<Line>,
}

/// One line, with the structured fields it carries in the journal.
#[derive(Debug)]
pub(super) enum Line {
    /// A failure was counted (`failures`: inside findtime; `None` for the
    /// one that bans).
    Found {
        jail: JailId,
        ip: IpAddr,
        failures: Option<u32>,
    },
    /// An address entered the jail's set (`bantime` in seconds, -1 for
    /// ever; `count`: which ban of this address it is).
    Ban {
        jail: JailId,
        ip: IpAddr,
        bantime: i64,
        count: u32,
        manual: bool,
    },
    /// A network entered the jail's set, several of its addresses having
    /// been banned.
    PrefixBan {
        jail: JailId,
        net: IpNet,
        bantime: i64,
    },
    /// An address or network left the set before its time.
    Unban(Box<Unban>),
}

/// An unban (rare: boxed, to keep [`Line`] small).
#[derive(Debug)]
pub(super) struct Unban {
    pub(super) jail: String,
    pub(super) what: String,
    /// By whom, if not through banjo.
    pub(super) how: &'static str,
}

impl Batch {
    pub(super) fn new(names: &Names) -> Batch {
        Batch {
            names: Arc::clone(names),
            lines: Vec::new(),
        }
    }

    /// A batch of one line.
    pub(super) fn of(names: &Names, line: Line) -> Batch {
        Batch {
            names: Arc::clone(names),
            lines: vec![line],
        }
    }

    /// Adds `line`. When that fills the batch, it is returned to be handed
    /// over, and this one starts again empty.
    #[must_use]
    pub(super) fn push(&mut self, line: Line) -> Option<Batch> {
        self.lines.push(line);
        if self.lines.len() < BATCH {
            return None;
        }
        let fresh = Batch::new(&self.names);
        Some(std::mem::replace(self, fresh))
    }

    pub(super) fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Writes up to `n` lines from the front; whether any remain.
    pub(super) fn write_some(&mut self, n: usize) -> bool {
        let n = n.min(self.lines.len());
        for line in self.lines.drain(..n) {
            line.write(&self.names);
        }
        !self.lines.is_empty()
    }

    /// Writes every line.
    pub(super) fn write_all(mut self) {
        self.write_some(usize::MAX);
    }
}

impl Line {
    fn write(&self, names: &[Box<str>]) {
        let name = |id: &JailId| names.get(id.index()).map_or("?", |n| &**n);
        match self {
            Line::Found { jail, ip, failures } => {
                let jail = name(jail);
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
                let jail = name(jail);
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
                let jail = name(jail);
                tracing::warn!(
                    message_id = log::BAN,
                    jail,
                    ip = %net,
                    bantime,
                    "[{jail}] Ban {net} (several addresses of this prefix were banned)"
                );
            }
            Line::Unban(u) => {
                let Unban { jail, what, how } = &**u;
                tracing::warn!(message_id = log::UNBAN, jail, ip = %what, "[{jail}] Unban {what}{how}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_stays_small() {
        // A backlog holds tens of thousands of lines at once.
        assert!(
            std::mem::size_of::<Line>() <= 40,
            "{}",
            std::mem::size_of::<Line>()
        );
    }
}
