//! `banjo run` end to end on real components: journal files written by
//! systemd-journal-remote, the built binary, nftables in a private network
//! namespace, read back with `nft -j`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::util::*;

const S: u64 = 1_000_000;

/// The tutorial's two jails (flood findtime shortened to 60 s so that one
/// address can be "4 failures, but not within findtime").
const TUTORIAL_JAILS: &str = r#"
[defaults]
ignoreip = ["127.0.0.1/8", "::1"]

[jail.postfix-flood-attack]
failregex = ['lost connection after AUTH from (.*)\[<HOST>\]']
bantime = "10m"
findtime = "60s"
maxretry = 4
port = "http,https,smtp,submission,pop3,pop3s,imap,imaps,sieve"
protocol = "tcp"

[jail.postfix]
filter = "postfix"
maxretry = 3
bantime = "1h"
port = "smtp,submission"
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sorted(v: &[&str]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = v.iter().map(|s| ip(s)).collect();
    v.sort();
    v
}

/// The tutorial's mail.log excerpt as journal entries, shifted to `base`.
fn tutorial_entries(base: u64) -> Vec<Entry> {
    let text = include_str!("fixtures/tutorial-mail.log");
    text.lines()
        .filter_map(|line| {
            // "Dec 14 09:58:37 email postfix/smtpd[22095]: MESSAGE"
            let secs: u64 = line.get(13..15)?.parse().ok()?;
            let message = line.split_once("]: ")?.1;
            Some(Entry::smtpd(base + (secs - 37) * S, message))
        })
        .collect()
}

