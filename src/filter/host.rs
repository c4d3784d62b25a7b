//! From the token a host tag captured to the address to ban.
//!
//! The failregex expansion (see `failregex.rs`) makes each tag capture a
//! *maximal* run of address characters. This module then decides whether
//! that whole run is an address. It is deliberately strict: whatever is not
//! plainly one address is refused, because a wrong guess bans an innocent
//! address (or lets an attacker choose one).
//!
//! Accepted forms:
//! - IPv4 in dotted-quad form, `192.0.2.7`. A leading zero in an octet
//!   (`01.2.3.4`, `192.0.2.07`) is refused: `inet_aton` reads it as octal
//!   and other tools as decimal, so the text names no single address.
//! - IPv6 in any standard form, `2001:db8::7`, optionally bracketed,
//!   `[2001:db8::7]`. A zone index (`fe80::1%eth0`) is refused.
//! - An IPv4-mapped IPv6 address, `::ffff:192.0.2.7`, becomes the IPv4
//!   address: the kernel sees such a client's packets as IPv4, so only a v4
//!   ban stops it.
//! - An address with a port: `192.0.2.7:25` and `[2001:db8::7]:25` (and a
//!   bracketed IPv4, `[192.0.2.7]`, with or without port). The port is
//!   dropped. An unbracketed IPv6 followed by `:port` cannot be told apart
//!   from an IPv6 address and is read as one, or refused.
//!
//! Everything else (host names, `1.2.3.4.evil.example`, trailing dots,
//! unbalanced brackets) is refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Which host tag captured the token: it restricts the address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HostKind {
    /// `<HOST>`: any address form.
    Host,
    /// `<ADDR>`: any address form (hexadecimal characters only).
    Addr,
    /// `<IP4>`: an IPv4 address only.
    Ip4,
    /// `<IP6>`: an address written in IPv6 notation only (a v4-mapped one
    /// still yields its IPv4 address).
    Ip6,
}

/// Whether a byte may be part of an address token or a host name. A
/// captured token that touches such a byte on either side was cut out of a
/// longer word and is refused (see [`delimited`]). `:` is left out so that a
/// failregex may write `<HOST>:`.
pub(crate) fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'-')
}

/// Whether `haystack[start..end]` is delimited: the byte before it is not a
/// word byte, and neither is the byte after it, except a single `.` that
/// ends a sentence (`... from 192.0.2.7.` at the end of the line or before a
/// space).
pub(crate) fn delimited(haystack: &[u8], start: usize, end: usize) -> bool {
    if start > 0 && haystack.get(start - 1).copied().is_some_and(is_word_byte) {
        return false;
    }
    match haystack.get(end).copied() {
        None => true,
        Some(b'.') => !haystack.get(end + 1).copied().is_some_and(is_word_byte),
        Some(b) => !is_word_byte(b),
    }
}

/// Parses a captured token as the tag `kind` allows; `None` if it is not
/// exactly one address.
pub(crate) fn parse(token: &[u8], kind: HostKind) -> Option<IpAddr> {
    let text = std::str::from_utf8(token).ok()?;
    let (addr, v6_notation) = parse_any(text)?;
    match kind {
        HostKind::Host | HostKind::Addr => Some(addr),
        HostKind::Ip4 => (!v6_notation).then_some(addr),
        HostKind::Ip6 => v6_notation.then_some(addr),
    }
}

/// The address and whether it was written in IPv6 notation.
fn parse_any(text: &str) -> Option<(IpAddr, bool)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        if !after.is_empty() && !is_port_suffix(after) {
            return None;
        }
        return bare(inner);
    }
    if let Some(found) = bare(text) {
        return Some(found);
    }
    // `a.b.c.d:port`. IPv6 with a port must be bracketed.
    let (host, port) = text.rsplit_once(':')?;
    let v4: Ipv4Addr = host.parse().ok()?;
    is_port(port).then_some((IpAddr::V4(v4), false))
}

