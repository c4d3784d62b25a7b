//! Conformance with fail2ban's own filter test suite.
//!
//! fail2ban ships, next to each stock filter, a sample log whose lines are
//! annotated (`# failJSON: {"match": true, "host": ..., "time": ...}`)
//! with what the filter must make of them, in each filter mode the file
//! declares (`# filterOptions:`). This test takes Debian's fail2ban package
//! (`apt-get download fail2ban`, unpacked with `dpkg -x` into a cache
//! under the target directory: nothing is installed or started), loads
//! every stock filter through banjo's fail2ban reader, and evaluates every
//! annotation with banjo's matcher: whether the line matches, the host,
//! and the time read from the line (fail2ban's test time zone, CET/CEST,
//! and its "now", 2005-08-14 12:00 local).
//!
//! Lines are matched as fail2ban's daemon matches them (the first
//! failregex that matches decides). Cases banjo is known to get wrong
//! are listed, each with its reason, in `tests/conformance/known-failures`;
//! the test fails when an unlisted case fails or a listed one passes.
//! It also checks banjo's built-in `postfix` filter against the annotations
//! of fail2ban's `postfix` filter in its default mode, on the journal
//! MESSAGE part of each line.
//!
//! Run with `--nocapture` to see the tables. Without network or apt the
//! test prints why it skips.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use banjo::config::Config;
use banjo::fail2ban::date::{days_from_civil, Civil, DateDetector, Stamp};
use banjo::fail2ban::{self, ImportedFilter};
use banjo::filter::{Cache, Detail, Filter, Outcome};
use banjo::jail::{FilterInput, Jail, JailSet};
use serde_json::Value;

/// fail2ban's test clock: 2005-08-14 10:00:00 UTC, 12:00 in CEST.
const TEST_NOW: i64 = 1_124_013_600;
const NOW_LOCAL: Civil = (2005, 8, 14, 12, 0, 0);

fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

/// Debian's fail2ban package, unpacked (cached between runs).
fn package() -> Result<PathBuf, String> {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fail2ban-deb");
    let root = cache.join("root");
    if root.join("etc/fail2ban/filter.d").is_dir() {
        return Ok(root);
    }
    std::fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let download = || {
        Command::new("apt-get")
            .args(["download", "-q", "fail2ban"])
            .current_dir(&cache)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !download() {
        // A machine whose package lists were never fetched: fetch them.
        let root_user = nix::unistd::geteuid().is_root();
        let updated = root_user
            && Command::new("apt-get")
                .args(["update", "-qq"])
                .status()
                .is_ok_and(|s| s.success());
        if !updated || !download() {
            return Err("`apt-get download fail2ban` failed (no network or no apt?)".into());
        }
    }
    let deb = std::fs::read_dir(&cache)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("fail2ban_"))
        })
        .ok_or("no fail2ban_*.deb after apt-get download")?;
    let tmp = cache.join("root.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let ok = Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(&tmp)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return Err(format!("dpkg -x {} failed", deb.display()));
    }
    std::fs::rename(&tmp, &root).map_err(|e| e.to_string())?;
    Ok(root)
}

/// A jail running `filter`, built from a valid configuration so that it
/// carries every field a jail has.
fn jail_with(filter: &ImportedFilter) -> Jail {
    let base = Config::parse(
        Path::new("conformance.toml"),
        "[jail.t]\nfailregex = ['x <HOST>']\n",
    )
    .unwrap()
    .jails
    .remove(0);
    Jail {
        failregex: filter.failregex.clone(),
        ignoreregex: filter.ignoreregex.clone(),
        input: FilterInput::Fail2banLine,
        ..base
    }
}

/// One filter configuration of a sample file (a `filterOptions` entry).
struct Set {
    /// Case prefix: `postfix[mode=auth]`.
    id: String,
    opts: BTreeMap<String, String>,
    logtype: String,
    prefix_line: String,
    /// The compiled filter, or why it did not load.
    built: Result<(Filter, Cache, DateDetector), String>,
}

fn set_id(name: &str, opts: &BTreeMap<String, String>) -> String {
    if let Some(n) = opts.get("test.filter-name") {
        return format!("{name}{n}");
    }
    let args: Vec<String> = opts
        .iter()
        .filter(|(k, _)| !k.starts_with("test."))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if args.is_empty() {
        name.to_string()
    } else {
        format!("{name}[{}]", args.join(", "))
    }
}

