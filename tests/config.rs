//! `banjo config check` and `banjo run` on broken configurations: one line
//! `PATH:LINE: jail NAME: what is wrong`, exit code 2, nothing started.

use std::process::Command;

use crate::util::{banjo_bin, TempDir};

const GOOD: &str = r#"
[defaults]
ignoreip = ["127.0.0.1/8", "::1"]

[jail.postfix-flood-attack]
failregex = ['lost connection after AUTH from (.*)\[<HOST>\]']
bantime = "10m"
maxretry = 4
port = "http,https,smtp,submission,pop3,pop3s,imap,imaps,sieve"
protocol = "tcp"

[jail.postfix]
filter = "postfix"
maxretry = 3
bantime = "1h"
port = "smtp,submission"
"#;

/// Runs `banjo ARGS --config FILE` on `text`; returns (exit code, stdout, stderr, path).
fn banjo_on(args: &[&str], text: &str) -> (i32, String, String, String) {
    let dir = TempDir::new("config");
    let path = dir.path().join("banjo.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(banjo_bin())
        .args(args)
        .arg("--config")
        .arg(&path)
        .env("BANJO_LOG_STDERR", "1")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}

/// Replaces the first occurrence of `from` in the good config.
fn broken(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "fixture lacks {from:?}");
    GOOD.replacen(from, to, 1)
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in config"))
}

fn assert_one_line_error(text: &str, needle: &str, jail: &str, what: &str) {
    for args in [&["config", "check"][..], &["run"][..]] {
        let (code, _, stderr, path) = banjo_on(args, text);
        assert_eq!(code, 2, "banjo {args:?}: exit code; stderr: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let expected = format!("{path}:{}: jail {jail}: ", line_of(text, needle));
        let hit = lines.iter().filter(|l| l.contains(&expected)).count();
        assert_eq!(
            hit, 1,
            "banjo {args:?}: want one line with {expected:?}, got {lines:?}"
        );
        assert!(
            stderr.contains(what),
            "banjo {args:?}: {stderr:?} should mention {what:?}"
        );
        if args == ["config", "check"] {
            assert_eq!(lines.len(), 1, "exactly one line: {lines:?}");
        }
    }
}

#[test]
fn good_config_checks_and_prints_resolved_jails() {
    let (code, stdout, stderr, _) = banjo_on(&["config", "check"], GOOD);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("[jail.postfix-flood-attack]"), "{stdout}");
    assert!(stdout.contains("maxretry     = 4"), "{stdout}");
    assert!(stdout.contains("bantime      = 600s"), "{stdout}");
    assert!(
        stdout.contains("port         = 80,443,25,587,110,995,143,993,4190/tcp"),
        "{stdout}"
    );
    assert!(stdout.contains("bantime      = 3600s"), "{stdout}");
    assert!(
        stdout.contains("_SYSTEMD_UNIT=postfix.service _SYSTEMD_UNIT=postfix@-.service"),
        "{stdout}"
    );
    assert!(stdout.contains("127.0.0.0/8 ::1/128"), "{stdout}");
}

#[test]
fn unknown_key() {
    let text = broken("maxretry = 4", "maxretry = 4\nbantim = \"1h\"");
    assert_one_line_error(
        &text,
        "bantim =",
        "postfix-flood-attack",
        "unknown field `bantim`",
    );
}

#[test]
fn bad_duration() {
    let text = broken("bantime = \"1h\"", "bantime = \"1 fortnight\"");
    assert_one_line_error(&text, "1 fortnight", "postfix", "is not a duration");
}

#[test]
fn broken_regex() {
    let text = broken(
        r"failregex = ['lost connection after AUTH from (.*)\[<HOST>\]']",
        r"failregex = ['lost connection after AUTH from (.*\[<HOST>\]']",
    );
    assert_one_line_error(&text, "failregex", "postfix-flood-attack", "failregex");
}

#[test]
fn unknown_port_name() {
    let text = broken("port = \"smtp,submission\"", "port = \"smtp,submision\"");
    assert_one_line_error(
        &text,
        "submision",
        "postfix",
        "unknown port name \"submision\"",
    );
}

#[test]
fn missing_failregex() {
    let text = broken(
        "failregex = ['lost connection after AUTH from (.*)\\[<HOST>\\]']\n",
        "",
    );
    assert_one_line_error(
        &text,
        "[jail.postfix-flood-attack]",
        "postfix-flood-attack",
        "at least one failregex",
    );
}

