//! The host's own addresses, kept current: `ignoreself` never counts or
//! bans them.
//!
//! The list comes from getifaddrs(3); a NETLINK_ROUTE socket subscribed to
//! address changes sits in the daemon's poll loop, and any change triggers
//! a fresh read. So an address added by DHCP or by hand is protected the
//! moment the kernel has it.

use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{
    bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

/// RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR (rtnetlink.h).
const GROUPS: u32 = 0x10 | 0x100;

/// A watcher of the host's addresses.
pub struct OwnAddresses {
    socket: OwnedFd,
    addresses: Vec<IpAddr>,
}

impl OwnAddresses {
    /// Subscribes to address changes and reads the current list.
    pub fn open() -> nix::Result<OwnAddresses> {
        let socket = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkRoute,
        )?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            &NetlinkAddr::new(0, GROUPS),
        )?;
        let mut own = OwnAddresses {
            socket,
            addresses: Vec::new(),
        };
        own.refresh();
        Ok(own)
    }

    /// Drains pending notifications and re-reads the list; true if it changed.
    pub fn changed(&mut self) -> bool {
        let mut buf = [0u8; 8192];
        while let Ok(n) = recv(
            std::os::fd::AsRawFd::as_raw_fd(&self.socket),
            &mut buf,
            MsgFlags::MSG_DONTWAIT,
        ) {
            if n == 0 {
                break;
            }
        }
        let before = self.addresses.clone();
        self.refresh();
        before != self.addresses
    }

    fn refresh(&mut self) {
        let mut list: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
            .map(|addrs| {
                addrs
                    .filter_map(|a| a.address)
                    .filter_map(|s| {
                        if let Some(v4) = s.as_sockaddr_in() {
                            Some(IpAddr::V4(v4.ip()))
                        } else {
                            s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        list.sort();
        list.dedup();
        self.addresses = list;
    }

    /// The current addresses.
    pub fn addresses(&self) -> &[IpAddr] {
        &self.addresses
    }
}

impl AsFd for OwnAddresses {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_one_of_ours() {
        let own = OwnAddresses::open().unwrap();
        assert!(own.addresses().contains(&"127.0.0.1".parse().unwrap()));
    }
}