fn build_set(name: &str, dir: &Path, opts: &BTreeMap<String, String>) -> Set {
    let args: Vec<(String, String)> = opts
        .iter()
        .filter(|(k, _)| !k.starts_with("test."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let built = (|| {
        let file = fail2ban::load_named(name, &args, dir, "file").map_err(|e| e.to_string())?;
        let filter = Filter::new(&[jail_with(&file.filter)]).map_err(|e| e.to_string())?;
        let dates = DateDetector::new(file.datepattern.as_deref())?;
        let cache = filter.cache();
        Ok((filter, cache, dates))
    })();
    Set {
        id: set_id(name, opts),
        logtype: opts
            .get("logtype")
            .cloned()
            .unwrap_or_else(|| "file".into()),
        prefix_line: opts.get("test.prefix-line").cloned().unwrap_or_default(),
        opts: opts.clone(),
        built,
    }
}

/// The few Python expressions the sample files use as conditions.
fn condition(expr: &str, name: &str, opts: &BTreeMap<String, String>) -> bool {
    let expr = expr.trim();
    let (lhs, op, rhs) = ["==", "!="]
        .iter()
        .find_map(|op| expr.split_once(op).map(|(l, r)| (l.trim(), *op, r.trim())))
        .unwrap_or_else(|| panic!("unsupported condition {expr:?}"));
    let unquote = |s: &str| s.trim_matches(|c| c == '\'' || c == '"').to_string();
    let left = if lhs == "name" {
        Some(name.to_string())
    } else if let Some(key) = lhs
        .strip_prefix("opts.get(")
        .and_then(|s| s.strip_suffix(')'))
    {
        opts.get(&unquote(key)).cloned()
    } else {
        panic!("unsupported condition {expr:?}")
    };
    let right = unquote(rhs);
    (left.as_deref() == Some(right.as_str())) == (op == "==")
}

fn json_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let s = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), s)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Local time in fail2ban's test zone (CET-01CEST-02,M3.5.0,M10.5.0) to
/// seconds since the epoch.
fn cet_to_epoch(c: Civil) -> i64 {
    let last_sunday = |y: i32, m: u32| {
        let last = days_from_civil(y, m, 31);
        // 1970-01-01 was a Thursday: weekday 0 = Sunday is (days + 4) % 7.
        last - (last + 4).rem_euclid(7)
    };
    let local = days_from_civil(c.0, c.1, c.2) * 86400
        + i64::from(c.3) * 3600
        + i64::from(c.4) * 60
        + i64::from(c.5);
    let dst_start = last_sunday(c.0, 3) * 86400 + 2 * 3600;
    let dst_end = last_sunday(c.0, 10) * 86400 + 3 * 3600;
    let offset = if (dst_start..dst_end).contains(&local) {
        7200
    } else {
        3600
    };
    local - offset
}

fn parse_json_time(t: &str) -> Option<i64> {
    let (date, time) = t.split_once('T')?;
    let d: Vec<u32> = date.split('-').filter_map(|x| x.parse().ok()).collect();
    let time = time.split('.').next()?;
    let h: Vec<u32> = time.split(':').filter_map(|x| x.parse().ok()).collect();
    if d.len() != 3 || h.len() != 3 {
        return None;
    }
    Some(cet_to_epoch((d[0] as i32, d[1], d[2], h[0], h[1], h[2])))
}

fn same_host(expected: &str, got: &str) -> bool {
    match (expected.parse::<IpAddr>(), got.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => expected == got,
    }
}

