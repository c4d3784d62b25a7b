//! The netlink layer: a raw `NETLINK_NETFILTER` socket, an encoder for
//! nfnetlink messages and batches, and a walker for the kernel's replies.
//!
//! Everything is written against the kernel's uapi (`linux/netlink.h`,
//! `linux/netfilter/nfnetlink.h`, `linux/netfilter/nf_tables.h`); the
//! constants below carry the kernel's names so they can be checked against
//! those headers. Integers in netlink headers and attribute headers are in
//! host byte order; nf_tables attribute payloads are big-endian.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag};
use nix::sys::socket::{SockProtocol, SockType};
use nix::sys::time::TimeVal;

// linux/netlink.h
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP_INTR: u16 = 0x10;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLM_F_APPEND: u16 = 0x800;
pub(crate) const NLMSG_ERROR: u16 = 0x2;
pub(crate) const NLMSG_DONE: u16 = 0x3;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDRLEN: usize = 16;
const NLA_HDRLEN: usize = 4;

// linux/netfilter/nfnetlink.h
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
/// `enum nfnetlink_groups`: the nf_tables change notifications.
const NFNLGRP_NFTABLES: u32 = 7;
/// Size of `struct nfgenmsg`, which follows every nfnetlink header.
pub(crate) const NFGENMSG_LEN: usize = 4;

// linux/netfilter.h
pub(crate) const NFPROTO_UNSPEC: u8 = 0;
pub(crate) const NFPROTO_INET: u8 = 1;
pub(crate) const NFPROTO_IPV4: u8 = 2;
pub(crate) const NFPROTO_IPV6: u8 = 10;

// linux/netfilter/nf_tables.h: message types.
pub(crate) const NFT_MSG_NEWTABLE: u8 = 0;
pub(crate) const NFT_MSG_GETTABLE: u8 = 1;
pub(crate) const NFT_MSG_DELTABLE: u8 = 2;
pub(crate) const NFT_MSG_NEWCHAIN: u8 = 3;
pub(crate) const NFT_MSG_GETCHAIN: u8 = 4;
pub(crate) const NFT_MSG_DELCHAIN: u8 = 5;
pub(crate) const NFT_MSG_NEWRULE: u8 = 6;
pub(crate) const NFT_MSG_GETRULE: u8 = 7;
pub(crate) const NFT_MSG_DELRULE: u8 = 8;
pub(crate) const NFT_MSG_NEWSET: u8 = 9;
pub(crate) const NFT_MSG_GETSET: u8 = 10;
pub(crate) const NFT_MSG_DELSET: u8 = 11;
pub(crate) const NFT_MSG_NEWSETELEM: u8 = 12;
pub(crate) const NFT_MSG_GETSETELEM: u8 = 13;
pub(crate) const NFT_MSG_DELSETELEM: u8 = 14;
pub(crate) const NFT_MSG_NEWGEN: u8 = 15;
pub(crate) const NFT_MSG_GETGEN: u8 = 16;
pub(crate) const NFT_MSG_NEWOBJ: u8 = 18;
pub(crate) const NFT_MSG_GETOBJ: u8 = 19;
pub(crate) const NFT_MSG_DELOBJ: u8 = 20;