/// Asserts that `jail`'s sets come to hold exactly `want` (the control
/// address proves the entries were read) and still do 300 ms later.
fn banned_exactly(ns: &Netns, table: &str, jail: &str, want: &[&str], banjo: &Banjo) {
    assert!(
        eventually(Duration::from_secs(5), || banned_ips(ns, table, jail)
            == sorted(want)),
        "{:?} {:?}",
        banned_ips(ns, table, jail),
        banjo.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(banned_ips(ns, table, jail), sorted(want));
}

fn flood(ip: &str) -> String {
    format!("lost connection after AUTH from unknown[{ip}]")
}

fn helo_reject(ip: &str, n: u64) -> String {
    format!("NOQUEUE: reject: RCPT from unknown[{ip}]: 504 5.5.2 <ylmf-pc>: Helo command rejected: need fully-qualified hostname; from=<{n}@example.net> to=<martinlujan997@example.com> proto=ESMTP helo=<ylmf-pc>")
}

#[test]
fn seed_replay_bans_exactly_the_addresses_over_maxretry() {
    if !root_or_skip("seed_replay_bans_exactly_the_addresses_over_maxretry") {
        return;
    }
    let ns = Netns::new();
    let journal = JournalDir::new();
    let dir = TempDir::new("seed");
    let table = unique("t");
    let now = now_micros();
    let base = now - 300 * S;
    let mut entries = tutorial_entries(base);
    // 4 within 60 s: banned by the flood jail, v4 and v6.
    for i in 0..4 {
        entries.push(Entry::smtpd(base + (60 + i) * S, &flood("203.0.113.10")));
        entries.push(Entry::smtpd(base + (61 + i) * S, &flood("2001:db8::bad")));
    }
    // 3 only: not banned.
    for i in 0..3 {
        entries.push(Entry::smtpd(base + (70 + i) * S, &flood("203.0.113.11")));
    }
    // 4, but never 4 within findtime (60 s): not banned.
    for i in 0..4 {
        entries.push(Entry::smtpd(
            base + (100 + 70 * i) * S,
            &flood("203.0.113.12"),
        ));
    }
    // 4 from another unit: no jail reads it.
    for i in 0..4 {
        let mut e = Entry::smtpd(base + (80 + i) * S, &flood("203.0.113.50"));
        e.unit = "other.service".into();
        entries.push(e);
    }
    // The tutorial's repeat sender: 3 non-FQDN HELO rejects, banned by postfix.
    for i in 0..3 {
        entries.push(Entry::smtpd(
            base + (90 + i) * S,
            &helo_reject("185.191.228.36", i),
        ));
    }
    for i in 0..2 {
        entries.push(Entry::smtpd(
            base + (95 + i) * S,
            &helo_reject("198.51.100.20", i),
        ));
    }
    entries.sort_by_key(|e| e.time);
    journal.write_file("seed", &entries);

    let config = write_config(dir.path(), journal.path(), &table, TUTORIAL_JAILS);
    let mut banjo = Banjo::start(&ns, &config);

    let want_flood = sorted(&["203.0.113.10", "2001:db8::bad"]);
    let want_postfix = sorted(&["185.191.228.36"]);
    assert!(
        eventually(Duration::from_secs(10), || {
            banned_ips(&ns, &table, "postfix-flood-attack") == want_flood
                && banned_ips(&ns, &table, "postfix") == want_postfix
        }),
        "flood: {:?}, postfix: {:?}\n{:?}",
        banned_ips(&ns, &table, "postfix-flood-attack"),
        banned_ips(&ns, &table, "postfix"),
        banjo.log()
    );
    // Nothing else arrives later.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(banned_ips(&ns, &table, "postfix-flood-attack"), want_flood);
    assert_eq!(banned_ips(&ns, &table, "postfix"), want_postfix);

    // Each element's kernel timeout is the jail's bantime.
    for e in nft_elements(&ns, &table, "postfix-flood-attack_v4")
        .into_iter()
        .chain(nft_elements(&ns, &table, "postfix-flood-attack_v6"))
    {
        assert_eq!(e.timeout, Some(600), "{e:?}");
        assert!(e.expires.is_some_and(|x| (590..=600).contains(&x)), "{e:?}");
    }
    for e in nft_elements(&ns, &table, "postfix_v4") {
        assert_eq!(e.timeout, Some(3600), "{e:?}");
        assert!(
            e.expires.is_some_and(|x| (3590..=3600).contains(&x)),
            "{e:?}"
        );
    }
    assert!(banjo.logged(&["[postfix] Ban 185.191.228.36"]));
    let log = banjo.log().join("\n");
    assert!(
        log.contains("[postfix-flood-attack] Ban 203.0.113.10"),
        "{log}"
    );
    assert!(log.contains("[postfix] Ban 185.191.228.36"), "{log}");
    assert!(
        log.contains("[postfix-flood-attack] Found 114.232.141.99"),
        "{log}"
    );
    assert!(banjo.stop().success());
}

/// A backlog dense with bans: while it is read, batches go to the
/// committer thread as they fill, and the drain waits for them at its end.
/// Every address must land exactly once, its lines logged, and the watch
/// must not take the thread's changes for someone else's.
#[test]
fn a_backlog_of_thousands_of_bans_lands_completely() {
    if !root_or_skip("a_backlog_of_thousands_of_bans_lands_completely") {
        return;
    }
    let Scene {
        ns,
        journal,
        dir: _dir,
        table,
        config,
    } = Scene::new("backlog", LIVE_JAIL);
    let base = now_micros() - 60 * S;
    let mut want: Vec<IpAddr> = (0..4000u32)
        .map(|i| ip(&format!("198.18.{}.{}", i / 250, 1 + i % 250)))
        .chain((0..1000u32).map(|i| ip(&format!("2001:db8::{:x}", i + 1))))
        .collect();
    // Every address's first failure, then every address's second: the
    // second half of the file is one ban per entry.
    let entries: Vec<Entry> = (0..2u64)
        .flat_map(|round| {
            want.iter().enumerate().map(move |(i, addr)| {
                Entry::smtpd(base + round * S + i as u64, &flood(&addr.to_string()))
            })
        })
        .collect();
    journal.write_file("backlog", &entries);
    let mut banjo = Banjo::start(&ns, &config);
    // Stopped at once: banjo reads all there is before it looks at its
    // signals, so the whole backlog is read first; and the lines its
    // second thread still holds must come out before the last line.
    assert!(banjo.stop().success());
    want.sort();
    let banned = banned_ips(&ns, &table, "live");
    assert_eq!(
        banned.len(),
        want.len(),
        "banned of the backlog's addresses"
    );
    assert_eq!(banned, want);
    let stopped = |log: &[String]| log.last().is_some_and(|l| l.contains("banjo stopped"));
    // The output is read by another thread of this test.
    eventually(Duration::from_secs(5), || stopped(&banjo.log()));
    let log = banjo.log();
    assert!(stopped(&log), "{:?}", log.last());
    let count = |what: &str| log.iter().filter(|l| l.contains(what)).count();
    assert_eq!(
        (count("[live] Ban "), count("[live] Found ")),
        (want.len(), 2 * want.len())
    );
    // Each address's Ban after both its Founds.
    let address = |l: &str, what: &str| {
        let (_, after) = l.split_once(what)?;
        after.split_whitespace().next().map(str::to_string)
    };
    let mut founds: std::collections::HashMap<String, usize> = Default::default();
    for l in &log {
        if let Some(ip) = address(l, "[live] Found ") {
            *founds.entry(ip).or_default() += 1;
        } else if let Some(ip) = address(l, "[live] Ban ") {
            assert_eq!(founds.get(&ip), Some(&2), "{l}");
        }
    }
    assert!(
        !log.iter()
            .any(|l| l.contains("behind banjo's back") || l.contains("ERROR")),
        "{log:?}"
    );
}

const LIVE_JAIL: &str = r#"
[jail.live]
failregex = ['lost connection after AUTH from (.*)\[<HOST>\]']
maxretry = 2
bantime = "10m"
port = "smtp"
"#;

#[test]
fn live_follow_bans_within_milliseconds_of_the_write() {
    if !root_or_skip("live_follow_bans_within_milliseconds_of_the_write") {
        return;
    }
    let Scene {
        ns,
        mut journal,
        dir: _dir,
        table,
        config,
    } = Scene::new("live", LIVE_JAIL);
    journal.start_live();
    let banjo = Banjo::start(&ns, &config);
    let watcher = SetWatcher::new(&ns, &table, "live");

    let mut latencies = Vec::new();
    for i in 0..60u32 {
        let addr = format!("203.0.{}.{}", 100 + i / 200, 1 + i % 200);
        journal.append(&Entry::smtpd(now_micros(), &flood(&addr)));
        std::thread::sleep(Duration::from_millis(5));
        let t0 = Instant::now();
        journal.append(&Entry::smtpd(now_micros(), &flood(&addr)));
        let seen = watcher.wait_for(ip(&addr), Duration::from_secs(2));
        let Some(seen) = seen else {
            panic!("{addr} not banned within 2 s: {:?}", banjo.log());
        };
        latencies.push(seen.duration_since(t0));
    }
    latencies.sort();
    let p50 = percentile(&latencies, 0.50);
    let p99 = percentile(&latencies, 0.99);
    println!(
        "live follow: journal write -> element in set over {} bans: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        latencies[latencies.len() - 1].as_secs_f64() * 1e3
    );
    assert!(p99 <= Duration::from_millis(50), "p99 {p99:?} over 50 ms");
}

/// A journal file created after banjo started (a fresh journal-remote
/// directory) is followed from its first entry, written right after
/// READY.
#[test]
fn a_journal_file_created_after_the_start_is_read_from_its_first_entry() {
    if !root_or_skip("a_journal_file_created_after_the_start_is_read_from_its_first_entry") {
        return;
    }
    for round in 0..3u32 {
        let Scene {
            ns,
            mut journal,
            dir: _dir,
            table,
            config,
        } = Scene::new("late", LIVE_JAIL);
        let banjo = Banjo::start(&ns, &config);
        let addr = format!("203.0.113.{}", 90 + round);
        journal.append(&Entry::smtpd(now_micros(), &flood(&addr)));
        journal.append(&Entry::smtpd(now_micros(), &flood(&addr)));
        await_bans(&ns, &table, "live", &banjo, |b| b == [ip(&addr)]);
    }
}

const RESTART_JAIL: &str = r#"
[jail.restart]
failregex = ['lost connection after AUTH from (.*)\[<HOST>\]']
maxretry = 3
bantime = "1h"
port = "smtp"
"#;

#[test]
fn sigkill_and_restart_keeps_bans_and_counts_exactly() {
    if !root_or_skip("sigkill_and_restart_keeps_bans_and_counts_exactly") {
        return;
    }
    let Scene {
        ns,
        mut journal,
        dir: _dir,
        table,
        config,
    } = Scene::new("restart", RESTART_JAIL);
    journal.start_live();
    let mut banjo = Banjo::start(&ns, &config);

    for _ in 0..3 {
        journal.append(&Entry::smtpd(now_micros(), &flood("203.0.113.20")));
    }
    // maxretry - 1 failures for .21 before the kill.
    for _ in 0..2 {
        journal.append(&Entry::smtpd(now_micros(), &flood("203.0.113.21")));
    }
    assert!(eventually(Duration::from_secs(5), || {
        banjo
            .log()
            .iter()
            .filter(|l| l.contains("Found 203.0.113.21"))
            .count()
            == 2
            && banned_ips(&ns, &table, "restart") == sorted(&["203.0.113.20"])
    }));
    let before = nft_elements(&ns, &table, "restart_v4");
    banjo.kill();

    // A kill in the middle of a stream: more entries land while banjo is down.
    journal.append(&Entry::smtpd(now_micros(), &flood("203.0.113.22")));
    let mut banjo = Banjo::start(&ns, &config);
    std::thread::sleep(Duration::from_millis(700));
    // The ban survived with its remaining time; .21 is still one short.
    let after = nft_elements(&ns, &table, "restart_v4");
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].ip, ip("203.0.113.20"));
    assert_eq!(after[0].timeout, Some(3600));
    let (b, a) = (
        before[0].expires.unwrap_or(0),
        after[0].expires.unwrap_or(0),
    );
    assert!(
        a <= b && b - a <= 5,
        "expiry restarted? before {b}s, after {a}s"
    );

    journal.append(&Entry::smtpd(now_micros(), &flood("203.0.113.21")));
    assert!(
        eventually(Duration::from_secs(5), || banned_ips(
            &ns, &table, "restart"
        ) == sorted(&[
            "203.0.113.20",
            "203.0.113.21"
        ])),
        "{:?}\n{:?}",
        banned_ips(&ns, &table, "restart"),
        banjo.log()
    );
    // Counted once each: .22 has one failure, not banned.
    assert!(!banned_ips(&ns, &table, "restart").contains(&ip("203.0.113.22")));
    assert!(banjo.stop().success());
}

