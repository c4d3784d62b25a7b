//! The values that travel down the pipeline (fail2ban's FailTicket and
//! BanTicket): the filter emits a [`Failure`], the tracker turns enough of
//! them into a [`Ban`], the firewall applies it. They are plain data so that
//! no stage needs to know another.

use std::net::IpAddr;

use crate::jail::{Bantime, JailId};

/// Microseconds since the Unix epoch: the journal's own clock
/// (`__REALTIME_TIMESTAMP`), never the daemon's.
pub type Micros = u64;

/// One failregex hit with a usable address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The jail whose failregex matched.
    pub jail: JailId,
    /// The address extracted from `<HOST>`.
    pub ip: IpAddr,
    /// When the journal received the line.
    pub time: Micros,
}

/// A decision to ban `ip` in `jail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ban {
    /// The jail that bans.
    pub jail: JailId,
    /// The banned address.
    pub ip: IpAddr,
    /// The kernel timeout the element gets (escalation applied).
    pub bantime: Bantime,
    /// Time of the failure that crossed `maxretry` (journal clock).
    pub time: Micros,
    /// Which ban of this address this is (1 for the first), as counted
    /// for escalation.
    pub count: u32,
}
