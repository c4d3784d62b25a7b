//! `banjo check` on log files: fail2ban-regex's job, through the binary.
//!
//! `--print-missed` makes `banjo check` look at every line; without it a
//! whole read block is first searched for the filter's required literals
//! and only the lines with a hit are matched. With `--json` the two print
//! the same thing (missed lines are not printed in JSON), which is what
//! these tests compare: the fast path must never change an answer.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::util::{banjo_bin, TempDir};

fn flood_filter() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/conformance/tutorial/filter.d/postfix-flood-attack.conf")
}

/// `banjo check LOG --filter FILTER --json [extra]`: the per-line objects
/// and the summary (without its timings).
fn check_json(log: &Path, filter: &Path, extra: &[&str]) -> (Vec<Value>, Value) {
    let out = Command::new(banjo_bin())
        .arg("check")
        .arg(log)
        .arg("--filter")
        .arg(filter)
        .arg("--json")
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "banjo check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = Vec::new();
    let mut summary = None;
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        match v.get("summary") {
            Some(s) => {
                let mut s = s.clone();
                if let Some(o) = s.as_object_mut() {
                    o.remove("elapsed_s");
                    o.remove("lines_per_s");
                }
                summary = Some(s);
            }
            None => lines.push(v),
        }
    }
    (lines, summary.expect("a summary object"))
}

