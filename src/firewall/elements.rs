//! Set elements on the wire: NEWSETELEM/DELSETELEM encoding with
//! per-element TIMEOUT and EXPIRATION, interval ends for prefixes, and the
//! parser for GETSETELEM dumps and DELSETELEM notifications.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use crate::net::IpNet;

use super::netlink::{
    be32, be64, Attrs, Batch, Malformed, MsgBuf, NFPROTO_INET, NFTA_DATA_VALUE, NFTA_LIST_ELEM,
    NFTA_SET_ELEM_EXPIRATION, NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_LIST_ELEMENTS,
    NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_SET_ID, NFTA_SET_ELEM_LIST_TABLE,
    NFTA_SET_ELEM_TIMEOUT, NFT_MSG_NEWSETELEM, NFT_SET_ELEM_INTERVAL_END, NLM_F_CREATE,
};
use super::Listed;

/// Elements per NEWSETELEM/DELSETELEM message. An IPv6 element with timeout
/// and expiration takes 52 bytes, so 1000 of them stay well inside the
/// 64 KiB limit of the nested NFTA_SET_ELEM_LIST_ELEMENTS attribute.
pub(crate) const ELEMS_PER_MSG: usize = 1000;

/// Upper bound of one element message's size, for splitting batches.
pub(crate) const MAX_ELEM_MSG: usize = 64 << 10;

/// One element as sent to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Item {
    /// The key: an IPv4 or IPv6 address (by the set's family).
    pub(crate) ip: IpAddr,
    /// `(timeout, expiration)` in milliseconds; `None` = permanent.
    pub(crate) ttl: Option<(u64, u64)>,
}

/// One element as encoded: key bytes, `(timeout, expiration)` in ms, and
/// whether it is the end marker of an interval (the first address past it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Wire {
    /// The key, in network byte order.
    pub(crate) key: Vec<u8>,
    /// `(timeout, expiration)` in milliseconds; `None` = none sent.
    pub(crate) ttl: Option<(u64, u64)>,
    /// NFT_SET_ELEM_INTERVAL_END: this element closes the interval before it.
    pub(crate) end: bool,
}

impl Wire {
    /// A plain element: an address with optional timeouts.
    pub(crate) fn key(key: Vec<u8>, ttl: Option<(u64, u64)>) -> Wire {
        Wire {
            key,
            ttl,
            end: false,
        }
    }
}

/// Writes one element (an `NFTA_LIST_ELEM`) with key and optional timeouts.
#[cfg(test)]
pub(crate) fn put_elem(buf: &mut MsgBuf, key: &[u8], ttl: Option<(u64, u64)>) {
    put_wire(buf, &Wire::key(key.to_vec(), ttl));
}

/// Writes one element (an `NFTA_LIST_ELEM`).
pub(crate) fn put_wire(buf: &mut MsgBuf, w: &Wire) {
    let e = buf.begin_nest(NFTA_LIST_ELEM);
    buf.put_data(NFTA_SET_ELEM_KEY, &w.key);
    if w.end {
        buf.put_be32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
    }
    if let Some((timeout, expiration)) = w.ttl {
        buf.put_be64(NFTA_SET_ELEM_TIMEOUT, timeout);
        buf.put_be64(NFTA_SET_ELEM_EXPIRATION, expiration);
    }
    buf.end_nest(e);
}

/// Appends one NEWSETELEM (`msg` = NFT_MSG_NEWSETELEM) or DELSETELEM message
/// for `items`, all of the set's family. `set_id` refers to a set created
/// earlier in the same batch.
pub(crate) fn push_message(
    batch: &mut Batch,
    msg: u8,
    table: &str,
    set: &str,
    set_id: Option<u32>,
    elems: &mut dyn Iterator<Item = Wire>,
    step: String,
) {
    let flags = if msg == NFT_MSG_NEWSETELEM {
        NLM_F_CREATE
    } else {
        0
    };
    let m = batch.begin(msg, flags, NFPROTO_INET, step);
    let buf = batch.buf();
    buf.put_str(NFTA_SET_ELEM_LIST_TABLE, table);
    buf.put_str(NFTA_SET_ELEM_LIST_SET, set);
    if let Some(id) = set_id {
        buf.put_be32(NFTA_SET_ELEM_LIST_SET_ID, id);
    }
    let n = buf.begin_nest(NFTA_SET_ELEM_LIST_ELEMENTS);
    for w in elems {
        put_wire(buf, &w);
    }
    buf.end_nest(n);
    batch.end(m);
}