#[test]
fn empty_failregex_list() {
    let text = broken(
        r"failregex = ['lost connection after AUTH from (.*)\[<HOST>\]']",
        "failregex = []",
    );
    assert_one_line_error(
        &text,
        "failregex = []",
        "postfix-flood-attack",
        "at least one failregex",
    );
}

#[test]
fn failregex_without_host_tag() {
    let text = broken(
        r"failregex = ['lost connection after AUTH from (.*)\[<HOST>\]']",
        r"failregex = ['lost connection after AUTH from (.*)']",
    );
    assert_one_line_error(&text, "failregex", "postfix-flood-attack", "<HOST>");
}

#[test]
fn bad_ignoreip_in_defaults_names_the_defaults_line() {
    let text = GOOD.replacen("\"::1\"]", "\"::1\", \"10.0.0.300\"]", 1);
    let (code, _, stderr, path) = banjo_on(&["config", "check"], &text);
    assert_eq!(code, 2);
    assert!(
        stderr.starts_with(&format!("{path}:{}: ", line_of(&text, "10.0.0.300"))),
        "{stderr}"
    );
}

#[test]
fn missing_file_is_a_config_error() {
    let out = Command::new(banjo_bin())
        .args(["config", "check", "--config", "/nonexistent/banjo.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/banjo.toml"));
}

#[test]
fn shipped_config_checks() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/banjo.toml");
    let out = Command::new(banjo_bin())
        .args(["config", "check", "--config", path])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("[jail.postfix-flood-attack]"));
    assert!(stdout.contains("[jail.postfix]"));
}

#[test]
fn conf_d_drop_ins_merge_in_name_order_and_errors_name_the_drop_in() {
    let dir = TempDir::new("confd");
    let path = dir.path().join("banjo.toml");
    std::fs::write(&path, GOOD).unwrap();
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    std::fs::write(
        dir.path().join("conf.d/20-later.toml"),
        "[jail.postfix]\nmaxretry = 7\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("conf.d/10-sshd.toml"),
        "[jail.postfix]\nmaxretry = 6\nbantime = \"2h\"\n\n[jail.sshd]\njournalmatch = [\"_SYSTEMD_UNIT=ssh.service\"]\nfailregex = ['Invalid user \\S* from <HOST> port \\d+']\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("conf.d/README"), "not toml, ignored").unwrap();
    let check = || {
        Command::new(banjo_bin())
            .args(["config", "check", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("[jail.sshd]"), "{stdout}");
    let postfix = stdout.split("[jail.postfix]").nth(1).unwrap();
    assert!(postfix.contains("maxretry     = 7"), "{postfix}");
    assert!(postfix.contains("bantime      = 7200s"), "{postfix}");

    std::fs::write(
        dir.path().join("conf.d/20-later.toml"),
        "[jail.postfix]\n\nmaxretry = \"many\"\n",
    )
    .unwrap();
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    let dropin = dir.path().join("conf.d/20-later.toml");
    assert!(
        stderr.starts_with(&format!("{}:3: jail postfix: ", dropin.display())),
        "{stderr}"
    );
}

#[test]
fn banjo_check_reads_journal_files_with_a_fail2ban_filter() {
    if !crate::util::root_or_skip("banjo_check_reads_journal_files_with_a_fail2ban_filter") {
        return;
    }
    use crate::util::{now_micros, Entry, JournalDir};
    let journal = JournalDir::new();
    let t = now_micros();
    let mut entries = vec![
        Entry::smtpd(t, "lost connection after AUTH from unknown[192.0.2.1]"),
        Entry::smtpd(t + 1, "connect from unknown[192.0.2.1]"),
        Entry::smtpd(
            t + 2,
            "lost connection after AUTH from unknown[2001:db8::2]",
        ),
    ];
    let mut other = Entry::smtpd(t + 3, "lost connection after AUTH from unknown[192.0.2.9]");
    other.unit = "other.service".into();
    entries.push(other);
    journal.write_file("a", &entries);
    let out = Command::new(banjo_bin())
        .args(["check", "--filter"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/conformance/tutorial/filter.d/postfix-flood-attack.conf"
        ))
        .args(["--journal", "--journal-dir"])
        .arg(journal.path())
        .args(["--json", "_SYSTEMD_UNIT=postfix@-.service"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v.get("summary").is_some())
        .unwrap_or_else(|| panic!("no summary: {stdout}"));
    assert_eq!(summary["summary"]["lines"], 3, "{stdout}");
    assert_eq!(summary["summary"]["matched"], 2, "{stdout}");
    assert!(stdout.contains("\"host\":\"2001:db8::2\""), "{stdout}");
    assert!(!stdout.contains("192.0.2.9"), "{stdout}");
}