// linux/netfilter/nf_tables.h: attributes.
pub(crate) const NFTA_TABLE_NAME: u16 = 1;
pub(crate) const NFTA_CHAIN_TABLE: u16 = 1;
pub(crate) const NFTA_CHAIN_NAME: u16 = 3;
pub(crate) const NFTA_CHAIN_HOOK: u16 = 4;
pub(crate) const NFTA_CHAIN_POLICY: u16 = 5;
pub(crate) const NFTA_CHAIN_TYPE: u16 = 7;
pub(crate) const NFTA_HOOK_HOOKNUM: u16 = 1;
pub(crate) const NFTA_HOOK_PRIORITY: u16 = 2;
pub(crate) const NFTA_RULE_TABLE: u16 = 1;
pub(crate) const NFTA_RULE_CHAIN: u16 = 2;
pub(crate) const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub(crate) const NFTA_LIST_ELEM: u16 = 1;
pub(crate) const NFTA_EXPR_NAME: u16 = 1;
pub(crate) const NFTA_EXPR_DATA: u16 = 2;
pub(crate) const NFTA_DATA_VALUE: u16 = 1;
pub(crate) const NFTA_META_DREG: u16 = 1;
pub(crate) const NFTA_META_KEY: u16 = 2;
pub(crate) const NFTA_CMP_SREG: u16 = 1;
pub(crate) const NFTA_CMP_OP: u16 = 2;
pub(crate) const NFTA_CMP_DATA: u16 = 3;
pub(crate) const NFTA_PAYLOAD_DREG: u16 = 1;
pub(crate) const NFTA_PAYLOAD_BASE: u16 = 2;
pub(crate) const NFTA_PAYLOAD_OFFSET: u16 = 3;
pub(crate) const NFTA_PAYLOAD_LEN: u16 = 4;
pub(crate) const NFTA_LOOKUP_SET: u16 = 1;
pub(crate) const NFTA_LOOKUP_SREG: u16 = 2;
pub(crate) const NFTA_LOOKUP_SET_ID: u16 = 4;
pub(crate) const NFTA_RANGE_SREG: u16 = 1;
pub(crate) const NFTA_RANGE_OP: u16 = 2;
pub(crate) const NFTA_RANGE_FROM_DATA: u16 = 3;
pub(crate) const NFTA_RANGE_TO_DATA: u16 = 4;
pub(crate) const NFTA_REJECT_TYPE: u16 = 1;
pub(crate) const NFTA_REJECT_ICMP_CODE: u16 = 2;
pub(crate) const NFTA_SET_TABLE: u16 = 1;
pub(crate) const NFTA_SET_NAME: u16 = 2;
pub(crate) const NFTA_SET_FLAGS: u16 = 3;
pub(crate) const NFTA_SET_KEY_TYPE: u16 = 4;
pub(crate) const NFTA_SET_KEY_LEN: u16 = 5;
pub(crate) const NFTA_SET_ID: u16 = 10;
pub(crate) const NFTA_SET_EXPR: u16 = 17;
pub(crate) const NFTA_SET_EXPRESSIONS: u16 = 18;
pub(crate) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(crate) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(crate) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub(crate) const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
pub(crate) const NFTA_SET_ELEM_KEY: u16 = 1;
pub(crate) const NFTA_SET_ELEM_FLAGS: u16 = 3;
pub(crate) const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
pub(crate) const NFTA_SET_ELEM_EXPIRATION: u16 = 5;
#[cfg(test)]
pub(crate) const NFTA_SET_ELEM_EXPR: u16 = 7;
#[cfg(test)]
pub(crate) const NFTA_SET_ELEM_EXPRESSIONS: u16 = 11;
pub(crate) const NFTA_COUNTER_BYTES: u16 = 1;
pub(crate) const NFTA_COUNTER_PACKETS: u16 = 2;
pub(crate) const NFTA_OBJ_TABLE: u16 = 1;
pub(crate) const NFTA_OBJ_NAME: u16 = 2;
pub(crate) const NFTA_OBJ_TYPE: u16 = 3;
pub(crate) const NFTA_OBJ_DATA: u16 = 4;
pub(crate) const NFTA_OBJREF_IMM_TYPE: u16 = 1;
pub(crate) const NFTA_OBJREF_IMM_NAME: u16 = 2;

// linux/netfilter/nf_tables.h: values.
pub(crate) const NFT_SET_ANONYMOUS: u32 = 0x1;
pub(crate) const NFT_SET_CONSTANT: u32 = 0x2;
pub(crate) const NFT_SET_INTERVAL: u32 = 0x4;
pub(crate) const NFT_SET_TIMEOUT: u32 = 0x10;
pub(crate) const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
pub(crate) const NFT_REG_1: u32 = 1;
pub(crate) const NFT_META_NFPROTO: u32 = 15;
pub(crate) const NFT_META_L4PROTO: u32 = 16;
pub(crate) const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub(crate) const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
pub(crate) const NFT_CMP_EQ: u32 = 0;
pub(crate) const NFT_RANGE_EQ: u32 = 0;
pub(crate) const NFT_REJECT_TCP_RST: u32 = 1;
pub(crate) const NFT_REJECT_ICMPX_UNREACH: u32 = 2;
pub(crate) const NFT_REJECT_ICMPX_PORT_UNREACH: u8 = 1;
pub(crate) const NF_INET_LOCAL_IN: u32 = 1;
pub(crate) const NF_ACCEPT: u32 = 1;
pub(crate) const NFT_OBJECT_COUNTER: u32 = 1;

/// Socket buffer size asked for, as nft does: large batches and the
/// kernel's replies to them must fit.
const SOCKET_BUFFER: usize = 8 << 20;
/// Receive buffer for one datagram; the kernel caps dump datagrams at
/// 32 KiB, and error replies echo at most one of our messages (< 64 KiB).
const RECV_BUFFER: usize = 256 << 10;
/// How long to wait for a reply the kernel owes us before giving up.
const REPLY_TIMEOUT_SECS: i64 = 10;
/// How often an interrupted dump (the ruleset changed meanwhile) is retried.
const DUMP_ATTEMPTS: usize = 5;

/// Rounds up to netlink's 4-byte alignment.
pub(crate) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The nfnetlink message type of an nf_tables message.
fn nft_type(msg: u8) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | u16::from(msg)
}

