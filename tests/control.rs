//! The control socket and the ban policy through it, on real nftables in
//! a network namespace: `banjo status/ban/unban/reload/stats`,
//! escalation, restore after a reboot, reload, permissions, a corrupt
//! state file.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Runs `banjo ARGS --config CONFIG`; (exit code, stdout, stderr).
fn cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    cli_as(config, args, None)
}

fn cli_as(config: &Path, args: &[&str], user: Option<(u32, u32)>) -> (i32, String, String) {
    let mut cmd = match user {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg(banjo_bin());
            c
        }
        None => Command::new(banjo_bin()),
    };
    let out = cmd.args(args).arg("--config").arg(config).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(config: &Path, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let (code, stdout, stderr) = cli(config, &args);
    assert_eq!(code, 0, "banjo {args:?}: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn flood(ip: &str) -> String {
    format!("lost connection after AUTH from unknown[{ip}]")
}

const JAILS: &str = r#"
[jail.mail]
failregex = ['lost connection after AUTH from (.*)\[<HOST>\]']
maxretry = 2
bantime = "1h"
port = "smtp"

[jail.other]
failregex = ['other failure from <HOST>']
maxretry = 1
bantime = "3s"
port = "smtp"
"#;

#[test]
fn status_ban_unban_stats_through_the_socket() {
    if !root_or_skip("status_ban_unban_stats_through_the_socket") {
        return;
    }
    let Scene {
        ns,
        mut journal,
        dir: _dir,
        table,
        config,
    } = Scene::new("ctl", JAILS);
    journal.start_live();
    let banjo = Banjo::start(&ns, &config);
    journal.append(&Entry::smtpd(now_micros(), &flood("203.0.113.5")));
    journal.append(&Entry::smtpd(now_micros(), &flood("203.0.113.6")));
    journal.append(&Entry::smtpd(now_micros(), &flood("203.0.113.6")));
    await_bans(&ns, &table, "mail", &banjo, |b| b == [ip("203.0.113.6")]);

    // The documented shape of `banjo status --json`.
    let all = json(&config, &["status"]);
    assert_eq!(
        all,
        serde_json::json!({"jails": [
            {"name": "mail", "currently_failed": 1, "total_failed": 3, "currently_banned": 1, "total_banned": 1,
             "refused": {"packets": 0, "bytes": 0}},
            {"name": "other", "currently_failed": 0, "total_failed": 0, "currently_banned": 0, "total_banned": 0,
             "refused": {"packets": 0, "bytes": 0}},
        ]})
    );
    let one = json(&config, &["status", "mail"]);
    assert_eq!(one["banned"][0]["ip"], "203.0.113.6");
    assert_eq!(one["banned"][0]["timeout"], 3600);
    assert_eq!(one["banned"][0]["bans"], 1);
    assert!(one["banned"][0]["expires"]
        .as_u64()
        .is_some_and(|e| e > 3590));

    // Manual ban with its own duration, v4 and v6, then unban.
    let (code, _, err) = cli(
        &config,
        &["ban", "mail", "192.0.2.7", "2001:db8::7", "--for", "90s"],
    );
    assert_eq!(code, 0, "{err}");
    let listed = nft_elements(&ns, &table, "mail_v6");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].timeout, Some(90));
    assert_eq!(
        banned_ips(&ns, &table, "mail"),
        vec![ip("192.0.2.7"), ip("203.0.113.6"), ip("2001:db8::7")]
    );
    let (code, _, err) = cli(&config, &["unban", "192.0.2.7", "2001:db8::7"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(banned_ips(&ns, &table, "mail"), vec![ip("203.0.113.6")]);
    // Unbanning what is not banned is an error (exit 1), not a silent success.
    let (code, _, err) = cli(&config, &["unban", "192.0.2.7"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not banned"), "{err}");
    // Unknown jail, bad address, bad duration: refused with the reason.
    let (code, _, err) = cli(&config, &["ban", "nosuch", "192.0.2.8"]);
    assert_eq!(code, 1);
    assert!(err.contains("no jail \"nosuch\""), "{err}");
    let (code, _, err) = cli(&config, &["ban", "mail", "192.0.2.300"]);
    assert_eq!(code, 1);
    assert!(err.contains("not an IP address"), "{err}");
    let (code, _, err) = cli(&config, &["ban", "mail", "192.0.2.8", "--for", "soon"]);
    assert_eq!(code, 1);
    assert!(err.contains("not a duration"), "{err}");

    let stats = json(&config, &["stats"]);
    assert_eq!(stats["failures"], 3);
    assert_eq!(stats["bans"], 3);
    assert_eq!(stats["unbans"], 2);
    assert!(stats["lines"].as_u64().is_some_and(|n| n >= 4), "{stats}");
    // A human table on request too.
    let (code, table_out, _) = cli(&config, &["status", "mail"]);
    assert_eq!(code, 0);
    assert!(table_out.contains("203.0.113.6"), "{table_out}");
}

#[test]
fn group_members_may_read_but_not_ban_and_others_cannot_connect() {
    if !root_or_skip("group_members_may_read_but_not_ban_and_others_cannot_connect") {
        return;
    }
    let ns = Netns::new();
    let journal = JournalDir::new();
    let dir = TempDir::new("perm");
    let table = unique("t");
    // The socket lives in a directory everyone may traverse.
    let mut perms = std::fs::metadata(dir.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(dir.path(), perms).unwrap();
    let config = write_config(dir.path(), journal.path(), &table, JAILS);
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[daemon]\n",
        "[daemon]\nsocket_group = \"nogroup\"\n",
        1,
    );
    std::fs::write(&config, text).unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let _banjo = Banjo::start(&ns, &config);
    let nogroup = nix::unistd::Group::from_name("nogroup")
        .unwrap()
        .unwrap()
        .gid
        .as_raw();

    let member = Some((65534, nogroup));
    let (code, out, err) = cli_as(&config, &["status", "--json"], member);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"jails\""), "{out}");
    let (code, _, err) = cli_as(&config, &["ban", "mail", "192.0.2.9"], member);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("permission denied"), "{err}");
    let (code, _, err) = cli_as(&config, &["unban", "192.0.2.9"], member);
    assert_eq!(code, 4, "{err}");
    assert!(banned_ips(&ns, &table, "mail").is_empty());
    // Membership through a supplementary group counts too (SO_PEERGROUPS).
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65533"])
        .arg(format!("--groups={nogroup}"))
        .arg(banjo_bin())
        .args(["status", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Neither root nor in the group: the socket's mode keeps it out.
    let (code, _, err) = cli_as(&config, &["status"], Some((65534, 65533)));
    assert_eq!(code, 3, "{err}");
}

#[test]
fn escalation_is_visible_as_kernel_timeouts() {
    if !root_or_skip("escalation_is_visible_as_kernel_timeouts") {
        return;
    }
    let jails = r#"
[jail.esc]
failregex = ['lost connection after AUTH from (.*)\[<HOST>\]']
maxretry = 1
bantime = "100s"
bantime_increment = true
bantime_multipliers = "1 3 5"
bantime_factor = 2
bantime_maxtime = "800s"
port = "smtp"
"#;
    let Scene {
        ns,
        mut journal,
        dir: _dir,
        table,
        config,
    } = Scene::new("esc", jails);
    journal.start_live();
    let banjo = Banjo::start(&ns, &config);
    // 100 × 1 × 2, then 100 × 3 × 2, then 100 × 5 × 2 = 1000 capped at 800.
    for want in [200, 600, 800] {
        journal.append(&Entry::smtpd(now_micros(), &flood("203.0.113.40")));
        assert!(
            eventually(Duration::from_secs(5), || nft_elements(
                &ns, &table, "esc_v4"
            )
            .first()
            .is_some_and(|e| e.timeout == Some(want))),
            "want timeout {want}: {:?}\n{}",
            nft_elements(&ns, &table, "esc_v4"),
            banjo.log().join("\n")
        );
        let (code, _, err) = cli(&config, &["unban", "203.0.113.40"]);
        assert_eq!(code, 0, "{err}");
    }
    let status = json(&config, &["status", "esc"]);
    assert_eq!(status["total_banned"], 3);
}

#[test]
fn reboot_restores_unexpired_bans_with_their_remaining_time() {
    if !root_or_skip("reboot_restores_unexpired_bans_with_their_remaining_time") {
        return;
    }
    let Scene {
        ns,
        journal: _journal,
        dir: _dir,
        table,
        config,
    } = Scene::new("reboot", JAILS);
    let mut banjo = Banjo::start(&ns, &config);
    assert_eq!(cli(&config, &["ban", "mail", "203.0.113.60"]).0, 0);
    assert_eq!(
        cli(&config, &["ban", "mail", "203.0.113.61", "--for", "-1"]).0,
        0
    );
    assert_eq!(cli(&config, &["ban", "other", "203.0.113.62"]).0, 0); // 3 s
    let banned_at = Instant::now();
    assert!(banjo.stop().success());
    // A reboot: the kernel forgets everything.
    ns.exec("nft", &["delete", "table", "inet", &table]);
    std::thread::sleep(Duration::from_millis(3500));
    let banjo = Banjo::start(&ns, &config);
    // READY has been sent: the bans must be back already.
    let mail = nft_elements(&ns, &table, "mail_v4");
    let elapsed = banned_at.elapsed().as_secs();
    let timed = mail
        .iter()
        .find(|e| e.ip == ip("203.0.113.60"))
        .expect("restored");
    assert_eq!(timed.timeout, Some(3600));
    let left = timed.expires.unwrap_or(0);
    assert!(
        (3600 - elapsed - 1..=3600 - elapsed + 1).contains(&left),
        "expires {left}s after {elapsed}s"
    );
    let permanent = mail
        .iter()
        .find(|e| e.ip == ip("203.0.113.61"))
        .expect("restored");
    assert_eq!(permanent.timeout, None);
    assert!(
        nft_elements(&ns, &table, "other_v4").is_empty(),
        "expired ban restored"
    );
    assert!(banjo.logged(&["2 bans restored"]), "{:?}", banjo.log());
}

#[test]
fn reload_keeps_the_old_config_on_error_and_applies_a_good_one() {
    if !root_or_skip("reload_keeps_the_old_config_on_error_and_applies_a_good_one") {
        return;
    }
    let Scene {
        ns,
        mut journal,
        dir: _dir,
        table,
        config,
    } = Scene::new("reload", JAILS);
    let good = std::fs::read_to_string(&config).unwrap();
    journal.start_live();
    let mut banjo = Banjo::start(&ns, &config);
    assert_eq!(cli(&config, &["ban", "mail", "203.0.113.70"]).0, 0);

    // A broken config: the reload is refused with the PATH:LINE error...
    std::fs::write(&config, good.replace("maxretry = 2", "maxretry = \"two\"")).unwrap();
    let (code, _, err) = cli(&config, &["reload"]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("{}:", config.display())), "{err}");
    // ...and the old jails keep banning (a SIGHUP likewise).
    banjo.signal(nix::sys::signal::Signal::SIGHUP);
    journal.append(&Entry::smtpd(now_micros(), &flood("203.0.113.71")));
    journal.append(&Entry::smtpd(now_micros(), &flood("203.0.113.71")));
    await_bans(&ns, &table, "mail", &banjo, |b| {
        b.contains(&ip("203.0.113.71"))
    });

    // A good one: jail `other` removed (its sets go), `extra` added.
    let next = good.replace(
        "[jail.other]\nfailregex = ['other failure from <HOST>']",
        "[jail.extra]\nfailregex = ['extra failure from <HOST>']",
    );
    std::fs::write(&config, next).unwrap();
    let (code, _, err) = cli(&config, &["reload"]);
    assert_eq!(code, 0, "{err}");
    banjo.wait_for("READY=1", Duration::from_secs(5));
    let sets = ns.exec("nft", &["list", "table", "inet", &table]);
    assert!(!sets.contains("other_v4"), "{sets}");
    assert!(sets.contains("extra_v4"), "{sets}");
    // Bans of the surviving jail are kept.
    assert!(banned_ips(&ns, &table, "mail").contains(&ip("203.0.113.70")));
    journal.append(&Entry::smtpd(
        now_micros(),
        "extra failure from 203.0.113.72",
    ));
    await_bans(&ns, &table, "extra", &banjo, |b| b == [ip("203.0.113.72")]);
}

#[test]
fn a_corrupt_state_file_is_moved_aside_and_banjo_starts() {
    if !root_or_skip("a_corrupt_state_file_is_moved_aside_and_banjo_starts") {
        return;
    }
    let Scene {
        ns,
        journal: _journal,
        dir,
        table: _table,
        config,
    } = Scene::new("corrupt", JAILS);
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::fs::write(dir.path().join("state/state.json"), b"\0\0garbage{").unwrap();
    let banjo = Banjo::start(&ns, &config);
    assert!(dir.path().join("state/state.json.corrupt").exists());
    assert!(
        banjo.logged(&["unusable state", "moved to"]),
        "{:?}",
        banjo.log()
    );
}

#[test]
fn flushed_ruleset_is_rebuilt_with_its_bans_within_a_second() {
    if !root_or_skip("flushed_ruleset_is_rebuilt_with_its_bans_within_a_second") {
        return;
    }
    let Scene {
        ns,
        journal: _journal,
        dir: _dir,
        table,
        config,
    } = Scene::new("heal", JAILS);
    let banjo = Banjo::start(&ns, &config);
    assert_eq!(
        cli(&config, &["ban", "mail", "203.0.113.80", "203.0.113.81"]).0,
        0
    );
    assert_eq!(
        cli(&config, &["ban", "other", "2001:db8::80", "--for", "1h"]).0,
        0
    );
    for how in [
        vec!["flush", "ruleset"],
        vec!["delete", "table", "inet", &table],
        vec!["flush", "chain", "inet", &table, "input"],
    ] {
        let t0 = Instant::now();
        ns.exec("nft", &how);
        let healed = eventually(Duration::from_secs(3), || {
            banned_ips(&ns, &table, "mail") == vec![ip("203.0.113.80"), ip("203.0.113.81")]
                && banned_ips(&ns, &table, "other") == vec![ip("2001:db8::80")]
                && ns
                    .exec("nft", &["list", "chain", "inet", &table, "input"])
                    .contains("mail_v4")
        });
        let took = t0.elapsed();
        println!(
            "self-healing after `nft {}`: {:.0} ms",
            how.join(" "),
            took.as_secs_f64() * 1e3
        );
        assert!(
            healed && took < Duration::from_secs(1),
            "{how:?}: {took:?} {:?}",
            banjo.log()
        );
        // The remaining time is kept, not restarted.
        let e = nft_elements(&ns, &table, "other_v6");
        assert!(e[0].expires.is_some_and(|x| x <= 3600), "{e:?}");
    }
    assert!(banjo.logged(&["changed behind banjo's back"]));

    // Deleting one element by hand is a manual unban: not put back.
    ns.exec(
        "nft",
        &[
            "delete",
            "element",
            "inet",
            &table,
            "mail_v4",
            "{ 203.0.113.80 }",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(banned_ips(&ns, &table, "mail"), vec![ip("203.0.113.81")]);
    assert!(
        banjo.logged(&["Unban 203.0.113.80 (removed from the set by hand)"]),
        "{:?}",
        banjo.log()
    );
    let status = json(&config, &["status", "mail"]);
    assert_eq!(status["currently_banned"], 1);
}

#[test]
fn three_addresses_of_one_64_ban_the_whole_prefix() {
    if !root_or_skip("three_addresses_of_one_64_ban_the_whole_prefix") {
        return;
    }
    let jails = r#"
[jail.six]
failregex = ['lost connection after AUTH from (.*)\[<HOST>\]']
maxretry = 1
bantime = "1h"
ipv6_prefix = 64
ipv6_prefix_threshold = 3
port = "smtp"
"#;
    let Scene {
        ns,
        mut journal,
        dir: _dir,
        table,
        config,
    } = Scene::new("v6net", jails);
    journal.start_live();
    let banjo = Banjo::start(&ns, &config);
    for a in ["2001:db8:7::1", "2001:db8:7::2", "2001:db8:8::1"] {
        journal.append(&Entry::smtpd(now_micros(), &flood(a)));
    }
    await_bans(&ns, &table, "six", &banjo, |b| b.len() == 3);
    let prefixes = ns.exec("nft", &["list", "set", "inet", &table, "six_v6net"]);
    assert!(
        !prefixes.contains("2001:db8:7::/64"),
        "two are not enough: {prefixes}"
    );
    journal.append(&Entry::smtpd(now_micros(), &flood("2001:db8:7::3")));
    assert!(
        eventually(Duration::from_secs(5), || ns
            .exec("nft", &["list", "set", "inet", &table, "six_v6net"])
            .contains("2001:db8:7::/64")),
        "{}",
        banjo.log().join("\n")
    );
    let status = json(&config, &["status", "six"]);
    let listed: Vec<&str> = status["banned"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["ip"].as_str())
        .collect();
    assert!(listed.contains(&"2001:db8:7::/64"), "{status}");
    assert_eq!(cli(&config, &["unban", "2001:db8:7::/64"]).0, 0);
    assert!(!ns
        .exec("nft", &["list", "set", "inet", &table, "six_v6net"])
        .contains("2001:db8:7::/64"));
}