/// The key bytes of an address: 4 or 16 octets, network order.
pub(crate) fn key_of(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// One element as the kernel reports it, before it becomes a [`Listed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Parsed {
    /// The key.
    pub(crate) ip: IpAddr,
    /// Whether the element is an interval end marker.
    pub(crate) end: bool,
    /// Total timeout; `None` = permanent.
    pub(crate) timeout: Option<Duration>,
    /// Time left; `None` = permanent.
    pub(crate) expires: Option<Duration>,
}

impl From<Parsed> for Listed {
    fn from(p: Parsed) -> Listed {
        Listed {
            ip: p.ip,
            timeout: p.timeout,
            expires: p.expires,
        }
    }
}

/// Parses the attributes of one NEWSETELEM dump message (or a DELSETELEM
/// or NEWSETELEM notification) into `out`.
pub(crate) fn parse_dump(attrs: Attrs<'_>, out: &mut Vec<Parsed>) -> Result<(), Malformed> {
    for attr in attrs {
        let (ty, data) = attr?;
        if ty != NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        for elem in Attrs::new(data) {
            let (ty, data) = elem?;
            if ty == NFTA_LIST_ELEM {
                out.push(parse_elem(data)?);
            }
        }
    }
    Ok(())
}

fn parse_elem(data: &[u8]) -> Result<Parsed, Malformed> {
    let mut ip = None;
    let mut timeout = None;
    let mut expires = None;
    let mut end = false;
    for attr in Attrs::new(data) {
        let (ty, data) = attr?;
        match ty {
            NFTA_SET_ELEM_KEY => {
                for inner in Attrs::new(data) {
                    let (ty, value) = inner?;
                    if ty == NFTA_DATA_VALUE {
                        ip = Some(ip_of(value)?);
                    }
                }
            }
            NFTA_SET_ELEM_FLAGS => end = be32(data)? & NFT_SET_ELEM_INTERVAL_END != 0,
            NFTA_SET_ELEM_TIMEOUT => timeout = Some(be64(data)?),
            NFTA_SET_ELEM_EXPIRATION => expires = Some(be64(data)?),
            // Expressions (the counters of an earlier banjo's sets) are
            // not reported.
            _ => {}
        }
    }
    let ip = ip.ok_or(Malformed("set element without a key"))?;
    // We never give sets a default timeout, so an element without TIMEOUT
    // (or, defensively, with TIMEOUT 0) never expires.
    let timeout = timeout.filter(|t| *t != 0).map(Duration::from_millis);
    let expires = if timeout.is_some() {
        expires.map(Duration::from_millis)
    } else {
        None
    };
    Ok(Parsed {
        ip,
        end,
        timeout,
        expires,
    })
}

/// The elements of one IPv6 prefix in an interval set: its first address
/// with the timeouts, then the end marker at the first address past it
/// (left out when the prefix reaches the top of the address space, which
/// the kernel reads as "to the end").
pub(crate) fn prefix_wires(start: Ipv6Addr, prefix: u8, ttl: Option<(u64, u64)>) -> Vec<Wire> {
    let first = u128::from(start);
    let mut out = vec![Wire::key(first.to_be_bytes().to_vec(), ttl)];
    let size = 1u128.checked_shl(128 - u32::from(prefix.min(128)));
    if let Some(end) = size.and_then(|n| first.checked_add(n)) {
        out.push(Wire {
            key: end.to_be_bytes().to_vec(),
            ttl: None,
            end: true,
        });
    }
    out
}