/// Whether a reply's message type is the given nf_tables message.
pub(crate) fn is_nft(ty: u16, msg: u8) -> bool {
    ty == nft_type(msg)
}

/// A growable buffer of netlink messages under construction.
///
/// Length fields that do not fit (an attribute over 64 KiB) do not panic:
/// they set `overflow`, which [`MsgBuf::check`] reports.
#[derive(Default)]
pub(crate) struct MsgBuf {
    buf: Vec<u8>,
    overflow: bool,
}

impl MsgBuf {
    /// An empty buffer.
    pub(crate) fn new() -> MsgBuf {
        MsgBuf::default()
    }

    /// The bytes written so far.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes written so far.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Fails if some length did not fit its field.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        if self.overflow {
            Err("a netlink attribute or message exceeds its length field")
        } else {
            Ok(())
        }
    }

    fn pad(&mut self) {
        let n = align4(self.buf.len());
        self.buf.resize(n, 0);
    }

    /// Starts a message with its nlmsghdr and nfgenmsg; returns its offset
    /// for [`MsgBuf::end_msg`].
    pub(crate) fn begin_msg(
        &mut self,
        ty: u16,
        flags: u16,
        seq: u32,
        family: u8,
        res_id: u16,
    ) -> usize {
        self.pad();
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, patched later
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
        self.buf.push(family); // nfgen_family
        self.buf.push(0); // version: NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    /// Starts an nf_tables message.
    pub(crate) fn begin_nft(&mut self, msg: u8, flags: u16, seq: u32, family: u8) -> usize {
        self.begin_msg(nft_type(msg), flags, seq, family, 0)
    }

    /// Finishes the message started at `start` by patching its length.
    pub(crate) fn end_msg(&mut self, start: usize) {
        self.pad();
        let len = self.buf.len() - start;
        let len = u32::try_from(len).unwrap_or_else(|_| {
            self.overflow = true;
            0
        });
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// Appends one attribute with a raw payload.
    pub(crate) fn put(&mut self, ty: u16, data: &[u8]) {
        self.pad();
        let len = u16::try_from(NLA_HDRLEN + data.len()).unwrap_or_else(|_| {
            self.overflow = true;
            0
        });
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
    }

    /// Appends a NUL-terminated string attribute.
    pub(crate) fn put_str(&mut self, ty: u16, s: &str) {
        let mut data = Vec::with_capacity(s.len() + 1);
        data.extend_from_slice(s.as_bytes());
        data.push(0);
        self.put(ty, &data);
    }

    /// Appends a big-endian u32 attribute.
    pub(crate) fn put_be32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_be_bytes());
    }

    /// Appends a big-endian u64 attribute.
    pub(crate) fn put_be64(&mut self, ty: u16, v: u64) {
        self.put(ty, &v.to_be_bytes());
    }

    /// Sets the `nlmsg_pid` of the message started at `start`, as the
    /// kernel fills it in notifications; for tests.
    #[cfg(test)]
    pub(crate) fn set_pid_for_test(&mut self, start: usize, pid: u32) {
        if let Some(b) = self.buf.get_mut(start + 12..start + 16) {
            b.copy_from_slice(&pid.to_ne_bytes());
        }
    }

    /// Opens a nested attribute; returns its offset for [`MsgBuf::end_nest`].
    pub(crate) fn begin_nest(&mut self, ty: u16) -> usize {
        self.pad();
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        start
    }

    /// Closes the nested attribute opened at `start`.
    pub(crate) fn end_nest(&mut self, start: usize) {
        let len = u16::try_from(self.buf.len() - start).unwrap_or_else(|_| {
            self.overflow = true;
            0
        });
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// Appends a nested attribute holding one `NFTA_DATA_VALUE`.
    pub(crate) fn put_data(&mut self, ty: u16, value: &[u8]) {
        let n = self.begin_nest(ty);
        self.put(NFTA_DATA_VALUE, value);
        self.end_nest(n);
    }
}

/// A transaction under construction: BATCH_BEGIN, nf_tables messages each
/// with a human description of its step, BATCH_END.
pub(crate) struct Batch {
    buf: MsgBuf,
    first_seq: u32,
    steps: Vec<String>,
}

impl Batch {
    /// Starts a batch whose BATCH_BEGIN carries `first_seq`.
    pub(crate) fn new(first_seq: u32) -> Batch {
        let mut buf = MsgBuf::new();
        let b = buf.begin_msg(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            first_seq,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        );
        buf.end_msg(b);
        Batch {
            buf,
            first_seq,
            steps: Vec::new(),
        }
    }

