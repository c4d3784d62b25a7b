//! Address networks (`192.0.2.0/24`, `2001:db8::/32`) for `ignoreip`.
//!
//! Hand-written rather than pulled from a crate: banjo needs parsing, display
//! and `contains`, nothing more.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address with a prefix length; a bare address is a /32 or /128.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Builds a network, masking the host bits of `addr`; `None` if `prefix` is too long.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<IpNet> {
        let max = max_prefix(addr);
        if prefix > max {
            return None;
        }
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask32(prefix)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask128(prefix)).into()),
        };
        Some(IpNet { addr, prefix })
    }

    /// The network address (host bits zero).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies inside this network. An IPv4-mapped IPv6 address
    /// (`::ffff:192.0.2.1`) is compared as the IPv4 address it carries, so a
    /// v4 `ignoreip` also covers a dual-stack socket's view of the same client.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// Why a network string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP address or CIDR network")]
pub struct ParseIpNetError(String);

impl FromStr for IpNet {
    type Err = ParseIpNetError;

    fn from_str(s: &str) -> Result<IpNet, ParseIpNetError> {
        let bad = || ParseIpNetError(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| bad())?,
            None => max_prefix(addr),
        };
        IpNet::new(addr, prefix).ok_or_else(bad)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("valid net")
    }

    #[test]
    fn contains_v4_and_v6() {
        assert!(net("127.0.0.1/8").contains("127.200.0.1".parse().expect("ip")));
        assert!(!net("127.0.0.1/8").contains("128.0.0.1".parse().expect("ip")));
        assert!(net("::1").contains("::1".parse().expect("ip")));
        assert!(!net("::1").contains("::2".parse().expect("ip")));
        assert!(net("2001:db8::/32").contains("2001:db8:ffff::1".parse().expect("ip")));
        assert!(net("0.0.0.0/0").contains("203.0.113.9".parse().expect("ip")));
        assert!(!net("0.0.0.0/0").contains("2001:db8::1".parse().expect("ip")));
    }

    #[test]
    fn mapped_v4_is_v4() {
        assert!(net("192.0.2.0/24").contains("::ffff:192.0.2.7".parse().expect("ip")));
    }

    #[test]
    fn rejects_garbage() {
        assert!("192.0.2.1/33".parse::<IpNet>().is_err());
        assert!("example.com".parse::<IpNet>().is_err());
        assert!("1.2.3.4/".parse::<IpNet>().is_err());
        assert_eq!(net("192.0.2.77/24").to_string(), "192.0.2.0/24");
    }
}