/// Pairs the elements of an IPv6 interval set into prefixes: each start
/// with the end marker that follows it in address order. Intervals that
/// are not a CIDR prefix (banjo never writes those) are skipped.
pub(crate) fn pair_prefixes(mut elems: Vec<Parsed>) -> Vec<(IpNet, Parsed)> {
    let key = |p: &Parsed| match p.ip {
        IpAddr::V6(a) => u128::from(a),
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
    };
    // Ends sort before starts at the same address: an end closes the
    // interval below it.
    elems.sort_by_key(|p| (key(p), !p.end));
    let mut out = Vec::new();
    let mut i = 0;
    while i < elems.len() {
        let start = elems[i];
        i += 1;
        if start.end {
            continue;
        }
        let first = key(&start);
        let size = match elems.get(i) {
            Some(next) if next.end => {
                i += 1;
                key(next).wrapping_sub(first)
            }
            // No end marker: the interval runs to the top of the space.
            _ => (u128::MAX - first).wrapping_add(1),
        };
        let prefix = if size == 0 {
            Some(0) // the whole space: 2^128 wraps to 0
        } else if size.is_power_of_two() {
            u8::try_from(128 - size.trailing_zeros()).ok()
        } else {
            None
        };
        let net = prefix.and_then(|p| IpNet::new(IpAddr::V6(Ipv6Addr::from(first)), p));
        if let Some(net) = net.filter(|n| n.addr() == IpAddr::V6(Ipv6Addr::from(first))) {
            out.push((net, start));
        }
    }
    out
}