    /// Starts an nf_tables message; `step` names it in errors. The caller
    /// writes attributes into [`Batch::buf`] and calls [`Batch::end`].
    pub(crate) fn begin(&mut self, msg: u8, flags: u16, family: u8, step: String) -> usize {
        let seq = self.seq_of(self.steps.len());
        self.steps.push(step);
        self.buf
            .begin_nft(msg, flags | NLM_F_REQUEST | NLM_F_ACK, seq, family)
    }

    /// Finishes the message started at `start`.
    pub(crate) fn end(&mut self, start: usize) {
        self.buf.end_msg(start);
    }

    /// The buffer to write attributes into.
    pub(crate) fn buf(&mut self) -> &mut MsgBuf {
        &mut self.buf
    }

    /// Number of nf_tables messages so far.
    pub(crate) fn messages(&self) -> usize {
        self.steps.len()
    }

    /// Encoded size so far, in bytes.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// The description of message `i`.
    pub(crate) fn step(&self, i: usize) -> &str {
        self.steps.get(i).map_or("", String::as_str)
    }

    fn seq_of(&self, i: usize) -> u32 {
        // Message i has sequence number first_seq + 1 + i (wrapping).
        self.first_seq.wrapping_add(1).wrapping_add(i as u32)
    }

    /// Appends BATCH_END and returns the wire bytes.
    fn finish(&mut self) -> Result<Vec<u8>, &'static str> {
        let seq = self.seq_of(self.steps.len());
        let e = self.buf.begin_msg(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            seq,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        );
        self.buf.end_msg(e);
        self.buf.check()?;
        Ok(std::mem::take(&mut self.buf.buf))
    }

    /// The wire bytes, for tests.
    #[cfg(test)]
    pub(crate) fn finish_for_test(&mut self) -> Vec<u8> {
        self.finish().unwrap_or_default()
    }

    /// Sequence numbers the batch uses, BATCH_BEGIN and BATCH_END included.
    fn seq_count(&self) -> u32 {
        self.steps.len() as u32 + 2
    }
}

/// How a batch failed.
#[derive(Debug)]
pub(crate) enum BatchError {
    /// The socket itself failed (`step` says where).
    Io(&'static str, Errno),
    /// The kernel rejected one or more messages; `None` stands for the
    /// batch as a whole (an error addressed to BATCH_BEGIN, e.g. a failed
    /// commit). Ordered by sequence number.
    Rejected(Vec<(Option<usize>, Errno)>),
    /// A reply could not be parsed, or never came.
    Protocol(String),
}

/// How a dump or a single request failed.
#[derive(Debug)]
pub(crate) enum RequestError {
    /// The socket failed, or the kernel answered with an errno.
    Errno(Errno),
    /// A reply could not be parsed, or never came.
    Protocol(String),
}

/// A malformed buffer from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) &'static str);

/// One netlink message found in a datagram.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NlMsg<'a> {
    /// nlmsg_type.
    pub(crate) ty: u16,
    /// nlmsg_flags.
    pub(crate) flags: u16,
    /// nlmsg_seq.
    pub(crate) seq: u32,
    /// nlmsg_pid: in notifications, the port of the socket whose request
    /// caused the change (0 for the kernel itself).
    pub(crate) pid: u32,
    /// Everything after the 16-byte header.
    pub(crate) payload: &'a [u8],
}

impl<'a> NlMsg<'a> {
    /// For NLMSG_ERROR and NLMSG_DONE: the errno carried (0 = success).
    pub(crate) fn error_code(&self) -> Result<i32, Malformed> {
        let b = self
            .payload
            .get(..4)
            .ok_or(Malformed("netlink error message too short"))?;
        Ok(i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// For nfnetlink messages: the attributes after the nfgenmsg.
    pub(crate) fn nft_attrs(&self) -> Result<Attrs<'a>, Malformed> {
        self.payload
            .get(NFGENMSG_LEN..)
            .map(Attrs::new)
            .ok_or(Malformed("nfnetlink message too short"))
    }
}

/// Iterator over the netlink messages in one datagram.
pub(crate) struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Messages<'a> {
    /// Walks `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Messages<'a> {
        Messages { rest: buf }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<NlMsg<'a>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        let r = self.rest;
        if r.is_empty() {
            return None;
        }
        if r.len() < NLMSG_HDRLEN {
            self.rest = &[];
            return Some(Err(Malformed("netlink header truncated")));
        }
        let len = u32::from_ne_bytes([r[0], r[1], r[2], r[3]]) as usize;
        if len < NLMSG_HDRLEN || len > r.len() {
            self.rest = &[];
            return Some(Err(Malformed("netlink message length out of bounds")));
        }
        let msg = NlMsg {
            ty: u16::from_ne_bytes([r[4], r[5]]),
            flags: u16::from_ne_bytes([r[6], r[7]]),
            seq: u32::from_ne_bytes([r[8], r[9], r[10], r[11]]),
            pid: u32::from_ne_bytes([r[12], r[13], r[14], r[15]]),
            payload: &r[NLMSG_HDRLEN..len],
        };
        self.rest = r.get(align4(len)..).unwrap_or(&[]);
        Some(Ok(msg))
    }
}