#[test]
fn the_tutorial_filter_finds_the_tutorial_floods() {
    let log = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tutorial-mail.log");
    let text = std::fs::read_to_string(&log).unwrap();
    // What the filter must find, worked out here without a regex.
    let expected: Vec<(u64, String)> = text
        .lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let rest = l.split_once("lost connection after AUTH from ")?.1;
            let host = rest.rsplit_once('[')?.1.strip_suffix(']')?;
            Some((i as u64 + 1, host.to_string()))
        })
        .collect();
    assert!(expected.len() >= 5, "the fixture has floods");
    let (lines, summary) = check_json(&log, &flood_filter(), &[]);
    let got: Vec<(u64, String)> = lines
        .iter()
        .map(|v| {
            (
                v["line"].as_u64().unwrap(),
                v["host"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    assert_eq!(summary["lines"], text.lines().count());
    assert_eq!(summary["matched"], expected.len());
}

/// A log that exercises every path of the reader and the prefilter.
fn awkward_log(dir: &Path) -> PathBuf {
    let mut log = Vec::new();
    for i in 0..6000u32 {
        let (a, b) = (i / 250, i % 250 + 1);
        let line = match i % 7 {
            0 => format!("Dec 14 09:58:37 mail postfix/smtpd[1]: lost connection after AUTH from unknown[10.{a}.0.{b}]\n"),
            1 => format!("Dec 14 09:58:37 mail postfix/smtpd[1]: connect from unknown[10.{a}.1.{b}]\n"),
            // Windows line ends.
            2 => format!("Dec 14 09:58:38 mail postfix/smtpd[2]: lost connection after AUTH from x[10.{a}.2.{b}]\r\n"),
            // Not ASCII: these blocks are matched line by line.
            3 if i % 1000 == 3 => format!("Dec 14 09:58:39 mail postfix/smtpd[3]: lost connection after AUTH from ünknown[10.{a}.3.{b}]\n"),
            // The literal, but not a match.
            4 => "Dec 14 09:58:39 mail postfix/smtpd[3]: lost connection after AUTH from nowhere\n".to_string(),
            _ => format!("Dec 14 09:58:40 mail postfix/qmgr[4]: {i:08X}: removed\n"),
        };
        log.extend_from_slice(line.as_bytes());
        if i == 2500 {
            log.extend_from_slice(
                b"Dec 14 09:58:41 mail x: \xff\xfe lost connection after AUTH from a[10.9.9.9]\n",
            );
        }
        if i == 4000 {
            log.extend_from_slice(
                b"Dec 14 09:58:41 mail x: lost connection after AUTH from a[10.8.8.8] ",
            );
            log.extend(std::iter::repeat(b'x').take((1 << 20) + 10));
            log.push(b'\n');
        }
    }
    log.extend_from_slice(b"Dec 14 09:58:42 mail postfix/smtpd[5]: lost connection after AUTH from unknown[192.0.2.200]");
    let path = dir.join("awkward.log");
    std::fs::write(&path, log).unwrap();
    path
}

#[test]
fn the_literal_search_changes_no_answer() {
    let dir = TempDir::new("check");
    let log = awkward_log(dir.path());
    let (fast, fast_summary) = check_json(&log, &flood_filter(), &[]);
    let (slow, slow_summary) = check_json(&log, &flood_filter(), &["--print-missed"]);
    assert_eq!(fast.len(), slow.len());
    assert_eq!(fast, slow);
    assert_eq!(fast_summary, slow_summary);
    // 6000 generated lines, the invalid one, the long one, the last one.
    assert_eq!(fast_summary["lines"], 6003);
    assert_eq!(fast_summary["skipped_not_utf8"], 1);
    assert_eq!(fast_summary["skipped_too_long"], 1);
    let hosts: Vec<&str> = fast.iter().filter_map(|v| v["host"].as_str()).collect();
    assert!(hosts.contains(&"192.0.2.200"), "the unterminated last line");
    assert!(hosts.contains(&"10.0.3.4"), "a line that is not ASCII");
    assert!(hosts.contains(&"10.0.2.3"), "a CRLF line");
    assert!(!hosts.contains(&"10.9.9.9") && !hosts.contains(&"10.8.8.8"));
    // Every generated flood line, and nothing else.
    let floods = (0..6000)
        .filter(|i| matches!(i % 7, 0 | 2) || (i % 7 == 3 && i % 1000 == 3))
        .count()
        + 1;
    assert_eq!(fast.len(), floods);
}

/// A filter with a prefregex and two failregexes, written into `dir`.
fn prefregex_filter(dir: &Path) -> PathBuf {
    let filter = dir.join("pref.conf");
    std::fs::write(
        &filter,
        "[Definition]\n\
         prefregex = ^\\s*\\S+ postfix/smtpd\\[\\d+\\]: <F-CONTENT>.+</F-CONTENT>$\n\
         failregex = ^lost connection after (?:AUTH|DATA) from [^[]*\\[<HOST>\\]\n\
         \x20           ^connect from \\S+\\[<HOST>\\]\n",
    )
    .unwrap();
    filter
}

#[test]
fn a_filter_with_a_prefregex_gives_the_same_answers_both_ways() {
    let dir = TempDir::new("check");
    let log = awkward_log(dir.path());
    let filter = prefregex_filter(dir.path());
    let (fast, fast_summary) = check_json(&log, &filter, &[]);
    let (slow, slow_summary) = check_json(&log, &filter, &["--print-missed"]);
    assert_eq!(fast, slow);
    assert_eq!(fast_summary, slow_summary);
    assert!(
        fast.iter().any(|v| v["failregex"] == 1),
        "connect lines match"
    );
    assert!(fast.iter().any(|v| v["failregex"] == 0), "floods match");
}

#[test]
fn lines_that_mostly_match_give_the_same_answers_both_ways() {
    // Most lines with a literal hit match here, so after its first 2048
    // such lines each worker stops running the combined DFA before the
    // exact match (the prefregex, then each failregex in order).
    let dir = TempDir::new("check");
    let mut log = String::new();
    for i in 0..40_000u32 {
        let (a, b) = (i / 250 % 250, i % 250 + 1);
        log.push_str(&match i % 8 {
            0..=3 => format!("Dec 14 09:58:37 mail postfix/smtpd[1]: lost connection after AUTH from unknown[10.{a}.0.{b}]\n"),
            4 | 5 => format!("Dec 14 09:58:37 mail postfix/smtpd[1]: connect from unknown[10.{a}.1.{b}]\n"),
            6 => "Dec 14 09:58:39 mail postfix/smtpd[3]: lost connection after DATA from nowhere\n".to_string(),
            _ => format!("Dec 14 09:58:40 mail postfix/qmgr[4]: {i:08X}: removed\n"),
        });
    }
    let path = dir.path().join("mostly.log");
    std::fs::write(&path, log).unwrap();
    let filter = prefregex_filter(dir.path());
    let (fast, fast_summary) = check_json(&path, &filter, &[]);
    let (slow, slow_summary) = check_json(&path, &filter, &["--print-missed"]);
    assert_eq!(fast, slow);
    assert_eq!(fast_summary, slow_summary);
    assert_eq!(fast.len(), 30_000);
    assert_eq!(
        fast_summary["failregex"],
        serde_json::json!([20_000, 10_000])
    );
    // Without --json the totals are counted without line numbers.
    let text = |extra: &[&str]| {
        let out = Command::new(banjo_bin())
            .arg("check")
            .arg(&path)
            .arg("--filter")
            .arg(&filter)
            .args(extra)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        out.lines()
            .filter(|l| l.starts_with("Lines:") || l.starts_with("Hosts:"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let fast_text = text(&[]);
    assert_eq!(fast_text, text(&["--print-missed"]));
    assert_eq!(
        fast_text,
        [
            "Lines: 40000 read, 30000 matched, 0 ignored, 10000 missed",
            "Hosts: 30000 distinct"
        ]
    );
}
