//! Failures per host, for `banjo check`'s report.
//!
//! A log under attack names a new address on most matching lines, so the
//! count is a hash-map insert per match and the map grows (rehashing every
//! key) all the way. An IPv4 address is therefore kept as its 32 bits:
//! no string to allocate, and nothing behind a pointer to read when the
//! map rehashes. Anything else (an IPv6 address, a host name, a failure
//! id) is kept as the text fail2ban reports.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

/// Failures per host.
#[derive(Debug, Default)]
pub(crate) struct Hosts {
    v4: HashMap<u32, u64>,
    text: HashMap<String, u64>,
}

impl Hosts {
    /// Counts one failure of `host` (the text fail2ban reports), whose
    /// address is `address` when it has one.
    pub(crate) fn count(&mut self, host: &str, address: Option<IpAddr>) {
        // Rust reads only the one way of writing an IPv4 address that it
        // writes (no leading zeros, four parts), so the address stands
        // for the text exactly.
        if let Some(IpAddr::V4(a)) = address {
            if host.parse::<Ipv4Addr>() == Ok(a) {
                *self.v4.entry(u32::from(a)).or_insert(0) += 1;
                return;
            }
        }
        match self.text.get_mut(host) {
            Some(c) => *c += 1,
            None => {
                self.text.insert(host.to_string(), 1);
            }
        }
    }

    /// Adds `other`'s counts.
    pub(crate) fn merge(&mut self, mut other: Hosts) {
        if other.v4.len() > self.v4.len() {
            std::mem::swap(&mut self.v4, &mut other.v4);
        }
        self.v4.reserve(other.v4.len());
        for (a, c) in other.v4 {
            *self.v4.entry(a).or_insert(0) += c;
        }
        if other.text.len() > self.text.len() {
            std::mem::swap(&mut self.text, &mut other.text);
        }
        for (h, c) in other.text {
            *self.text.entry(h).or_insert(0) += c;
        }
    }

    /// Distinct hosts.
    pub(crate) fn len(&self) -> usize {
        self.v4.len() + self.text.len()
    }

    /// The `top` hosts with the most failures (all with `None`), most
    /// first, then in the order of their text.
    pub(crate) fn ranked(&self, top: Option<usize>) -> Vec<(HostText<'_>, u64)> {
        let mut all: Vec<(HostText<'_>, u64)> = Vec::with_capacity(self.len());
        all.extend(self.v4.iter().map(|(a, c)| (HostText::v4(*a), *c)));
        all.extend(self.text.iter().map(|(h, c)| (HostText::Text(h), *c)));
        // Hosts are distinct, so the order is total.
        let order = |a: &(HostText<'_>, u64), b: &(HostText<'_>, u64)| {
            b.1.cmp(&a.1)
                .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
        };
        if let Some(top) = top.filter(|&t| t < all.len()) {
            all.select_nth_unstable_by(top, order);
            all.truncate(top);
        }
        all.sort_unstable_by(order);
        all
    }
}

/// A host as text, without allocating for an IPv4 address.
#[derive(Clone, Copy, Debug)]
pub(crate) enum HostText<'a> {
    /// Dotted decimal, and its length.
    V4([u8; 15], u8),
    Text(&'a str),
}

impl HostText<'_> {
    fn v4(bits: u32) -> HostText<'static> {
        let mut buf = [0u8; 15];
        let mut len = 0;
        for (i, octet) in Ipv4Addr::from(bits).octets().into_iter().enumerate() {
            if i > 0 {
                buf[len] = b'.';
                len += 1;
            }
            let digits = [octet / 100, octet / 10 % 10, octet % 10];
            let skip = if octet >= 100 {
                0
            } else if octet >= 10 {
                1
            } else {
                2
            };
            for d in &digits[skip..] {
                buf[len] = b'0' + d;
                len += 1;
            }
        }
        HostText::V4(buf, len as u8)
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            HostText::V4(buf, len) => buf.get(..usize::from(*len)).unwrap_or_default(),
            HostText::Text(t) => t.as_bytes(),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_as_written() {
        for a in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.100.255",
            "255.255.255.255",
            "192.0.2.9",
        ] {
            let bits = u32::from(a.parse::<Ipv4Addr>().unwrap());
            assert_eq!(HostText::v4(bits).as_str(), a);
        }
    }

    #[test]
    fn ranked_by_count_then_text() {
        let mut h = Hosts::default();
        let v4 = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        for _ in 0..3 {
            h.count("10.0.0.9", v4("10.0.0.9"));
        }
        h.count("10.0.0.10", v4("10.0.0.10"));
        h.count("9.0.0.1", v4("9.0.0.1"));
        h.count("bad.example", None);
        // IPv6 and an address written another way stay text.
        h.count("2001:DB8::1", v4("2001:db8::1"));
        h.count("::ffff:10.0.0.10", v4("10.0.0.10"));
        let mut other = Hosts::default();
        other.count("9.0.0.1", v4("9.0.0.1"));
        other.count("bad.example", None);
        h.merge(other);
        assert_eq!(h.len(), 6);
        let all: Vec<(String, u64)> = h
            .ranked(None)
            .into_iter()
            .map(|(t, c)| (t.as_str().to_string(), c))
            .collect();
        let want = [
            ("10.0.0.9", 3),
            ("9.0.0.1", 2),
            ("bad.example", 2),
            ("10.0.0.10", 1),
            ("2001:DB8::1", 1),
            ("::ffff:10.0.0.10", 1),
        ];
        let want: Vec<(String, u64)> = want.iter().map(|(h, c)| (h.to_string(), *c)).collect();
        assert_eq!(all, want);
        let top: Vec<String> = h
            .ranked(Some(2))
            .into_iter()
            .map(|(t, _)| t.as_str().to_string())
            .collect();
        assert_eq!(top, ["10.0.0.9", "9.0.0.1"]);
    }
}