/// Iterator over netlink attributes: yields (type without flag bits,
/// payload). After a malformed attribute it yields one error and stops.
#[derive(Clone)]
pub(crate) struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Attrs<'a> {
    /// Walks the attributes packed in `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Attrs<'a> {
        Attrs { rest: buf }
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        let r = self.rest;
        if r.is_empty() {
            return None;
        }
        if r.len() < NLA_HDRLEN {
            self.rest = &[];
            return Some(Err(Malformed("attribute header truncated")));
        }
        let len = usize::from(u16::from_ne_bytes([r[0], r[1]]));
        let ty = u16::from_ne_bytes([r[2], r[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > r.len() {
            self.rest = &[];
            return Some(Err(Malformed("attribute length out of bounds")));
        }
        self.rest = r.get(align4(len)..).unwrap_or(&[]);
        Some(Ok((ty, &r[NLA_HDRLEN..len])))
    }
}

/// Reads a big-endian u64 attribute payload.
pub(crate) fn be64(data: &[u8]) -> Result<u64, Malformed> {
    let b: [u8; 8] = data
        .try_into()
        .map_err(|_| Malformed("64-bit attribute of wrong size"))?;
    Ok(u64::from_be_bytes(b))
}

/// Reads a big-endian u32 attribute payload.
pub(crate) fn be32(data: &[u8]) -> Result<u32, Malformed> {
    let b: [u8; 4] = data
        .try_into()
        .map_err(|_| Malformed("32-bit attribute of wrong size"))?;
    Ok(u32::from_be_bytes(b))
}

/// Reads a NUL-terminated string attribute payload.
pub(crate) fn string(data: &[u8]) -> Result<&str, Malformed> {
    let s = data.split(|b| *b == 0).next().unwrap_or(&[]);
    std::str::from_utf8(s).map_err(|_| Malformed("string attribute is not UTF-8"))
}

/// The long-lived `NETLINK_NETFILTER` socket and its sequence counter.
pub(crate) struct Socket {
    fd: OwnedFd,
    seq: u32,
    recv: Vec<u8>,
    send_limit: usize,
}

impl Socket {
    /// Opens and binds the socket and sizes its buffers. On failure,
    /// returns the step and the errno.
    pub(crate) fn open() -> Result<Socket, (&'static str, Errno)> {
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(|e| ("opening a NETLINK_NETFILTER socket", e))?;
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))
            .map_err(|e| ("binding the netlink socket", e))?;
        // The FORCE variants need CAP_NET_ADMIN in the initial namespace;
        // without it, take what rmem_max/wmem_max allow.
        if socket::setsockopt(&fd, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
            let _ = socket::setsockopt(&fd, sockopt::SndBuf, &SOCKET_BUFFER);
        }
        if socket::setsockopt(&fd, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
            let _ = socket::setsockopt(&fd, sockopt::RcvBuf, &SOCKET_BUFFER);
        }
        let timeout = TimeVal::new(REPLY_TIMEOUT_SECS, 0);
        socket::setsockopt(&fd, sockopt::ReceiveTimeout, &timeout)
            .map_err(|e| ("setting the netlink receive timeout", e))?;
        // The kernel refuses messages longer than sk_sndbuf - 32 (EMSGSIZE);
        // getsockopt reports sk_sndbuf. Keep a margin.
        let sndbuf = socket::getsockopt(&fd, sockopt::SndBuf).unwrap_or(212_992);
        let send_limit = sndbuf.saturating_sub(4096).max(64 << 10);
        Ok(Socket {
            fd,
            seq: 1,
            recv: vec![0; RECV_BUFFER],
            send_limit,
        })
    }

    /// The port id the kernel gave the socket when it was bound; the
    /// change notifications its batches cause carry it as `nlmsg_pid`.
    pub(crate) fn portid(&self) -> Result<u32, Errno> {
        let addr: NetlinkAddr = socket::getsockname(self.fd.as_raw_fd())?;
        Ok(addr.pid())
    }

    /// Lowers the batch size limit, for tests.
    #[cfg(test)]
    pub(crate) fn set_send_limit_for_test(&mut self, limit: usize) {
        self.send_limit = limit;
    }

    /// The next sequence number, for tests.
    #[cfg(test)]
    pub(crate) fn seq_for_test(&self) -> u32 {
        self.seq
    }

    /// Largest batch, in bytes, the socket accepts in one send.
    pub(crate) fn send_limit(&self) -> usize {
        self.send_limit
    }

    /// Starts a batch numbered from the socket's sequence counter.
    pub(crate) fn batch(&self) -> Batch {
        Batch::new(self.seq)
    }

    fn take_seq(&mut self, n: u32) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(n);
        s
    }

    fn send_all(&self, bytes: &[u8]) -> Result<(), Errno> {
        // A netlink datagram is taken whole or refused; no partial sends.
        let n = socket::send(self.fd.as_raw_fd(), bytes, MsgFlags::empty())?;
        if n != bytes.len() {
            return Err(Errno::EMSGSIZE);
        }
        Ok(())
    }

    /// Receives one datagram; returns its length in `self.recv`.
    fn recv_one(&mut self, flags: MsgFlags) -> Result<usize, RecvError> {
        match socket::recv(
            self.fd.as_raw_fd(),
            &mut self.recv,
            flags | MsgFlags::MSG_TRUNC,
        ) {
            Ok(n) if n > self.recv.len() => Err(RecvError::Truncated),
            Ok(n) => Ok(n),
            Err(e) => Err(RecvError::Errno(e)),
        }
    }

    /// Sends a batch and collects one acknowledgement per message. Succeeds
    /// only if every message was acknowledged with 0.
    pub(crate) fn run_batch(&mut self, batch: &mut Batch) -> Result<(), BatchError> {
        let n = batch.messages();
        let first = batch.first_seq;
        let count = batch.seq_count();
        let bytes = batch.finish().map_err(|e| BatchError::Protocol(e.into()))?;
        // Whatever happens, these sequence numbers are spent.
        self.seq = first.wrapping_add(count);
        self.send_all(&bytes)
            .map_err(|e| BatchError::Io("sending the batch", e))?;
        let mut acked = vec![false; n];
        let mut missing = n;
        let mut failures: Vec<(Option<usize>, Errno)> = Vec::new();
        // The kernel handles the whole batch inside send(), so all replies
        // are queued by now. Wait for them with a timeout anyway; once an
        // error has arrived, only drain what is already queued (an early
        // abort may leave messages unanswered).
        while missing > 0 {
            let flags = if failures.is_empty() {
                MsgFlags::empty()
            } else {
                MsgFlags::MSG_DONTWAIT
            };
            let len = match self.recv_one(flags) {
                Ok(len) => len,
                Err(RecvError::Errno(Errno::EAGAIN)) if !failures.is_empty() => break,
                Err(RecvError::Errno(Errno::EAGAIN)) => {
                    return Err(BatchError::Protocol(format!(
                        "no acknowledgement for {missing} of {n} messages"
                    )))
                }
                Err(RecvError::Errno(e)) => {
                    return Err(BatchError::Io("receiving acknowledgements", e))
                }
                Err(RecvError::Truncated) => {
                    return Err(BatchError::Protocol("reply larger than the buffer".into()))
                }
            };
            for m in Messages::new(&self.recv[..len]) {
                let m = m.map_err(|e| BatchError::Protocol(e.0.into()))?;
                if m.ty != NLMSG_ERROR {
                    continue;
                }
                let offset = m.seq.wrapping_sub(first);
                if offset >= count {
                    continue; // a stale reply to an earlier request
                }
                let code = m
                    .error_code()
                    .map_err(|e| BatchError::Protocol(e.0.into()))?;
                let index = (offset as usize).checked_sub(1).filter(|i| *i < n);
                match index {
                    Some(i) if !acked[i] => {
                        acked[i] = true;
                        missing -= 1;
                    }
                    Some(_) => {}
                    None if code == 0 => {}
                    None => missing = 0, // the whole batch failed: nothing more comes
                }
                if code != 0 {
                    failures.push((index, Errno::from_raw(code.saturating_neg())));
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            failures.sort_by_key(|(i, _)| i.map_or(0, |i| i + 1));
            Err(BatchError::Rejected(failures))
        }
    }

    /// Sends one request (`encode` writes its attributes) and hands each
    /// reply message of type `reply` to `on_reply`. A dump ends at
    /// NLMSG_DONE; a plain request is sent with NLM_F_ACK and ends at its
    /// acknowledgement. An interrupted dump (the ruleset changed meanwhile)
    /// is retried from scratch; `on_reply(None)` announces each attempt.
    pub(crate) fn request(
        &mut self,
        msg: u8,
        family: u8,
        dump: bool,
        encode: &dyn Fn(&mut MsgBuf),
        reply: u8,
        on_reply: &mut dyn FnMut(Option<NlMsg<'_>>) -> Result<(), Malformed>,
    ) -> Result<(), RequestError> {
        for _ in 0..DUMP_ATTEMPTS {
            on_reply(None).map_err(|e| RequestError::Protocol(e.0.into()))?;
            let seq = self.take_seq(1);
            let mut buf = MsgBuf::new();
            let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
            let m = buf.begin_nft(msg, flags, seq, family);
            encode(&mut buf);
            buf.end_msg(m);
            buf.check()
                .map_err(|e| RequestError::Protocol(e.to_string()))?;
            self.send_all(buf.bytes()).map_err(RequestError::Errno)?;
            let mut interrupted = false;
            // After a failure, keep reading to the end of the reply: an
            // unfinished dump would make the next one fail with EBUSY.
            let mut failed: Option<RequestError> = None;
            'recv: loop {
                let len = match self.recv_one(MsgFlags::empty()) {
                    Ok(len) => len,
                    Err(RecvError::Errno(Errno::EAGAIN)) => {
                        return Err(failed.unwrap_or_else(|| {
                            RequestError::Protocol("no reply from the kernel".into())
                        }))
                    }
                    Err(RecvError::Errno(e)) => return Err(RequestError::Errno(e)),
                    Err(RecvError::Truncated) => {
                        return Err(RequestError::Protocol(
                            "reply larger than the buffer".into(),
                        ))
                    }
                };
                for m in Messages::new(&self.recv[..len]) {
                    let m = match m {
                        Ok(m) => m,
                        Err(e) => {
                            failed.get_or_insert(RequestError::Protocol(e.0.into()));
                            break;
                        }
                    };
                    if m.seq != seq {
                        continue;
                    }
                    if m.flags & NLM_F_DUMP_INTR != 0 {
                        interrupted = true;
                    }
                    if m.ty == NLMSG_ERROR || m.ty == NLMSG_DONE {
                        match m.error_code() {
                            Ok(0) => {}
                            Ok(code) => {
                                failed.get_or_insert(RequestError::Errno(Errno::from_raw(
                                    code.saturating_neg(),
                                )));
                            }
                            Err(e) => {
                                failed.get_or_insert(RequestError::Protocol(e.0.into()));
                            }
                        }
                        break 'recv;
                    }
                    if failed.is_none() && !interrupted && is_nft(m.ty, reply) {
                        if let Err(e) = on_reply(Some(m)) {
                            failed = Some(RequestError::Protocol(e.0.into()));
                        }
                    }
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
            if !interrupted {
                return Ok(());
            }
        }
        Err(RequestError::Errno(Errno::EINTR))
    }
}

/// A non-blocking `NETLINK_NETFILTER` socket subscribed to the nf_tables
/// change notifications (multicast group NFNLGRP_NFTABLES).
pub(crate) struct Listener {
    fd: OwnedFd,
    recv: Vec<u8>,
}

// linux/filter.h: classic BPF opcodes for the socket filter.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;

impl Listener {
    /// Opens the socket and joins the group. A socket filter drops in the
    /// kernel every notification caused by one of `ignore_ports` (one
    /// transaction's notifications share one port id, and the kernel packs
    /// them into datagrams of one transaction only), so banjo's own bulk
    /// bans never fill the receive buffer.
    pub(crate) fn open(ignore_ports: &[u32]) -> Result<Listener, (&'static str, Errno)> {
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(|e| ("opening a NETLINK_NETFILTER socket for notifications", e))?;
        if !ignore_ports.is_empty() {
            attach_port_filter(&fd, ignore_ports)
                .map_err(|e| ("attaching the notification socket filter", e))?;
        }
        if socket::setsockopt(&fd, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
            let _ = socket::setsockopt(&fd, sockopt::RcvBuf, &SOCKET_BUFFER);
        }
        // Joining a group at bind time takes a bitmask of groups 1..=32.
        socket::bind(
            fd.as_raw_fd(),
            &NetlinkAddr::new(0, 1 << (NFNLGRP_NFTABLES - 1)),
        )
        .map_err(|e| ("joining the nf_tables notification group", e))?;
        Ok(Listener {
            fd,
            recv: vec![0; RECV_BUFFER],
        })
    }

    /// Receives one pending datagram: `Ok(None)` when none is pending,
    /// `Err(ENOBUFS)` when the kernel had to drop notifications.
    pub(crate) fn recv(&mut self) -> Result<Option<&[u8]>, Errno> {
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC;
        match socket::recv(self.fd.as_raw_fd(), &mut self.recv, flags) {
            // A notification is at most a page or two; a longer one was
            // cut short, which is as good as lost.
            Ok(n) if n > self.recv.len() => Err(Errno::ENOBUFS),
            Ok(n) => Ok(self.recv.get(..n)),
            Err(Errno::EAGAIN) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Shrinks the receive buffer, for tests of the overrun path.
    #[cfg(test)]
    pub(crate) fn set_rcvbuf_for_test(&self, bytes: usize) {
        let _ = socket::setsockopt(&self.fd, sockopt::RcvBufForce, &bytes);
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Attaches a classic BPF filter that drops datagrams whose first
/// `nlmsg_pid` is one of `ports`. BPF loads are big-endian while netlink
/// headers are in host order, hence the byte swap of the constants.
fn attach_port_filter(fd: &OwnedFd, ports: &[u32]) -> Result<(), Errno> {
    let n = u8::try_from(ports.len()).map_err(|_| Errno::EINVAL)?;
    let stmt = |code, k| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    // A = nlmsg_pid (offset 12 of struct nlmsghdr)
    let mut program = vec![stmt(BPF_LD_W_ABS, 12)];
    // if A == ports[i] goto drop (past the remaining tests and accept)
    for (i, port) in (0u8..).zip(ports) {
        program.push(libc::sock_filter {
            code: BPF_JMP_JEQ_K,
            jt: n - i,
            jf: 0,
            k: u32::from_be_bytes(port.to_ne_bytes()),
        });
    }
    program.push(stmt(BPF_RET_K, u32::MAX)); // accept
    program.push(stmt(BPF_RET_K, 0)); // drop
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `prog` points to `program`, which outlives the call; the
    // kernel copies the filter and checks the option length.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            std::ptr::addr_of!(prog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}

enum RecvError {
    Errno(Errno),
    Truncated,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_layout() {
        let mut b = Batch::new(7);
        let m = b.begin(NFT_MSG_NEWTABLE, NLM_F_CREATE, NFPROTO_INET, "t".into());
        b.buf().put_str(NFTA_TABLE_NAME, "ab");
        b.end(m);
        let bytes = b.finish().unwrap_or_default();
        let msgs: Vec<_> = Messages::new(&bytes).collect();
        assert_eq!(msgs.len(), 3);
        let begin = msgs[0].clone().unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(begin.ty, 0x10);
        assert_eq!(begin.seq, 7);
        // nfgenmsg: family 0, version 0, res_id = htons(10)
        assert_eq!(begin.payload, &[0, 0, 0, 10]);
        let table = msgs[1].clone().unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(table.ty, 10 << 8);
        assert_eq!(table.seq, 8);
        assert_eq!(table.flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE);
        // nfgenmsg (inet), then NFTA_TABLE_NAME "ab\0" padded to 8 bytes.
        let mut want = vec![1u8, 0, 0, 0];
        want.extend_from_slice(&7u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(b"ab\0\0");
        assert_eq!(table.payload, &want[..]);
        let end = msgs[2].clone().unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((end.ty, end.seq), (0x11, 9));
        assert_eq!(bytes.len(), 20 + 28 + 20);
    }

    #[test]
    fn nested_overflow_is_reported_not_panicking() {
        let mut b = MsgBuf::new();
        let m = b.begin_nft(NFT_MSG_NEWSETELEM, 0, 1, NFPROTO_INET);
        let n = b.begin_nest(NFTA_SET_ELEM_LIST_ELEMENTS);
        for _ in 0..20_000 {
            b.put(NFTA_DATA_VALUE, &[0; 4]);
        }
        b.end_nest(n);
        b.end_msg(m);
        assert!(b.check().is_err());
        let mut b = MsgBuf::new();
        b.put(1, &vec![0; 70_000]);
        assert!(b.check().is_err());
    }

    #[test]
    fn walker_flags_and_padding() {
        let mut b = MsgBuf::new();
        let n = b.begin_nest(3);
        b.put(1, &[9]);
        b.put_be32(2, 0x0102_0304);
        b.end_nest(n);
        b.put_str(5, "x");
        let attrs: Vec<_> = Attrs::new(b.bytes()).collect();
        assert_eq!(attrs.len(), 2);
        let (ty, inner) = attrs[0].clone().unwrap_or((0, &[]));
        assert_eq!(ty, 3); // NLA_F_NESTED stripped
        let inner: Vec<_> = Attrs::new(inner).filter_map(Result::ok).collect();
        assert_eq!(inner, vec![(1, &[9u8][..]), (2, &[1u8, 2, 3, 4][..])]);
        assert_eq!(attrs[1], Ok((5, &b"x\0"[..])));
    }

    #[test]
    fn walker_rejects_bad_lengths() {
        // Length shorter than the header, length past the end, short header.
        for buf in [&[2u8, 0, 1, 0][..], &[9, 0, 1, 0, 0], &[8, 0]] {
            let v: Vec<_> = Attrs::new(buf).collect();
            assert_eq!(v.len(), 1);
            assert!(v[0].is_err());
        }
        let v: Vec<_> = Messages::new(&[20, 0, 0, 0, 0, 0]).collect();
        assert!(v.len() == 1 && v[0].is_err());
        assert!(be64(&[0; 7]).is_err());
        assert!(be32(&[0; 5]).is_err());
    }
}
