//! A passive observer of nf_tables: subscribes to the NFNLGRP_NFTABLES
//! multicast group of the current network namespace and reports every
//! set element added (NFT_MSG_NEWSETELEM), with the address it carries
//! and the moment the notification was read.
//!
//! The kernel sends these notifications when a transaction commits, so
//! "seen here" means "in the kernel's set", whichever process added it
//! (banjo over netlink, fail2ban and fail2ban-rs through `nft`). Independent
//! of banjo's own netlink code on purpose.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNLGRP_NFTABLES: libc::c_int = 7;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

/// An element addition seen on the wire.
#[derive(Clone, Copy, Debug)]
pub struct Added {
    /// The element's key, when it is a plain IPv4 or IPv6 address.
    pub ip: IpAddr,
    /// When the notification was read.
    pub at: Instant,
}

/// The multicast subscription.
pub struct NfWatch {
    fd: OwnedFd,
    buf: Vec<u8>,
    /// Notifications the kernel dropped because the socket buffer was full.
    pub overruns: u64,
}

impl NfWatch {
    /// Subscribes in the calling thread's network namespace.
    pub fn open() -> io::Result<NfWatch> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: zeroed sockaddr_nl is valid; family set below.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: addr is a properly sized sockaddr_nl.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        setsockopt(
            fd.as_raw_fd(),
            SOL_NETLINK,
            NETLINK_ADD_MEMBERSHIP,
            NFNLGRP_NFTABLES,
        )?;
        // A 100k-element batch is 100k notifications: a big buffer (root may
        // exceed rmem_max with SO_RCVBUFFORCE) keeps the kernel from dropping.
        let want = 256 << 20;
        if setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, want).is_err() {
            let _ = setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, want);
        }
        Ok(NfWatch {
            fd,
            buf: vec![0; 1 << 20],
            overruns: 0,
        })
    }

    /// Waits up to `timeout` for notifications and appends the element
    /// additions they carry to `out`. Returns false on timeout.
    pub fn wait(&mut self, timeout: Duration, out: &mut Vec<Added>) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        }
        if rc == 0 {
            return Ok(false);
        }
        // Read everything queued without blocking.
        loop {
            // SAFETY: buf is valid for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr() as *mut libc::c_void,
                    self.buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(true),
                    Some(libc::ENOBUFS) => {
                        self.overruns += 1;
                        continue;
                    }
                    Some(libc::EINTR) => continue,
                    _ => return Err(e),
                }
            }
            let at = Instant::now();
            parse(&self.buf[..n as usize], at, out);
        }
    }
}

fn setsockopt(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: value is a c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(i..i + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

/// Netlink attributes of `b`: (type without flags, payload).
fn attrs(b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut i = 0usize;
    std::iter::from_fn(move || {
        let len = u16_at(b, i)? as usize;
        let ty = u16_at(b, i + 2)? & 0x3fff;
        if len < 4 || i + len > b.len() {
            return None;
        }
        let payload = &b[i + 4..i + len];
        i += (len + 3) & !3;
        Some((ty, payload))
    })
}

fn parse(buf: &[u8], at: Instant, out: &mut Vec<Added>) {
    let mut i = 0usize;
    while i + NLMSG_HDRLEN <= buf.len() {
        let (Some(len), Some(ty)) = (u32_at(buf, i), u16_at(buf, i + 4)) else {
            return;
        };
        let len = len as usize;
        if len < NLMSG_HDRLEN || i + len > buf.len() {
            return;
        }
        if ty >> 8 == NFNL_SUBSYS_NFTABLES && ty & 0xff == NFT_MSG_NEWSETELEM {
            let body = &buf[i + NLMSG_HDRLEN..i + len];
            if body.len() >= NFGENMSG_LEN {
                elements(&body[NFGENMSG_LEN..], at, out);
            }
        }
        i += (len + 3) & !3;
    }
}

fn elements(body: &[u8], at: Instant, out: &mut Vec<Added>) {
    for (ty, list) in attrs(body) {
        if ty != NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        for (ty, elem) in attrs(list) {
            if ty != NFTA_LIST_ELEM {
                continue;
            }
            for (ty, key) in attrs(elem) {
                if ty != NFTA_SET_ELEM_KEY {
                    continue;
                }
                for (ty, value) in attrs(key) {
                    if ty != NFTA_DATA_VALUE {
                        continue;
                    }
                    let ip = match value.len() {
                        4 => <[u8; 4]>::try_from(value)
                            .ok()
                            .map(|a| IpAddr::V4(Ipv4Addr::from(a))),
                        16 => <[u8; 16]>::try_from(value)
                            .ok()
                            .map(|a| IpAddr::V6(Ipv6Addr::from(a))),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        out.push(Added { ip, at });
                    }
                }
            }
        }
    }
}