const SHORT_JAIL: &str = r#"
[jail.short]
failregex = ['lost connection after AUTH from (.*)\[<HOST>\]']
maxretry = 1
bantime = "2s"
port = "smtp"
"#;

#[test]
fn the_kernel_lifts_the_ban_with_banjo_stopped() {
    if !root_or_skip("the_kernel_lifts_the_ban_with_banjo_stopped") {
        return;
    }
    let ns = Netns::new();
    let journal = JournalDir::new();
    let dir = TempDir::new("expiry");
    let table = unique("t");
    journal.write_file("a", &[Entry::smtpd(now_micros(), &flood("203.0.113.30"))]);
    let config = write_config(dir.path(), journal.path(), &table, SHORT_JAIL);
    let mut banjo = Banjo::start(&ns, &config);
    assert!(eventually(Duration::from_secs(5), || {
        banned_ips(&ns, &table, "short") == sorted(&["203.0.113.30"])
    }));
    let banned_at = Instant::now();
    assert!(banjo.stop().success());
    assert_eq!(banned_ips(&ns, &table, "short"), sorted(&["203.0.113.30"]));
    assert!(eventually(Duration::from_secs(4), || banned_ips(
        &ns, &table, "short"
    )
    .is_empty()));
    let gone = banned_at.elapsed();
    println!(
        "kernel expiry: element gone {:.2} s after the ban (bantime 2 s)",
        gone.as_secs_f64()
    );
    assert!(
        gone >= Duration::from_millis(1500),
        "gone too early: {gone:?}"
    );
}

