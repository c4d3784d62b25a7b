//! Set elements on the wire: NEWSETELEM/DELSETELEM encoding with
//! per-element TIMEOUT and EXPIRATION, and the parser for GETSETELEM dumps.

use std::net::IpAddr;
use std::time::Duration;

use super::netlink::{
    be64, Attrs, Batch, Malformed, MsgBuf, NFPROTO_INET, NFTA_DATA_VALUE, NFTA_LIST_ELEM,
    NFTA_SET_ELEM_EXPIRATION, NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_LIST_ELEMENTS,
    NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_SET_ID, NFTA_SET_ELEM_LIST_TABLE,
    NFTA_SET_ELEM_TIMEOUT, NFT_MSG_NEWSETELEM, NLM_F_CREATE,
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

/// Writes one element (an `NFTA_LIST_ELEM`) with key and optional timeouts.
pub(crate) fn put_elem(buf: &mut MsgBuf, key: &[u8], ttl: Option<(u64, u64)>) {
    let e = buf.begin_nest(NFTA_LIST_ELEM);
    buf.put_data(NFTA_SET_ELEM_KEY, key);
    if let Some((timeout, expiration)) = ttl {
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
    keys: &mut dyn Iterator<Item = (Vec<u8>, Option<(u64, u64)>)>,
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
    for (key, ttl) in keys {
        put_elem(buf, &key, ttl);
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

/// Parses the attributes of one NEWSETELEM dump message into `out`.
pub(crate) fn parse_dump(attrs: Attrs<'_>, out: &mut Vec<Listed>) -> Result<(), Malformed> {
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

fn parse_elem(data: &[u8]) -> Result<Listed, Malformed> {
    let mut ip = None;
    let mut timeout = None;
    let mut expires = None;
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
            NFTA_SET_ELEM_TIMEOUT => timeout = Some(be64(data)?),
            NFTA_SET_ELEM_EXPIRATION => expires = Some(be64(data)?),
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
    Ok(Listed {
        ip,
        timeout,
        expires,
    })
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
    use super::super::netlink::{Messages, NFT_MSG_DELSETELEM, NLM_F_ACK, NLM_F_REQUEST};
    use super::*;

    fn ne16(v: u16) -> [u8; 2] {
        v.to_ne_bytes()
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
            &mut std::iter::once((key_of(ip), Some((600_000, 30_000)))),
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
            &mut std::iter::once((key_of(ip), None)),
            "step".into(),
        );
        let bytes = b.finish_for_test();
        let m = Messages::new(&bytes).nth(1).unwrap().unwrap();
        assert_eq!(m.flags, NLM_F_REQUEST | NLM_F_ACK);
        let mut out = Vec::new();
        parse_dump(m.nft_attrs().unwrap(), &mut out).unwrap();
        assert_eq!(
            out,
            vec![Listed {
                ip,
                timeout: None,
                expires: None
            }]
        );
    }

    /// A hand-made dump message: one IPv4 element with TIMEOUT and
    /// EXPIRATION, one IPv6 element with neither, plus an attribute the
    /// parser must skip.
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
        buf.put_be32(3, 0); // NFTA_SET_ELEM_FLAGS: ignored
        buf.end_nest(e);
        put_elem(
            &mut buf,
            &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
            None,
        );
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
        assert_eq!(
            out,
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
            &mut (0..ELEMS_PER_MSG).map(|_| (key_of(ip), Some((u64::MAX, u64::MAX)))),
            "step".into(),
        );
        assert!(b.len() < MAX_ELEM_MSG);
        assert!(b.buf().check().is_ok());
    }
}
