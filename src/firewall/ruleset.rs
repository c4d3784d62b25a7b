//! The table, the per-jail sets and counter, the `input` chain and its
//! rules, encoded as nf_tables messages for the setup batch.
//!
//! Per jail and set (`_v4`, `_v6`, `_v6net`) the rules are (shown as
//! `nft list ruleset` prints them):
//!
//! ```text
//! tcp dport { 25, 465, 587 } ip saddr @postfix_v4 counter name "postfix" reject with tcp reset
//! tcp dport 8000-8010 ip saddr @postfix_v4 counter name "postfix" reject with tcp reset
//! udp dport 53 ip saddr @sshd_v4 counter name "sshd" reject       (icmpx port-unreachable)
//! meta l4proto tcp ip saddr @recidive_v4 counter name "recidive" reject with tcp reset   (allports)
//! ip saddr @recidive_v4 counter name "recidive" reject            (allports, everything else)
//! ```
//!
//! Each jail has one named counter object (`nft list counter inet banjo
//! postfix`) that all its rules bump: what the jail's bans refused. It is
//! created only if missing, so the count survives restarts and reloads.
//! The set elements carry no counters of their own: a per-element counter
//! is a per-CPU allocation in the kernel for every ban, which doubled the
//! cost of adding an element (`cargo bench --bench netlink`: 10 000
//! elements in 33–37 ms with them, 18 ms without) and grows the kernel's
//! memory per ban with the number of CPUs.
//!
//! The cheap comparisons (protocol, port) come before the set lookup, so
//! most packets leave the rule before it.
//!
//! Single ports share one anonymous constant set per rule (one port: a
//! plain comparison); each real range gets its own rule with a `range`
//! expression, which avoids anonymous interval sets and their
//! end-marker encoding.

use std::collections::HashMap;

use crate::jail::{Jail, Ports, Protocol};

use super::elements::{push_message, Wire};
use super::netlink::*;

/// The one base chain banjo owns in its table.
pub(crate) const CHAIN: &str = "input";

/// Name of anonymous sets: the kernel replaces `%d` with a free number; the
/// rule and the elements refer to the set by its batch-local id.
const ANON_SET: &str = "__set%d";

/// nft's datatype numbers, stored as the set's key type so that
/// `nft list` prints the elements as addresses and ports.
const TYPE_IPV4_ADDR: u32 = 7;
const TYPE_IPV6_ADDR: u32 = 8;
const TYPE_INET_SERVICE: u32 = 13;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// The kind of a jail's set: one per address family, plus IPv6 prefixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Family {
    /// IPv4 addresses: sets `<jail>_v4`.
    V4,
    /// IPv6 addresses: sets `<jail>_v6`.
    V6,
    /// IPv6 prefixes: interval sets `<jail>_v6net`.
    V6Net,
}

impl Family {
    /// The two address families, v4 first.
    pub(crate) const BOTH: [Family; 2] = [Family::V4, Family::V6];

    /// Every set a jail has, in creation order.
    pub(crate) const ALL: [Family; 3] = [Family::V4, Family::V6, Family::V6Net];

    /// The family of an address (never `V6Net`).
    pub(crate) fn of(ip: std::net::IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    /// Set-name suffix.
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "_v4",
            Family::V6 => "_v6",
            Family::V6Net => "_v6net",
        }
    }

    /// The jail a set of this kind belongs to, if `set` is one.
    pub(crate) fn jail_of(set: &str) -> Option<(&str, Family)> {
        Family::ALL.into_iter().find_map(|f| {
            set.strip_suffix(f.suffix())
                .filter(|j| !j.is_empty())
                .map(|j| (j, f))
        })
    }

    fn label(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
            Family::V6Net => "ipv6 prefix",
        }
    }

    fn nfproto(self) -> u8 {
        match self {
            Family::V4 => NFPROTO_IPV4,
            Family::V6 | Family::V6Net => NFPROTO_IPV6,
        }
    }

    /// (offset, length) of the source address in the network header.
    fn saddr(self) -> (u32, u32) {
        match self {
            Family::V4 => (12, 4),
            Family::V6 | Family::V6Net => (8, 16),
        }
    }

    fn key_type(self) -> u32 {
        match self {
            Family::V4 => TYPE_IPV4_ADDR,
            Family::V6 | Family::V6Net => TYPE_IPV6_ADDR,
        }
    }

    /// The set's flags: every element may carry a timeout; prefixes are
    /// stored as intervals.
    pub(crate) fn set_flags(self) -> u32 {
        match self {
            Family::V4 | Family::V6 => NFT_SET_TIMEOUT,
            Family::V6Net => NFT_SET_INTERVAL | NFT_SET_TIMEOUT,
        }
    }
}