#[test]
fn ignoreip_addresses_are_never_banned() {
    if !root_or_skip("ignoreip_addresses_are_never_banned") {
        return;
    }
    let ns = Netns::new();
    let journal = JournalDir::new();
    let dir = TempDir::new("ignoreip");
    let table = unique("t");
    let now = now_micros() - 30 * S;
    let mut entries = Vec::new();
    for i in 0..10 {
        entries.push(Entry::smtpd(now + i * S, &flood("192.0.2.50")));
        entries.push(Entry::smtpd(now + i * S, &flood("2001:db8:1::5")));
        entries.push(Entry::smtpd(now + i * S, &flood("::ffff:192.0.2.51")));
        entries.push(Entry::smtpd(now + i * S, &flood("198.51.100.9")));
    }
    journal.write_file("a", &entries);
    let jails = r#"
[jail.ign]
failregex = ['lost connection after AUTH from (.*)\[<HOST>\]']
maxretry = 3
ignoreip = "192.0.2.0/24 2001:db8:1::/48"
port = "smtp"
"#;
    let config = write_config(dir.path(), journal.path(), &table, jails);
    let banjo = Banjo::start(&ns, &config);
    // The control address proves the flood was read.
    banned_exactly(&ns, &table, "ign", &["198.51.100.9"], &banjo);
}