/// What banjo made of one sample line, or why it disagrees.
fn evaluate(set: &mut Set, line: &str, want: &BTreeMap<String, String>) -> Result<(), String> {
    let (filter, cache, dates) = set
        .built
        .as_mut()
        .map_err(|e| format!("filter refused: {e}"))?;
    let (text, time) = if set.logtype == "journal" {
        (format!("{}{line}", set.prefix_line), Some(TEST_NOW))
    } else {
        match dates.find(line) {
            Some(f) => {
                let time = match &f.stamp {
                    Stamp::Civil { offset: None, .. } => f.stamp.civil(NOW_LOCAL).map(cet_to_epoch),
                    other => other.epoch(NOW_LOCAL, 0).map(|e| e as i64),
                };
                (format!("{}{}", &line[..f.start], &line[f.end..]), time)
            }
            None => (line.to_string(), None),
        }
    };
    let mut out: Vec<Detail> = Vec::new();
    filter.scan_entry_details(cache, b"", text.as_bytes(), &JailSet::first(1), &mut out);
    let found = out
        .iter()
        .find(|d| matches!(d.hit.outcome, Outcome::Failure(_) | Outcome::NotAnAddress));
    let expected = want.get("match").is_some_and(|m| m == "true");
    match (expected, found) {
        (false, None) => Ok(()),
        (false, Some(d)) => Err(format!(
            "matched (failregex {}, host {:?}) but should not",
            d.hit.failregex, d.host
        )),
        (true, None) => Err("not matched".into()),
        (true, Some(d)) => {
            if let Some(h) = want.get("host") {
                let got = d.host.clone().unwrap_or_default();
                if !same_host(h, &got) {
                    return Err(format!("host {got:?}, expected {h:?}"));
                }
            }
            if let Some(t) = want.get("time") {
                let expected = parse_json_time(t).ok_or_else(|| format!("bad time {t:?}"))?;
                match time {
                    Some(got) if got == expected => {}
                    Some(got) => return Err(format!("time {got}, expected {expected} ({t})")),
                    None => return Err(format!("no time found, expected {t}")),
                }
            }
            Ok(())
        }
    }
}

#[derive(Default)]
struct Tally {
    cases: usize,
    passed: usize,
    failures: Vec<(String, String)>,
}

/// Runs one sample file (and the files it adds) for filter `name`.
fn run_samples(name: &str, dir: &Path, logs: &Path, tally: &mut BTreeMap<String, Tally>) {
    let mut sets: HashMap<String, Set> = HashMap::new();
    let mut current: Vec<String> = Vec::new();
    let mut common: BTreeMap<String, String> = BTreeMap::new();
    let mut files = vec![name.to_string()];
    let mut i = 0;
    while i < files.len() {
        let file = files[i].clone();
        i += 1;
        let path = if logs.join(&file).is_file() {
            logs.join(&file)
        } else {
            here().join(&file)
        };
        let bytes = std::fs::read(&path).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let lines: Vec<&str> = text.split('\n').collect();
        let mut ignore_block = false;
        let mut n = 0;
        while n < lines.len() {
            let raw = lines[n];
            n += 1;
            let mut want: BTreeMap<String, String> = BTreeMap::new();
            let trimmed = raw.trim_start_matches('#');
            let annotation = if raw.starts_with('#') {
                let t = trimmed.strip_prefix(' ').unwrap_or(trimmed);
                ["failJSON", "fileOptions", "filterOptions", "addFILE"]
                    .iter()
                    .find_map(|k| {
                        t.strip_prefix(k)
                            .and_then(|r| r.strip_prefix(':'))
                            .map(|r| (*k, r))
                    })
            } else {
                None
            };
            let lineno;
            let line: &str;
            if let Some((kind, json)) = annotation {
                let data: Value = serde_json::from_str(json.trim())
                    .unwrap_or_else(|e| panic!("{}:{n}: {e}", path.display()));
                match kind {
                    "fileOptions" => {
                        common = json_map(&data);
                        continue;
                    }
                    "filterOptions" => {
                        current.clear();
                        ignore_block = false;
                        let list = match &data {
                            Value::Array(v) => v.clone(),
                            other => vec![other.clone()],
                        };
                        for entry in list {
                            let mut opts = common.clone();
                            opts.extend(json_map(&entry));
                            if let Some(c) = opts.get("test.condition") {
                                ignore_block = !condition(c, name, &opts);
                            }
                            if !ignore_block {
                                let id = set_id(name, &opts);
                                sets.entry(id.clone())
                                    .or_insert_with(|| build_set(name, dir, &opts));
                                current.push(id);
                            }
                        }
                        continue;
                    }
                    "addFILE" => {
                        if let Some(f) = data.as_str() {
                            files.push(f.to_string());
                        }
                        continue;
                    }
                    _ => {
                        want = json_map(&data);
                        let Some(next) = lines.get(n) else { break };
                        line = next;
                        n += 1;
                        lineno = n;
                    }
                }
            } else if ignore_block || raw.starts_with('#') || raw.trim().is_empty() {
                continue;
            } else {
                line = raw;
                lineno = n;
            }
            if ignore_block {
                continue;
            }
            if current.is_empty() {
                let opts = BTreeMap::new();
                let id = set_id(name, &opts);
                sets.entry(id.clone())
                    .or_insert_with(|| build_set(name, dir, &opts));
                current.push(id);
            }
            let line = line.trim_end_matches(['\r', '\n']);
            for id in &current {
                let Some(set) = sets.get_mut(id) else {
                    continue;
                };
                if let Some(c) = want.get("constraint") {
                    if !condition(c, name, &set.opts) {
                        continue;
                    }
                }
                let t = tally.entry(name.to_string()).or_default();
                t.cases += 1;
                let case = format!("{} {file}:{lineno}", set.id);
                match evaluate(set, line, &want) {
                    Ok(()) => t.passed += 1,
                    Err(why) => t.failures.push((case, why)),
                }
            }
        }
    }
}