fn ip_of(value: &[u8]) -> Result<IpAddr, Malformed> {
    if let Ok(b) = <[u8; 4]>::try_from(value) {
        Ok(IpAddr::from(b))
    } else if let Ok(b) = <[u8; 16]>::try_from(value) {
        Ok(IpAddr::from(b))
    } else {
        Err(Malformed("set element key is neither 4 nor 16 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::netlink::{
        Messages, NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS, NFTA_EXPR_DATA, NFTA_EXPR_NAME,
        NFTA_SET_ELEM_EXPR, NFTA_SET_ELEM_EXPRESSIONS, NFT_MSG_DELSETELEM, NLM_F_ACK,
        NLM_F_REQUEST,
    };
    use super::*;

    fn ne16(v: u16) -> [u8; 2] {
        v.to_ne_bytes()
    }

    /// Writes an expression's NAME and DATA { BYTES, PACKETS }.
    fn counter(buf: &mut MsgBuf, name: &str, packets: u64, bytes: u64) {
        buf.put_str(NFTA_EXPR_NAME, name);
        let d = buf.begin_nest(NFTA_EXPR_DATA);
        buf.put_be64(NFTA_COUNTER_BYTES, bytes);
        buf.put_be64(NFTA_COUNTER_PACKETS, packets);
        buf.end_nest(d);
    }

    /// The exact bytes of one NEWSETELEM for 192.0.2.1, timeout 600 s,
    /// expiration 30 s, in table "t", set "j_v4".
    #[test]
    fn encoder_byte_layout() {
        let mut b = Batch::new(100);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        push_message(
            &mut b,
            NFT_MSG_NEWSETELEM,
            "t",
            "j_v4",
            None,
            &mut std::iter::once(Wire::key(key_of(ip), Some((600_000, 30_000)))),
            "step".into(),
        );
        let bytes = b.finish_for_test();
        let msgs: Vec<_> = Messages::new(&bytes).map(|m| m.unwrap()).collect();
        let m = msgs[1];
        assert_eq!(m.ty, (10 << 8) | 12);
        assert_eq!(m.seq, 101);
        assert_eq!(m.flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE);
        let mut want: Vec<u8> = vec![1, 0, 0, 0]; // nfgenmsg: inet, v0, res_id 0
                                                  // NFTA_SET_ELEM_LIST_TABLE "t\0" (len 6, padded to 8)
        want.extend(ne16(6));
        want.extend(ne16(1));
        want.extend(b"t\0\0\0");
        // NFTA_SET_ELEM_LIST_SET "j_v4\0" (len 9, padded to 12)
        want.extend(ne16(9));
        want.extend(ne16(2));
        want.extend(b"j_v4\0\0\0\0");
        // NFTA_SET_ELEM_LIST_ELEMENTS, nested: 4 + 40
        want.extend(ne16(44));
        want.extend(ne16(3 | 0x8000));
        // NFTA_LIST_ELEM, nested: 4 + 12 + 12 + 12
        want.extend(ne16(40));
        want.extend(ne16(1 | 0x8000));
        // NFTA_SET_ELEM_KEY, nested { NFTA_DATA_VALUE 192.0.2.1 }
        want.extend(ne16(12));
        want.extend(ne16(1 | 0x8000));
        want.extend(ne16(8));
        want.extend(ne16(1));
        want.extend([192, 0, 2, 1]);
        // NFTA_SET_ELEM_TIMEOUT 600000 ms, big-endian u64
        want.extend(ne16(12));
        want.extend(ne16(4));
        want.extend(600_000u64.to_be_bytes());
        // NFTA_SET_ELEM_EXPIRATION 30000 ms
        want.extend(ne16(12));
        want.extend(ne16(5));
        want.extend(30_000u64.to_be_bytes());
        assert_eq!(m.payload, &want[..]);
    }

    #[test]
    fn permanent_element_has_no_timeouts_and_delete_has_no_create() {
        let mut b = Batch::new(1);
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        push_message(
            &mut b,
            NFT_MSG_DELSETELEM,
            "t",
            "j_v6",
            None,
            &mut std::iter::once(Wire::key(key_of(ip), None)),
            "step".into(),
        );
        let bytes = b.finish_for_test();
        let m = Messages::new(&bytes).nth(1).unwrap().unwrap();
        assert_eq!(m.flags, NLM_F_REQUEST | NLM_F_ACK);
        let mut out = Vec::new();
        parse_dump(m.nft_attrs().unwrap(), &mut out).unwrap();
        assert_eq!(
            out,
            vec![Parsed {
                ip,
                end: false,
                timeout: None,
                expires: None,
            }]
        );
    }

    /// A hand-made dump message: one IPv4 element with TIMEOUT, EXPIRATION
    /// and a counter (as one NFTA_SET_ELEM_EXPR, as an earlier banjo's sets
    /// report it), one IPv6 element with neither but a counter in an
    /// NFTA_SET_ELEM_EXPRESSIONS list next to another expression, plus an
    /// attribute: the parser must skip all but the key and timeouts.
    fn dump_message() -> Vec<u8> {
        let mut buf = MsgBuf::new();
        let m = buf.begin_nft(NFT_MSG_NEWSETELEM, 0x2, 5, NFPROTO_INET);
        buf.put_str(NFTA_SET_ELEM_LIST_TABLE, "banjo");
        buf.put_str(NFTA_SET_ELEM_LIST_SET, "x_v4");
        let n = buf.begin_nest(NFTA_SET_ELEM_LIST_ELEMENTS);
        let e = buf.begin_nest(NFTA_LIST_ELEM);
        buf.put_data(NFTA_SET_ELEM_KEY, &[10, 1, 2, 3]);
        buf.put_be64(NFTA_SET_ELEM_TIMEOUT, 3_600_000);
        buf.put_be64(NFTA_SET_ELEM_EXPIRATION, 1_234_567);
        buf.put_be32(NFTA_SET_ELEM_FLAGS, 0);
        buf.put(99, &[1, 2, 3]); // unknown: skipped
        let x = buf.begin_nest(NFTA_SET_ELEM_EXPR);
        counter(&mut buf, "counter", 7, 420);
        buf.end_nest(x);
        buf.end_nest(e);
        let e = buf.begin_nest(NFTA_LIST_ELEM);
        let v6 = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
        buf.put_data(NFTA_SET_ELEM_KEY, &v6);
        let list = buf.begin_nest(NFTA_SET_ELEM_EXPRESSIONS);
        let x = buf.begin_nest(NFTA_LIST_ELEM);
        counter(&mut buf, "quota", 1000, 1000); // not a counter: ignored
        buf.end_nest(x);
        let x = buf.begin_nest(NFTA_LIST_ELEM);
        counter(&mut buf, "counter", 2, 120);
        buf.end_nest(x);
        buf.end_nest(list);
        buf.end_nest(e);
        buf.end_nest(n);
        buf.end_msg(m);
        buf.bytes().to_vec()
    }

    #[test]
    fn walker_parses_hand_made_dump() {
        let bytes = dump_message();
        let m = Messages::new(&bytes).next().unwrap().unwrap();
        let mut out = Vec::new();
        parse_dump(m.nft_attrs().unwrap(), &mut out).unwrap();
        let listed: Vec<Listed> = out.into_iter().map(Listed::from).collect();
        assert_eq!(
            listed,
            vec![
                Listed {
                    ip: "10.1.2.3".parse().unwrap(),
                    timeout: Some(Duration::from_secs(3600)),
                    expires: Some(Duration::from_millis(1_234_567)),
                },
                Listed {
                    ip: "2001:db8::9".parse().unwrap(),
                    timeout: None,
                    expires: None,
                },
            ]
        );
    }

    /// Every truncation and every single-byte corruption of a valid dump
    /// either parses or fails cleanly; none panics.
    #[test]
    fn malformed_dumps_never_panic() {
        let bytes = dump_message();
        let parse = |buf: &[u8]| {
            let mut out = Vec::new();
            for m in Messages::new(buf) {
                let Ok(m) = m else { return };
                let Ok(attrs) = m.nft_attrs() else { return };
                let _ = parse_dump(attrs, &mut out);
            }
        };
        for len in 0..bytes.len() {
            parse(&bytes[..len]);
        }
        let mut state = 0x2545_f491_u32;
        for i in 0..bytes.len() {
            for v in [0u8, 1, 3, 4, 0x7f, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] = v;
                parse(&b);
            }
            // and some pseudo-random garbage of growing length
            let garbage: Vec<u8> = (0..i)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    state as u8
                })
                .collect();
            parse(&garbage);
            let _ = Attrs::new(&garbage).count();
        }
        // A key of the wrong size is an error, not a panic.
        let mut buf = MsgBuf::new();
        put_elem(&mut buf, &[1, 2, 3], None);
        let mut out = Vec::new();
        let mut list = MsgBuf::new();
        list.put(NFTA_SET_ELEM_LIST_ELEMENTS, buf.bytes());
        assert!(parse_dump(Attrs::new(list.bytes()), &mut out).is_err());
    }

    #[test]
    fn a_full_message_of_ipv6_elements_fits() {
        let mut b = Batch::new(1);
        let ip: IpAddr = "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        let name = "x".repeat(64) + "_v6";
        push_message(
            &mut b,
            NFT_MSG_NEWSETELEM,
            &"t".repeat(64),
            &name,
            None,
            &mut (0..ELEMS_PER_MSG).map(|_| Wire::key(key_of(ip), Some((u64::MAX, u64::MAX)))),
            "step".into(),
        );
        assert!(b.len() < MAX_ELEM_MSG);
        assert!(b.buf().check().is_ok());
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// Parses what `prefix_wires` writes, as the kernel would list it.
    fn as_parsed(wires: &[Wire]) -> Vec<Parsed> {
        wires
            .iter()
            .map(|w| Parsed {
                ip: ip_of(&w.key).unwrap(),
                end: w.end,
                timeout: w.ttl.map(|t| Duration::from_millis(t.0)),
                expires: w.ttl.map(|t| Duration::from_millis(t.1)),
            })
            .collect()
    }

    #[test]
    fn prefixes_become_start_and_end_and_pair_back() {
        let w = prefix_wires(v6("2001:db8:1::"), 64, Some((60_000, 30_000)));
        assert_eq!(w.len(), 2);
        assert_eq!(
            w[0],
            Wire::key(v6("2001:db8:1::").octets().to_vec(), Some((60_000, 30_000)))
        );
        assert_eq!(w[1].key, v6("2001:db8:1:1::").octets().to_vec());
        assert!(w[1].end && w[1].ttl.is_none());
        // The top of the space has no end marker; ::/0 neither.
        assert_eq!(prefix_wires(v6("ffff::"), 16, None).len(), 1);
        assert_eq!(prefix_wires(v6("::"), 0, None).len(), 1);
        assert_eq!(prefix_wires(v6("2001:db8::1"), 128, None).len(), 2);

        // Listed in any order, with a stray end marker and a non-CIDR
        // interval (3 addresses) that are skipped.
        let mut all = Vec::new();
        for (a, p) in [("ffff::", 16), ("2001:db8:1::", 64), ("2001:db8::1", 128)] {
            all.extend(as_parsed(&prefix_wires(v6(a), p, Some((1000, 1000)))));
        }
        all.extend(as_parsed(&[
            Wire::key(v6("2001:db8:9::").octets().to_vec(), None),
            Wire {
                key: v6("2001:db8:9::3").octets().to_vec(),
                ttl: None,
                end: true,
            },
            Wire {
                key: v6("3000::").octets().to_vec(),
                ttl: None,
                end: true,
            },
        ]));
        all.reverse();
        let nets: Vec<IpNet> = pair_prefixes(all).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            nets,
            vec![
                net("2001:db8::1/128"),
                net("2001:db8:1::/64"),
                net("ffff::/16")
            ]
        );
        let whole = as_parsed(&prefix_wires(v6("::"), 0, None));
        assert_eq!(pair_prefixes(whole)[0].0, net("::/0"));
    }
}