#[test]
fn banned_address_is_refused_on_the_wire_until_expiry() {
    if !root_or_skip("banned_address_is_refused_on_the_wire_until_expiry") {
        return;
    }
    let server = Netns::new();
    let client = Netns::new();
    // The veth pair is created inside the namespaces: the host gets no
    // interface, route or rule. Documentation addresses only.
    server.exec(
        "ip",
        &[
            "link",
            "add",
            "v0",
            "type",
            "veth",
            "peer",
            "name",
            "v1",
            "netns",
            &client.name,
        ],
    );
    server.exec("ip", &["addr", "add", "192.0.2.1/24", "dev", "v0"]);
    server.exec("ip", &["link", "set", "v0", "up"]);
    client.exec("ip", &["addr", "add", "192.0.2.66/24", "dev", "v1"]);
    client.exec("ip", &["addr", "add", "192.0.2.67/24", "dev", "v1"]);
    client.exec("ip", &["link", "set", "v1", "up"]);
    let _listener = Listener::start(&server, "192.0.2.1:25");

    let journal = JournalDir::new();
    let dir = TempDir::new("wire");
    let table = unique("t");
    journal.write_file("a", &[Entry::smtpd(now_micros(), &flood("192.0.2.66"))]);
    let jails = r#"
[jail.wire]
failregex = ['lost connection after AUTH from (.*)\[<HOST>\]']
maxretry = 1
bantime = "3s"
port = "smtp,submission"
"#;
    let config = write_config(dir.path(), journal.path(), &table, jails);
    let _banjo = Banjo::start(&server, &config);
    assert!(eventually(Duration::from_secs(5), || {
        banned_ips(&server, &table, "wire") == sorted(&["192.0.2.66"])
    }));
    let banned_at = Instant::now();
    assert_eq!(
        tcp_connect(&client, "192.0.2.66", "192.0.2.1:25"),
        Err(nix::errno::Errno::ECONNREFUSED),
        "banned address must be refused"
    );
    assert_eq!(tcp_connect(&client, "192.0.2.67", "192.0.2.1:25"), Ok(()));
    assert!(eventually(Duration::from_secs(6), || {
        tcp_connect(&client, "192.0.2.66", "192.0.2.1:25").is_ok()
    }));
    println!(
        "wire: banned client served again {:.2} s after the ban (bantime 3 s)",
        banned_at.elapsed().as_secs_f64()
    );
}

#[test]
fn the_hosts_own_addresses_are_never_banned_even_new_ones() {
    if !root_or_skip("the_hosts_own_addresses_are_never_banned_even_new_ones") {
        return;
    }
    let ns = Netns::new();
    ns.exec(
        "ip",
        &["link", "add", "d0", "type", "veth", "peer", "name", "d1"],
    );
    ns.exec("ip", &["addr", "add", "192.0.2.1/24", "dev", "d0"]);
    ns.exec("ip", &["link", "set", "d0", "up"]);
    let mut journal = JournalDir::new();
    let dir = TempDir::new("self");
    let table = unique("t");
    let list = dir.path().join("trusted.list");
    std::fs::write(&list, "# office\n198.51.100.0/28\n").unwrap();
    let jails = format!(
        r#"
[jail.self]
failregex = ['lost connection after AUTH from (.*)\[<HOST>\]']
maxretry = 1
ignoreip = "file:{}"
port = "smtp"
"#,
        list.display()
    );
    let config = write_config(dir.path(), journal.path(), &table, &jails);
    journal.start_live();
    let banjo = Banjo::start(&ns, &config);
    // An address added while banjo runs is protected at once.
    ns.exec("ip", &["addr", "add", "2001:db8:5::1/64", "dev", "d0"]);
    std::thread::sleep(Duration::from_millis(200));
    for addr in ["192.0.2.1", "2001:db8:5::1", "198.51.100.7", "203.0.113.99"] {
        journal.append(&Entry::smtpd(now_micros(), &flood(addr)));
    }
    banned_exactly(&ns, &table, "self", &["203.0.113.99"], &banjo);
}