/// `case<TAB>reason` lines; `#` comments.
fn known_failures() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(here().join("known-failures")).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once('\t') {
            Some((c, r)) => (c.trim().to_string(), r.trim().to_string()),
            None => (l.trim().to_string(), String::new()),
        })
        .collect()
}

/// banjo's built-in postfix filter on the MESSAGE part of fail2ban's
/// postfix samples, against what fail2ban's default mode expects there:
/// (cases, caught, missed, extra).
fn builtin_postfix(logs: &Path) -> (usize, usize, Vec<String>, Vec<String>) {
    let config = Config::parse(
        Path::new("builtin.toml"),
        "[jail.postfix]\nfilter = \"postfix\"\n",
    )
    .unwrap();
    let filter = Filter::new(&config.jails).unwrap();
    let mut cache = filter.cache();
    let dates = DateDetector::new(None).unwrap();
    let text = std::fs::read_to_string(logs.join("postfix")).unwrap_or_default();
    let mut want: Option<BTreeMap<String, String>> = None;
    let (mut cases, mut caught) = (0, 0);
    let (mut missed, mut extra) = (Vec::new(), Vec::new());
    let mut in_default = true;
    for (n, line) in text.lines().enumerate() {
        if let Some(opts) = line.strip_prefix("# filterOptions:") {
            // The default mode: a set with no "mode" (or mode "more").
            let v: Value = serde_json::from_str(opts.trim()).unwrap_or(Value::Null);
            let list = match v {
                Value::Array(v) => v,
                other => vec![other],
            };
            in_default = list.iter().any(|o| {
                let m = json_map(o);
                matches!(m.get("mode").map(String::as_str), None | Some("more"))
            });
            continue;
        }
        if let Some(j) = line.strip_prefix("# failJSON:") {
            want = serde_json::from_str::<Value>(j.trim())
                .ok()
                .map(|v| json_map(&v));
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some(w) = want.take() else { continue };
        if !in_default {
            continue;
        }
        let rest = match dates.find(line) {
            Some(f) => &line[f.end..],
            None => line,
        };
        // `host ident[pid]: MESSAGE`
        let message = rest
            .trim_start()
            .split_once(' ')
            .and_then(|(_, r)| r.split_once(": "))
            .map_or(rest, |(_, m)| m);
        let mut hits = Vec::new();
        filter.scan(
            &mut cache,
            message.as_bytes(),
            &JailSet::first(1),
            &mut hits,
        );
        let got = hits.iter().find_map(|h| match h.outcome {
            Outcome::Failure(ip) => Some(ip),
            _ => None,
        });
        let expected = w.get("match").is_some_and(|m| m == "true");
        cases += 1;
        match (expected, got) {
            (true, Some(ip))
                if w.get("host")
                    .map_or(true, |h| same_host(h, &ip.to_string())) =>
            {
                caught += 1
            }
            (true, _) => missed.push(format!("postfix:{}: {message}", n + 1)),
            (false, Some(_)) => extra.push(format!("postfix:{}: {message}", n + 1)),
            (false, None) => caught += 1,
        }
    }
    (cases, caught, missed, extra)
}

#[test]
fn fail2ban_samples() {
    let root = match package() {
        Ok(r) => r,
        Err(why) => {
            eprintln!("conformance: skipped: {why}");
            return;
        }
    };
    let dir = root.join("etc/fail2ban/filter.d");
    let logs = root.join("usr/lib/python3/dist-packages/fail2ban/tests/files/logs");

    // Every stock filter loads for the journal, or is refused precisely.
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_suffix(".conf").map(str::to_string)
        })
        .filter(|n| n != "common")
        .collect();
    names.sort();
    let (mut loaded, mut refused) = (0, Vec::new());
    for name in &names {
        let r = fail2ban::load_filter(name, &dir)
            .map_err(|e| e.to_string())
            .and_then(|f| Filter::new(&[jail_with(&f)]).map_err(|e| e.to_string()));
        match r {
            Ok(_) => loaded += 1,
            Err(e) => refused.push(format!("{name}: {e}")),
        }
    }
    let libraries = refused.iter().filter(|r| r.contains("-common: ")).count();
    eprintln!(
        "stock filters: {} files in filter.d (common.conf aside): {loaded} load, {} refused, {libraries} are include-only (*-common.conf)",
        names.len(),
        refused.len() - libraries
    );
    for r in &refused {
        eprintln!("  refused: {r}");
        assert!(
            r.contains(".conf:") || r.contains(".local:") || r.contains(": jail"),
            "refusal without a place: {r}"
        );
    }

    let mut tally: BTreeMap<String, Tally> = BTreeMap::new();
    for name in &names {
        if logs.join(name).is_file() {
            run_samples(name, &dir, &logs, &mut tally);
        }
    }
    // The tutorial's flood filter, with its own annotated log.
    run_samples(
        "postfix-flood-attack",
        &here().join("tutorial/filter.d"),
        &here(),
        &mut tally,
    );

    let known = known_failures();
    let (mut cases, mut passed) = (0, 0);
    let mut unexpected = Vec::new();
    let mut failing = std::collections::BTreeSet::new();
    eprintln!("\n{:<28} {:>6} {:>6} {:>8}", "filter", "cases", "pass", "%");
    for (name, t) in &tally {
        cases += t.cases;
        passed += t.passed;
        eprintln!(
            "{name:<28} {:>6} {:>6} {:>7.1}%",
            t.cases,
            t.passed,
            100.0 * t.passed as f64 / t.cases.max(1) as f64
        );
        for (case, why) in &t.failures {
            failing.insert(case.clone());
            if !known.contains_key(case) {
                unexpected.push(format!("{case}\t{why}"));
            }
        }
    }
    let overall = 100.0 * passed as f64 / cases.max(1) as f64;
    eprintln!("{:<28} {cases:>6} {passed:>6} {overall:>7.1}%", "ALL");

    let (pcases, pcaught, missed, extra) = builtin_postfix(&logs);
    eprintln!(
        "\nbanjo's built-in postfix filter on fail2ban's postfix samples (default mode): {pcaught}/{pcases} agree"
    );
    for m in &missed {
        eprintln!("  missed: {m}");
    }
    for x in &extra {
        eprintln!("  extra:  {x}");
    }

    let stale: Vec<&String> = known.keys().filter(|k| !failing.contains(*k)).collect();
    for u in &unexpected {
        eprintln!("UNEXPECTED FAILURE: {u}");
    }
    for s in &stale {
        eprintln!("NOW PASSING (remove from known-failures): {s}");
    }
    for must in ["postfix", "sshd", "dovecot", "postfix-flood-attack"] {
        let t = tally
            .get(must)
            .unwrap_or_else(|| panic!("no samples for {must}"));
        assert!(
            t.failures.is_empty(),
            "{must} must pass all its cases: {:?}",
            t.failures
        );
    }
    assert!(
        unexpected.is_empty(),
        "{} unexpected failures",
        unexpected.len()
    );
    assert!(stale.is_empty(), "{} known failures now pass", stale.len());
    assert!(
        overall >= 97.0,
        "only {overall:.1}% of fail2ban's sample cases pass"
    );
    assert!(
        missed.is_empty(),
        "the built-in postfix filter misses failures fail2ban finds"
    );
}