/// The set holding a jail's bans of one kind.
pub(crate) fn set_name(jail: &str, family: Family) -> String {
    format!("{jail}{}", family.suffix())
}

/// What setup needs to know about a set that already exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Existing {
    /// Whether its elements carry counters: sets an earlier banjo made
    /// have them, and a set's expressions cannot change in place.
    pub(crate) counter: bool,
}

/// What setup found in the table before it starts.
#[derive(Debug)]
pub(crate) struct Found {
    /// Whether banjo's chain exists (it is then replaced).
    pub(crate) chain: bool,
    /// Sets of jails no longer configured, to delete.
    pub(crate) stale_sets: Vec<String>,
    /// Counter objects of jails no longer configured, to delete.
    pub(crate) stale_counters: Vec<String>,
    /// Every set present, by name, to re-declare exactly as it is.
    pub(crate) sets: HashMap<String, Existing>,
}

/// What a rule matches on the destination port.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PortMatch {
    Any,
    One(u16),
    Set(Vec<u16>),
    Range(u16, u16),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reject {
    TcpReset,
    PortUnreachable,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct RuleSpec {
    l4: Option<u8>,
    ports: PortMatch,
    reject: Reject,
}

/// The rules of one jail, the same for both families.
fn rule_specs(jail: &Jail) -> Vec<RuleSpec> {
    let (l4, reject) = match jail.protocol {
        Protocol::Tcp => (IPPROTO_TCP, Reject::TcpReset),
        Protocol::Udp => (IPPROTO_UDP, Reject::PortUnreachable),
    };
    match &jail.ports {
        Ports::All => vec![
            RuleSpec {
                l4: Some(IPPROTO_TCP),
                ports: PortMatch::Any,
                reject: Reject::TcpReset,
            },
            RuleSpec {
                l4: None,
                ports: PortMatch::Any,
                reject: Reject::PortUnreachable,
            },
        ],
        Ports::List(ranges) => {
            let mut singles: Vec<u16> = ranges
                .iter()
                .filter(|r| r.first >= r.last)
                .map(|r| r.first)
                .collect();
            singles.sort_unstable();
            singles.dedup();
            let mut specs = Vec::new();
            match singles.len() {
                0 => {}
                1 => specs.push(RuleSpec {
                    l4: Some(l4),
                    ports: PortMatch::One(singles[0]),
                    reject,
                }),
                _ => specs.push(RuleSpec {
                    l4: Some(l4),
                    ports: PortMatch::Set(singles),
                    reject,
                }),
            }
            for r in ranges.iter().filter(|r| r.first < r.last) {
                specs.push(RuleSpec {
                    l4: Some(l4),
                    ports: PortMatch::Range(r.first, r.last),
                    reject,
                });
            }
            specs
        }
    }
}

fn describe(jail: &str, family: Family, spec: &RuleSpec) -> String {
    let proto = match spec.l4 {
        Some(IPPROTO_TCP) => "tcp",
        Some(IPPROTO_UDP) => "udp",
        _ => "any protocol",
    };
    let ports = match &spec.ports {
        PortMatch::Any => "any port".to_string(),
        PortMatch::One(p) => format!("port {p}"),
        PortMatch::Set(ps) => {
            let v: Vec<String> = ps.iter().map(u16::to_string).collect();
            format!("ports {}", v.join(","))
        }
        PortMatch::Range(a, b) => format!("ports {a}-{b}"),
    };
    format!(
        "adding the {} rule of jail {jail} ({proto}, {ports})",
        family.label()
    )
}

/// Hands out batch-local set ids.
struct Ids(u32);

impl Ids {
    fn next(&mut self) -> u32 {
        self.0 += 1;
        self.0
    }
}

/// Appends the whole setup to `batch`: table (kept if present), the
/// dropped jails' sets and counters deleted, every jail's sets and counter
/// (kept with their elements and counts if present), and the chain
/// replaced with fresh rules. A set already present is re-declared exactly
/// as it is (the kernel refuses a NEWSET that differs from the set it
/// names). Returns the number of rules in the chain.
pub(crate) fn encode_setup(batch: &mut Batch, table: &str, jails: &[Jail], found: &Found) -> usize {
    let mut ids = Ids(0);
    let m = batch.begin(
        NFT_MSG_NEWTABLE,
        NLM_F_CREATE,
        NFPROTO_INET,
        format!("creating table inet {table}"),
    );
    batch.buf().put_str(NFTA_TABLE_NAME, table);
    batch.end(m);

    // Deleting the chain deletes its rules, which releases the sets and
    // counters they reference; only then can dropped jails' ones go.
    if found.chain {
        let m = batch.begin(
            NFT_MSG_DELCHAIN,
            0,
            NFPROTO_INET,
            format!("deleting chain {CHAIN} of table inet {table}"),
        );
        batch.buf().put_str(NFTA_CHAIN_TABLE, table);
        batch.buf().put_str(NFTA_CHAIN_NAME, CHAIN);
        batch.end(m);
    }
    for set in &found.stale_sets {
        let m = batch.begin(
            NFT_MSG_DELSET,
            0,
            NFPROTO_INET,
            format!("deleting set {set} (its jail is no longer configured)"),
        );
        batch.buf().put_str(NFTA_SET_TABLE, table);
        batch.buf().put_str(NFTA_SET_NAME, set);
        batch.end(m);
    }
    for counter in &found.stale_counters {
        let m = batch.begin(
            NFT_MSG_DELOBJ,
            0,
            NFPROTO_INET,
            format!("deleting counter {counter} (its jail is no longer configured)"),
        );
        put_counter(batch.buf(), table, Some(counter));
        batch.end(m);
    }

    for jail in jails {
        // Without NLM_F_EXCL an existing counter is kept with its count.
        let m = batch.begin(
            NFT_MSG_NEWOBJ,
            NLM_F_CREATE,
            NFPROTO_INET,
            format!("creating the counter of jail {}", jail.name),
        );
        let buf = batch.buf();
        put_counter(buf, table, Some(&jail.name));
        let d = buf.begin_nest(NFTA_OBJ_DATA);
        buf.end_nest(d);
        batch.end(m);
        for family in Family::ALL {
            let name = set_name(&jail.name, family);
            let counter = found.sets.get(&name).is_some_and(|e| e.counter);
            let m = batch.begin(
                NFT_MSG_NEWSET,
                NLM_F_CREATE,
                NFPROTO_INET,
                format!("creating set {name}"),
            );
            let buf = batch.buf();
            buf.put_str(NFTA_SET_TABLE, table);
            buf.put_str(NFTA_SET_NAME, &name);
            buf.put_be32(NFTA_SET_FLAGS, family.set_flags());
            buf.put_be32(NFTA_SET_KEY_TYPE, family.key_type());
            buf.put_be32(NFTA_SET_KEY_LEN, family.saddr().1);
            buf.put_be32(NFTA_SET_ID, ids.next());
            if counter {
                // As an earlier banjo made it: one expression in
                // NFTA_SET_EXPR, as nft sends it.
                let e = buf.begin_nest(NFTA_SET_EXPR);
                buf.put_str(NFTA_EXPR_NAME, "counter");
                let d = buf.begin_nest(NFTA_EXPR_DATA);
                buf.end_nest(d);
                buf.end_nest(e);
            }
            batch.end(m);
        }
    }

    let m = batch.begin(
        NFT_MSG_NEWCHAIN,
        NLM_F_CREATE,
        NFPROTO_INET,
        format!("creating chain {CHAIN} of table inet {table}"),
    );
    let buf = batch.buf();
    buf.put_str(NFTA_CHAIN_TABLE, table);
    buf.put_str(NFTA_CHAIN_NAME, CHAIN);
    let hook = buf.begin_nest(NFTA_CHAIN_HOOK);
    buf.put_be32(NFTA_HOOK_HOOKNUM, NF_INET_LOCAL_IN);
    // priority filter - 1: just before the usual filter chains.
    buf.put_be32(NFTA_HOOK_PRIORITY, (-1i32) as u32);
    buf.end_nest(hook);
    buf.put_be32(NFTA_CHAIN_POLICY, NF_ACCEPT);
    buf.put_str(NFTA_CHAIN_TYPE, "filter");
    batch.end(m);

    let mut rules = 0;
    for jail in jails {
        let specs = rule_specs(jail);
        for family in Family::ALL {
            for spec in &specs {
                encode_rule(batch, table, &jail.name, family, spec, &mut ids);
                rules += 1;
            }
        }
    }
    rules
}

/// The attributes that name a jail's counter object, or with `None` all
/// of the table's counters (for a dump).
pub(crate) fn put_counter(buf: &mut MsgBuf, table: &str, name: Option<&str>) {
    buf.put_str(NFTA_OBJ_TABLE, table);
    if let Some(name) = name {
        buf.put_str(NFTA_OBJ_NAME, name);
    }
    buf.put_be32(NFTA_OBJ_TYPE, NFT_OBJECT_COUNTER);
}

fn encode_rule(
    batch: &mut Batch,
    table: &str,
    jail: &str,
    family: Family,
    spec: &RuleSpec,
    ids: &mut Ids,
) {
    let step = describe(jail, family, spec);
    // An anonymous set is bound to exactly one rule: one per rule.
    let anon = if let PortMatch::Set(ports) = &spec.ports {
        let id = ids.next();
        let m = batch.begin(
            NFT_MSG_NEWSET,
            NLM_F_CREATE,
            NFPROTO_INET,
            format!("{step}: creating its port set"),
        );
        let buf = batch.buf();
        buf.put_str(NFTA_SET_TABLE, table);
        buf.put_str(NFTA_SET_NAME, ANON_SET);
        buf.put_be32(NFTA_SET_FLAGS, NFT_SET_ANONYMOUS | NFT_SET_CONSTANT);
        buf.put_be32(NFTA_SET_KEY_TYPE, TYPE_INET_SERVICE);
        buf.put_be32(NFTA_SET_KEY_LEN, 2);
        buf.put_be32(NFTA_SET_ID, id);
        batch.end(m);
        push_message(
            batch,
            NFT_MSG_NEWSETELEM,
            table,
            ANON_SET,
            Some(id),
            &mut ports
                .iter()
                .map(|p| Wire::key(p.to_be_bytes().to_vec(), None)),
            format!("{step}: filling its port set"),
        );
        Some(id)
    } else {
        None
    };

    let m = batch.begin(
        NFT_MSG_NEWRULE,
        NLM_F_CREATE | NLM_F_APPEND,
        NFPROTO_INET,
        step,
    );
    let buf = batch.buf();
    buf.put_str(NFTA_RULE_TABLE, table);
    buf.put_str(NFTA_RULE_CHAIN, CHAIN);
    let exprs = buf.begin_nest(NFTA_RULE_EXPRESSIONS);
    if let Some(l4) = spec.l4 {
        meta(buf, NFT_META_L4PROTO);
        cmp_eq(buf, &[l4]);
    }
    if spec.ports != PortMatch::Any {
        // Destination port: bytes 2..4 of both the TCP and the UDP header.
        payload(buf, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
    }
    match &spec.ports {
        PortMatch::Any => {}
        PortMatch::One(p) => cmp_eq(buf, &p.to_be_bytes()),
        PortMatch::Set(_) => lookup(buf, ANON_SET, anon),
        PortMatch::Range(a, b) => range(buf, *a, *b),
    }
    meta(buf, NFT_META_NFPROTO);
    cmp_eq(buf, &[family.nfproto()]);
    let (offset, len) = family.saddr();
    payload(buf, NFT_PAYLOAD_NETWORK_HEADER, offset, len);
    lookup(buf, &set_name(jail, family), None);
    count_in(buf, jail);
    reject(buf, spec.reject);
    buf.end_nest(exprs);
    batch.end(m);
}

/// Writes one expression: `NFTA_LIST_ELEM { NAME, DATA { body } }`.
fn expr(buf: &mut MsgBuf, name: &str, body: impl FnOnce(&mut MsgBuf)) {
    let e = buf.begin_nest(NFTA_LIST_ELEM);
    buf.put_str(NFTA_EXPR_NAME, name);
    let d = buf.begin_nest(NFTA_EXPR_DATA);
    body(buf);
    buf.end_nest(d);
    buf.end_nest(e);
}

fn meta(buf: &mut MsgBuf, key: u32) {
    expr(buf, "meta", |b| {
        b.put_be32(NFTA_META_KEY, key);
        b.put_be32(NFTA_META_DREG, NFT_REG_1);
    });
}

fn cmp_eq(buf: &mut MsgBuf, value: &[u8]) {
    expr(buf, "cmp", |b| {
        b.put_be32(NFTA_CMP_SREG, NFT_REG_1);
        b.put_be32(NFTA_CMP_OP, NFT_CMP_EQ);
        b.put_data(NFTA_CMP_DATA, value);
    });
}

fn payload(buf: &mut MsgBuf, base: u32, offset: u32, len: u32) {
    expr(buf, "payload", |b| {
        b.put_be32(NFTA_PAYLOAD_DREG, NFT_REG_1);
        b.put_be32(NFTA_PAYLOAD_BASE, base);
        b.put_be32(NFTA_PAYLOAD_OFFSET, offset);
        b.put_be32(NFTA_PAYLOAD_LEN, len);
    });
}

fn lookup(buf: &mut MsgBuf, set: &str, id: Option<u32>) {
    expr(buf, "lookup", |b| {
        b.put_str(NFTA_LOOKUP_SET, set);
        b.put_be32(NFTA_LOOKUP_SREG, NFT_REG_1);
        if let Some(id) = id {
            b.put_be32(NFTA_LOOKUP_SET_ID, id);
        }
    });
}

/// Bumps the named counter object (`counter name "<jail>"`).
fn count_in(buf: &mut MsgBuf, counter: &str) {
    expr(buf, "objref", |b| {
        b.put_be32(NFTA_OBJREF_IMM_TYPE, NFT_OBJECT_COUNTER);
        b.put_str(NFTA_OBJREF_IMM_NAME, counter);
    });
}

fn range(buf: &mut MsgBuf, first: u16, last: u16) {
    expr(buf, "range", |b| {
        b.put_be32(NFTA_RANGE_SREG, NFT_REG_1);
        b.put_be32(NFTA_RANGE_OP, NFT_RANGE_EQ);
        b.put_data(NFTA_RANGE_FROM_DATA, &first.to_be_bytes());
        b.put_data(NFTA_RANGE_TO_DATA, &last.to_be_bytes());
    });
}

fn reject(buf: &mut MsgBuf, kind: Reject) {
    expr(buf, "reject", |b| match kind {
        Reject::TcpReset => {
            b.put_be32(NFTA_REJECT_TYPE, NFT_REJECT_TCP_RST);
            b.put(NFTA_REJECT_ICMP_CODE, &[0]);
        }
        Reject::PortUnreachable => {
            b.put_be32(NFTA_REJECT_TYPE, NFT_REJECT_ICMPX_UNREACH);
            b.put(NFTA_REJECT_ICMP_CODE, &[NFT_REJECT_ICMPX_PORT_UNREACH]);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jail::PortRange;

    fn jail(name: &str, ports: Ports, protocol: Protocol) -> Jail {
        Jail {
            maxretry: 3,
            ports,
            protocol,
            ..Jail::test(name)
        }
    }

    fn pr(first: u16, last: u16) -> PortRange {
        PortRange { first, last }
    }

    #[test]
    fn port_lists_become_one_set_plus_one_rule_per_range() {
        let j = jail(
            "postfix",
            Ports::List(vec![
                pr(587, 587),
                pr(25, 25),
                pr(8000, 8010),
                pr(465, 465),
                pr(25, 25),
            ]),
            Protocol::Tcp,
        );
        let specs = rule_specs(&j);
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].ports, PortMatch::Set(vec![25, 465, 587]));
        assert_eq!(specs[0].l4, Some(IPPROTO_TCP));
        assert_eq!(specs[0].reject, Reject::TcpReset);
        assert_eq!(specs[1].ports, PortMatch::Range(8000, 8010));

        let j = jail("dns", Ports::List(vec![pr(53, 53)]), Protocol::Udp);
        let specs = rule_specs(&j);
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].ports, PortMatch::One(53));
        assert_eq!(specs[0].reject, Reject::PortUnreachable);

        let specs = rule_specs(&jail("all", Ports::All, Protocol::Udp));
        assert_eq!(specs.len(), 2);
        assert_eq!(
            (specs[0].l4, specs[0].reject),
            (Some(IPPROTO_TCP), Reject::TcpReset)
        );
        assert_eq!(
            (specs[1].l4, specs[1].reject),
            (None, Reject::PortUnreachable)
        );
    }

    #[test]
    fn setup_batch_is_well_formed() {
        let jails = [
            jail(
                "a",
                Ports::List(vec![pr(22, 22), pr(2222, 2223), pr(23, 23)]),
                Protocol::Tcp,
            ),
            jail("b", Ports::All, Protocol::Tcp),
        ];
        let mut batch = Batch::new(1);
        let found = Found {
            chain: true,
            stale_sets: vec!["old_v4".into()],
            stale_counters: vec!["old".into()],
            sets: HashMap::new(),
        };
        let rules = encode_setup(&mut batch, "banjo", &jails, &found);
        // table, delchain, delset, delobj, per jail a counter and 3 sets,
        // chain, jail a: per set (anon set + elements + rule, range rule),
        // jail b: 2 rules per set.
        assert_eq!(batch.messages(), 1 + 1 + 1 + 1 + 2 * 4 + 1 + 3 * 4 + 3 * 2);
        assert_eq!(rules, 3 * 2 + 3 * 2);
        assert!(batch.step(2).contains("old_v4"));
        assert!(batch.step(3).contains("counter old"));
        assert!(batch.buf().check().is_ok());
    }
}