#[test]
fn without_cap_net_admin_one_clear_line_and_exit_1() {
    if !root_or_skip("without_cap_net_admin_one_clear_line_and_exit_1") {
        return;
    }
    let ns = Netns::new();
    let journal = JournalDir::new();
    let dir = TempDir::new("nocap");
    let mut perms = std::fs::metadata(dir.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(dir.path(), perms).unwrap();
    let config = write_config(dir.path(), journal.path(), &unique("t"), LIVE_JAIL);
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = ns
        .command("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(banjo_bin())
        .args(["run", "--config"])
        .arg(&config)
        .env("BANJO_LOG_STDERR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("CAP_NET_ADMIN"), "{lines:?}");
}

#[test]
fn notifies_ready_status_and_watchdog() {
    if !root_or_skip("notifies_ready_status_and_watchdog") {
        return;
    }
    let ns = Netns::new();
    let mut journal = JournalDir::new();
    let dir = TempDir::new("notify");
    let config = write_config(dir.path(), journal.path(), &unique("t"), LIVE_JAIL);
    // WatchdogSec=0.4s: banjo must ping at least every 0.2 s.
    let mut banjo = Banjo::start_with_env(&ns, &config, &[("WATCHDOG_USEC", "400000")]);
    for _ in 0..3 {
        banjo.wait_for("WATCHDOG=1", Duration::from_millis(400));
    }
    journal.append(&Entry::smtpd(now_micros(), &flood("203.0.113.90")));
    banjo.wait_for(
        "STATUS=1 jails, 1 lines, 1 failures, 0 bans",
        Duration::from_secs(3),
    );
    banjo.signal(nix::sys::signal::Signal::SIGHUP);
    banjo.wait_for("RELOADING=1", Duration::from_secs(3));
    banjo.wait_for("READY=1", Duration::from_secs(3));
    assert!(banjo.stop().success());
}

#[test]
fn a_fail2ban_filter_file_bans_from_the_journal() {
    if !root_or_skip("a_fail2ban_filter_file_bans_from_the_journal") {
        return;
    }
    let ns = Netns::new();
    let mut journal = JournalDir::new();
    let dir = TempDir::new("f2bfilter");
    let table = unique("t");
    // The tutorial's own filter file, unmodified, through `filter = NAME`,
    // and one anchored on the prefix fail2ban's systemd backend puts in
    // front of MESSAGE (`email postfix/smtpd[22095]: ...`): both see the
    // line fail2ban would build from the entry.
    let filters = dir.path().join("filter.d");
    std::fs::create_dir(&filters).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/conformance/tutorial/filter.d/postfix-flood-attack.conf"
        ),
        filters.join("postfix-flood-attack.conf"),
    )
    .unwrap();
    std::fs::write(
        filters.join("prefixed.conf"),
        "[Definition]\nfailregex = ^email postfix/smtpd\\[22095\\]: lost connection after AUTH from unknown\\[<HOST>\\]$\n",
    )
    .unwrap();
    let jails = format!(
        r#"
[fail2ban]
filter_dir = "{}"

[jail.postfix-flood-attack]
filter = "postfix-flood-attack"
maxretry = 4
port = "smtp"

[jail.prefixed]
filter = "prefixed"
maxretry = 4
port = "smtp"
"#,
        filters.display()
    );
    let config = write_config(dir.path(), journal.path(), &table, &jails);
    journal.start_live();
    let banjo = Banjo::start(&ns, &config);
    for _ in 0..3 {
        journal.append(&Entry::smtpd(now_micros(), &flood("203.0.113.77")));
    }
    assert!(banjo.logged(&["Found 203.0.113.77"]), "{:?}", banjo.log());
    assert!(banned_ips(&ns, &table, "postfix-flood-attack").is_empty());
    journal.append(&Entry::smtpd(now_micros(), &flood("203.0.113.77")));
    assert!(
        eventually(Duration::from_secs(5), || banned_ips(
            &ns,
            &table,
            "postfix-flood-attack"
        ) == sorted(&["203.0.113.77"])
            && banned_ips(&ns, &table, "prefixed") == sorted(&["203.0.113.77"])),
        "{:?}",
        banjo.log()
    );
}
