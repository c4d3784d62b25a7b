//! Per-line cost of `Filter::scan` with 1, 10 and 50 jails over a fixed
//! corpus of about 90 % benign Postfix lines and 10 % failures.
//!
//! Each jail has banjo's Postfix failregexes, the tutorial's AUTH-flood
//! failregex, and three sshd/dovecot-like failregexes plus an ignoreregex
//! whose literals differ per jail, so the patterns are distinct. The
//! failure lines all target jail 0, so every configuration matches the same
//! lines; more jails only add patterns. Two cases: the entry's `JailSet`
//! holds jail 0 only, or every jail (then a Postfix failure line hits all of
//! them and the output grows with the jails). The cost should stay flat.
//!
//! `scan/flood` is the per-line cost during an AUTH flood: every line a
//! failure of the one jail, the capture step included.

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use banjo::filter::{Filter, POSTFIX_FAILREGEX, POSTFIX_IGNOREREGEX};
use banjo::jail::{Bantime, Jail, JailSet, JournalMatch, MatchTerm, Ports, Protocol};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const FLOOD: &str = r"lost connection after AUTH from (.*)\[<HOST>\]";

fn jail(k: usize) -> Jail {
    let mut failregex: Vec<String> = POSTFIX_FAILREGEX.iter().map(|s| s.to_string()).collect();
    failregex.push(FLOOD.to_string());
    failregex.push(format!(
        r"Failed (?:password|publickey) for (?:invalid user )?\S+ from <HOST> port \d+ ssh2 on j{k}"
    ));
    failregex.push(format!(r"Invalid user \S* from <HOST> port \d+ \(j{k}\)"));
    failregex.push(format!(
        r"imap{k}-login: Disconnected \(auth failed, \d+ attempts in \d+ secs\): user=<[^>]*>, method=\S+, rip=<ADDR>, lip=\S+"
    ));
    let mut ignoreregex: Vec<String> = POSTFIX_IGNOREREGEX.iter().map(|s| s.to_string()).collect();
    ignoreregex.push(format!(r"user=<monitor{k}@example\.test>"));
    Jail {
        name: format!("j{k}"),
        journalmatch: JournalMatch {
            groups: vec![vec![MatchTerm {
                field: "SYSLOG_IDENTIFIER".into(),
                value: "postfix/smtpd".into(),
            }]],
        },
        failregex,
        ignoreregex,
        input: Default::default(),
        increment: None,
        ignoreself: false,
        ipv6_prefix: None,
        maxretry: 5,
        findtime: Duration::from_secs(600),
        bantime: Bantime::For(Duration::from_secs(3600)),
        ignoreip: Vec::new(),
        ports: Ports::All,
        protocol: Protocol::Tcp,
    }
}

/// A deterministic corpus: 9 benign lines for each failure line.
fn corpus() -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    for i in 0..200usize {
        let a = i % 250 + 1;
        let q = format!("{:010X}", 0x4F1C2D01B2usize + i * 7919);
        let benign = [
            format!("connect from mail{a}.example.com[198.51.100.{a}]"),
            format!("Anonymous TLS connection established from mail{a}.example.com[198.51.100.{a}]: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256"),
            format!("{q}: client=mail{a}.example.com[198.51.100.{a}]"),
            format!("{q}: message-id=<20240101.{i}.{a}@mail{a}.example.com>"),
            format!("{q}: from=<newsletter{a}@example.com>, size={}, nrcpt=1 (queue active)", 1000 + i * 37),
            format!("{q}: to=<alice@example.test>, relay=local, delay=0.{a}, delays=0.01/0.01/0/0.{a}, dsn=2.0.0, status=sent (delivered to mailbox)"),
            format!("{q}: removed"),
            format!("disconnect from mail{a}.example.com[198.51.100.{a}] ehlo=2 starttls=1 mail=1 rcpt=1 data=1 quit=1 commands=7"),
            format!("lost connection after EHLO from unknown[203.0.113.{a}]"),
        ];
        lines.extend(benign.into_iter().map(String::into_bytes));
        let failure = match i % 6 {
            0 => format!("warning: unknown[192.0.2.{a}]: SASL LOGIN authentication failed: authentication failure, sasl_username=user{i}@example.test"),
            1 => format!("NOQUEUE: reject: RCPT from unknown[192.0.2.{a}]: 504 5.5.2 <ylmf-pc>: Helo command rejected: need fully-qualified hostname; from=<spam@example.net> to=<alice@example.test> proto=ESMTP helo=<ylmf-pc>"),
            2 => format!("NOQUEUE: reject: RCPT from unknown[192.0.2.{a}]: 554 5.7.1 <victim{i}@example.org>: Relay access denied; from=<spam@example.net> to=<victim{i}@example.org> proto=ESMTP helo=<example.net>"),
            3 => format!("lost connection after AUTH from unknown[192.0.2.{a}]"),
            4 => format!("Failed password for invalid user admin{i} from 192.0.2.{a} port {} ssh2 on j0", 40000 + i),
            _ => format!("imap0-login: Disconnected (auth failed, 1 attempts in 2 secs): user=<u{i}@example.test>, method=PLAIN, rip=192.0.2.{a}, lip=192.0.2.1"),
        };
        lines.push(failure.into_bytes());
    }
    lines
}