/// An unbracketed address without port.
fn bare(text: &str) -> Option<(IpAddr, bool)> {
    if let Ok(v4) = text.parse::<Ipv4Addr>() {
        return Some((IpAddr::V4(v4), false));
    }
    let v6: Ipv6Addr = text.parse().ok()?;
    let addr = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    Some((addr, true))
}

/// `:25`
fn is_port_suffix(s: &str) -> bool {
    s.strip_prefix(':').is_some_and(is_port)
}

/// 1 to 5 decimal digits, at most 65535.
fn is_port(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && s.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> Option<IpAddr> {
        parse(s.as_bytes(), HostKind::Host)
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn plain_addresses() {
        assert_eq!(host("192.0.2.7"), ip("192.0.2.7"));
        assert_eq!(host("2001:db8::66"), ip("2001:db8::66"));
        assert_eq!(host("[2001:db8::66]"), ip("2001:db8::66"));
        assert_eq!(host("::1"), ip("::1"));
    }

    #[test]
    fn mapped_v6_becomes_v4() {
        assert_eq!(host("::ffff:192.0.2.7"), ip("192.0.2.7"));
        assert_eq!(host("[::ffff:192.0.2.7]:25"), ip("192.0.2.7"));
        assert_eq!(parse(b"::ffff:192.0.2.7", HostKind::Ip6), ip("192.0.2.7"));
        assert_eq!(parse(b"::ffff:192.0.2.7", HostKind::Ip4), None);
    }

    #[test]
    fn ports_are_dropped() {
        assert_eq!(host("192.0.2.7:25"), ip("192.0.2.7"));
        assert_eq!(host("[2001:db8::66]:587"), ip("2001:db8::66"));
        assert_eq!(host("[192.0.2.7]:587"), ip("192.0.2.7"));
        assert_eq!(host("192.0.2.7:65536"), None);
        assert_eq!(host("192.0.2.7:+25"), None);
        assert_eq!(host("192.0.2.7:"), None);
        assert_eq!(host("[2001:db8::66]:"), None);
        assert_eq!(host("[2001:db8::66]x"), None);
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "unknown",
            "mail.example.net",
            "1.2.3.4.evil.example",
            "1.2.3.4.",
            "01.2.3.4",
            "192.0.2.07",
            "1.2.3",
            "256.1.1.1",
            "[1.2.3.4",
            "1.2.3.4]",
            "fe80::1%eth0",
            "2001:db8::66:25:1:2:3:4:5",
            "2001:db8::g",
        ] {
            assert_eq!(host(bad), None, "{bad}");
        }
        assert_eq!(parse(b"\xff1.2.3.4", HostKind::Host), None);
    }

    #[test]
    fn family_restrictions() {
        assert_eq!(parse(b"192.0.2.7", HostKind::Ip4), ip("192.0.2.7"));
        assert_eq!(parse(b"192.0.2.7", HostKind::Ip6), None);
        assert_eq!(parse(b"2001:db8::1", HostKind::Ip4), None);
        assert_eq!(parse(b"2001:db8::1", HostKind::Ip6), ip("2001:db8::1"));
        assert_eq!(parse(b"2001:db8::1", HostKind::Addr), ip("2001:db8::1"));
    }

    #[test]
    fn delimiting() {
        let h = b"from 1.2.3.4-evil x";
        assert!(!delimited(h, 5, 12));
        let h = b"from 1.2.3.4. next";
        assert!(delimited(h, 5, 12));
        let h = b"from 1.2.3.4.evil";
        assert!(!delimited(h, 5, 12));
        let h = b"x1.2.3.4";
        assert!(!delimited(h, 1, 8));
        let h = b"[1.2.3.4]:";
        assert!(delimited(h, 1, 8));
        assert!(delimited(b"1.2.3.4", 0, 7));
    }
}