fn matcher(c: &mut Criterion) {
    let lines = corpus();
    // "one": the entry satisfies jail 0's journalmatch only, the other jails
    // are ballast (the matcher's own cost). "all": every jail is in the set,
    // so a Postfix failure line hits all of them (N hits per line).
    for (label, all) in [("one", false), ("all", true)] {
        let mut group = c.benchmark_group(format!("scan/{label}"));
        group.throughput(Throughput::Elements(lines.len() as u64));
        for n in [1usize, 10, 50] {
            let jails: Vec<Jail> = (0..n).map(jail).collect();
            let started = Instant::now();
            let filter = match Filter::new(&jails) {
                Ok(f) => f,
                Err(e) => panic!("{e}"),
            };
            let built = started.elapsed();
            let set = if all {
                JailSet::first(n)
            } else {
                JailSet::first(1)
            };
            let mut cache = filter.cache();
            let mut hits = Vec::new();
            // A plain timing, printed as lines/s, next to criterion's figures.
            let rounds = 300;
            let started = Instant::now();
            let mut total = 0usize;
            for _ in 0..rounds {
                for line in &lines {
                    filter.scan(&mut cache, black_box(line), &set, &mut hits);
                    total += hits.len();
                    hits.clear();
                }
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "set={label} {n:>2} jails: built in {:.1} ms, {:.2} M lines/s, {} hits per {} lines",
                built.as_secs_f64() * 1e3,
                (rounds * lines.len()) as f64 / secs / 1e6,
                total / rounds,
                lines.len()
            );
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| {
                    for line in &lines {
                        filter.scan(&mut cache, black_box(line), &set, &mut hits);
                        hits.clear();
                    }
                })
            });
        }
        group.finish();
    }
}

/// A flood: every line is the tutorial's `lost connection after AUTH`
/// failure, matched by a jail of that one failregex (what the daemon does
/// for each entry of an AUTH flood, the capture step included).
fn flood(c: &mut Criterion) {
    let mut jail = jail(0);
    jail.failregex = vec![FLOOD.to_string()];
    jail.ignoreregex.clear();
    let filter = match Filter::new(&[jail]) {
        Ok(f) => f,
        Err(e) => panic!("{e}"),
    };
    let lines: Vec<Vec<u8>> = (0..1000u32)
        .map(|i| {
            format!(
                "lost connection after AUTH from unknown[10.100.{}.{}]",
                i >> 8,
                i & 255
            )
            .into_bytes()
        })
        .collect();
    let set = JailSet::first(1);
    let mut cache = filter.cache();
    let mut hits = Vec::new();
    let mut group = c.benchmark_group("scan");
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function("flood", |b| {
        b.iter(|| {
            for line in &lines {
                filter.scan(&mut cache, black_box(line), &set, &mut hits);
                assert_eq!(hits.len(), 1);
                hits.clear();
            }
        })
    });
    group.finish();
}

criterion_group!(benches, matcher, flood);
criterion_main!(benches);
