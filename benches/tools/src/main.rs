//! Measuring tools for benches/run.sh. Each subcommand prints one JSON
//! object on stdout.
//!
//! ```text
//! banjo-bench ceiling --dir DIR --config BANJO.TOML [--timestamp] [--extra-field NAME]...
//!     The raw sd_journal loop: open DIR with the jails' journalmatches,
//!     next() + get_data("MESSAGE") + banjo's Filter::scan for every jail,
//!     from the first entry to the last. The upper bound for ingestion.
//!     --timestamp and --extra-field add the reads banjo's reader also
//!     does per entry, to see what they cost.
//! banjo-bench latency --journal remote:DIR|journald:NS [--trials N]
//!         [--maxretry M] [--gap-ms G] [--pause-ms P] [--timeout-s T] [--net A] [--v6]
//!         [--background-ms B]
//!     Per trial, a fresh address writes M `lost connection after AUTH`
//!     lines G ms apart; the latency is from the write of the M-th line to
//!     the notification that the address was added to an nftables set.
//!     With B, a benign line every B ms throughout (other mail traffic).
//!     Through journald, also reports when journald stamped each M-th line
//!     (its __REALTIME_TIMESTAMP), to tell journald's share of a slow
//!     trial from the reader's. Run it inside the daemon's network namespace.
//! banjo-bench scan-file --file SYSLOG --config BANJO.TOML
//!     banjo's Filter over a syslog file (`MMM DD HH:MM:SS host ident[pid]:
//!     message`), every jail of the configuration: the same engine as
//!     `banjo check`, for when that command is not available.
//! banjo-bench burst --expect N [--timeout-s T] (--into DIR FILE... | -- CMD...)
//!     Moves journal FILEs into DIR (or runs CMD) and reports the time until
//!     N distinct addresses have been added to nftables sets.
//! ```

mod nfwatch;
mod writer;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use banjo::config::Config;
use banjo::filter::Filter;
use banjo::jail::{FilterInput, JailId, JailSet};
use systemd::journal;

use nfwatch::{Added, NfWatch};
use writer::Writer;

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ceiling") => ceiling(&args[1..]),
        Some("latency") => latency(&args[1..]),
        Some("burst") => burst(&args[1..]),
        Some("scan-file") => scan_file(&args[1..]),
        _ => Err("usage: banjo-bench ceiling|latency|burst ... (see src/main.rs)".into()),
    };
    match result {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("banjo-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--name value` options and the remaining words.
struct Opts {
    pairs: Vec<(String, String)>,
    flags: HashSet<String>,
    rest: Vec<String>,
}

impl Opts {
    fn parse(args: &[String], flags: &[&str]) -> Opts {
        let mut o = Opts {
            pairs: Vec::new(),
            flags: HashSet::new(),
            rest: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == "--" {
                o.rest.extend(it.by_ref().cloned());
                break;
            }
            if let Some(name) = a.strip_prefix("--") {
                if flags.contains(&name) {
                    o.flags.insert(name.to_string());
                } else if let Some(v) = it.next() {
                    o.pairs.push((name.to_string(), v.clone()));
                }
            } else {
                o.rest.push(a.clone());
            }
        }
        o
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn need(&self, name: &str) -> Result<&str> {
        self.get(name)
            .ok_or_else(|| format!("--{name} is required"))
    }

    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name} {v:?}: not a number")),
        }
    }
}

fn ceiling(args: &[String]) -> Result<String> {
    let o = Opts::parse(args, &["timestamp"]);
    let dir = o.need("dir")?;
    // For profiling the daemon's extra work: also read these fields and the
    // timestamp of every entry, as banjo's reader does.
    let extra: Vec<std::ffi::CString> = o
        .pairs
        .iter()
        .filter(|(n, _)| n == "extra-field")
        .filter_map(|(_, v)| std::ffi::CString::new(v.as_str()).ok())
        .collect();
    let timestamp = o.flags.contains("timestamp");
    let config = Config::load(Path::new(o.need("config")?)).map_err(|e| e.to_string())?;
    let filter = Filter::new(&config.jails).map_err(|e| e.to_string())?;
    let mut all = JailSet::EMPTY;
    for i in 0..config.jails.len() {
        all.insert(JailId(i as u16));
    }
    let want_line = config
        .jails
        .iter()
        .any(|j| j.input == FilterInput::Fail2banLine);

    let started = Instant::now();
    let mut j = journal::OpenDirectoryOptions::default()
        .open_directory(dir)
        .map_err(|e| format!("opening {dir}: {e}"))?;
    j.set_data_threshold(64 * 1024).map_err(|e| e.to_string())?;
    // The union of the jails' journalmatches, as banjo opens the journal.
    let mut seen = HashSet::new();
    for jail in &config.jails {
        for group in &jail.journalmatch.groups {
            let key: Vec<String> = group
                .iter()
                .map(|t| format!("{}={}", t.field, t.value))
                .collect();
            if !seen.insert(key) {
                continue;
            }
            for t in group {
                j.match_add(t.field.as_str(), t.value.as_str())
                    .map_err(|e| e.to_string())?;
            }
            j.match_or().map_err(|e| e.to_string())?;
        }
    }
    let mut cache = filter.cache();
    let mut hits = Vec::new();
    let mut message = Vec::with_capacity(4096);
    let mut line = Vec::with_capacity(4096);
    let (mut entries, mut found) = (0u64, 0u64);
    while j.next().map_err(|e| e.to_string())? > 0 {
        entries += 1;
        if timestamp {
            std::hint::black_box(j.timestamp_usec().map_err(|e| e.to_string())?);
        }
        for name in &extra {
            if let Ok(Some(f)) = j.get_data(name.as_c_str()) {
                std::hint::black_box(f.value());
            }
        }
        message.clear();
        if let Ok(Some(f)) = j.get_data("MESSAGE") {
            if let Some(v) = f.value() {
                message.extend_from_slice(v);
            }
        }
        hits.clear();
        if want_line {
            line.clear();
            for (name, sep) in [
                ("_HOSTNAME", " "),
                ("SYSLOG_IDENTIFIER", "["),
                ("SYSLOG_PID", "]: "),
            ] {
                if let Ok(Some(f)) = j.get_data(name) {
                    line.extend_from_slice(f.value().unwrap_or_default());
                }
                line.extend_from_slice(sep.as_bytes());
            }
            line.extend_from_slice(&message);
            filter.scan_entry(&mut cache, &message, &line, &all, &mut hits);
        } else {
            filter.scan(&mut cache, &message, &all, &mut hits);
        }
        found += hits.len() as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(format!(
        "{{\"entries\": {entries}, \"hits\": {found}, \"secs\": {secs:.6}, \"rate\": {:.1}}}",
        entries as f64 / secs
    ))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn trial_ip(net: u32, k: u32, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(std::net::Ipv6Addr::new(
            0x2001,
            0xdb8,
            net as u16,
            0x1a7,
            0,
            0,
            0,
            k as u16 + 1,
        ))
    } else {
        IpAddr::V4(std::net::Ipv4Addr::new(
            10,
            net as u8,
            (k >> 8) as u8,
            (k & 255) as u8 + 1,
        ))
    }
}

fn latency(args: &[String]) -> Result<String> {
    let o = Opts::parse(args, &["v6"]);
    let trials: u32 = o.num("trials", 50)?;
    let maxretry: u32 = o.num("maxretry", 4)?;
    let gap = Duration::from_millis(o.num("gap-ms", 50)?);
    let pause = Duration::from_millis(o.num("pause-ms", 100)?);
    let timeout = Duration::from_secs_f64(o.num("timeout-s", 10.0)?);
    let net: u32 = o.num("net", 200)?;
    let v6 = o.flags.contains("v6");
    let background = Duration::from_millis(o.num("background-ms", 0)?);
    let mut watch = NfWatch::open().map_err(|e| format!("netlink: {e}"))?;
    let mut w = Writer::open(o.need("journal")?).map_err(|e| e.to_string())?;
    // A mail server is never silent: benign lines every `background` while
    // waiting, so that the reader is in the state it is in under traffic.
    let mut next_benign = Instant::now();
    let mut benign = 0u64;
    let mut idle = |w: &mut Writer, d: Duration| -> Result<()> {
        let until = Instant::now() + d;
        loop {
            let now = Instant::now();
            if !background.is_zero() && next_benign <= now {
                benign += 1;
                let line = format!(
                    "connect from mx{}.example.com[198.51.100.{}]",
                    benign % 100,
                    benign % 250 + 1
                );
                w.write(&line).map_err(|e| e.to_string())?;
                next_benign = now + background;
            }
            if now >= until {
                return Ok(());
            }
            let mut nap = until - now;
            if !background.is_zero() {
                nap = nap.min(next_benign.saturating_duration_since(now));
            }
            std::thread::sleep(nap);
        }
    };
    idle(&mut w, Duration::from_secs(1))?;
    let mut samples = Vec::new();
    // Per trial: its message and the wall clock at the M-th write.
    let mut written: Vec<(String, u64)> = Vec::new();
    let mut timeouts = 0u32;
    let mut seen: Vec<Added> = Vec::new();
    for k in 0..trials {
        let ip = trial_ip(net, k, v6);
        let msg = format!("lost connection after AUTH from unknown[{ip}]");
        for _ in 1..maxretry {
            w.write(&msg).map_err(|e| e.to_string())?;
            idle(&mut w, gap)?;
        }
        // Drain anything older (e.g. a late notification of the last trial).
        seen.clear();
        while watch
            .wait(Duration::ZERO, &mut seen)
            .map_err(|e| e.to_string())?
        {}
        let t0 = Instant::now();
        let wall = writer::now_usec();
        w.write(&msg).map_err(|e| e.to_string())?;
        let mut got = None;
        seen.clear();
        while got.is_none() && t0.elapsed() < timeout {
            let left = timeout.saturating_sub(t0.elapsed());
            watch.wait(left, &mut seen).map_err(|e| e.to_string())?;
            got = seen.iter().find(|a| a.ip == ip).map(|a| a.at);
        }
        match got {
            Some(at) => {
                samples.push(at.duration_since(t0).as_secs_f64() * 1e3);
                written.push((msg, wall));
            }
            None => timeouts += 1,
        }
        idle(&mut w, pause)?;
    }
    let stamped = match o.need("journal")?.strip_prefix("journald:") {
        Some(ns) => journald_stamps(ns, &written)?,
        None => Vec::new(),
    };
    let stamped: Vec<String> = stamped
        .iter()
        .map(|s| s.map_or("null".to_string(), |ms| format!("{ms:.3}")))
        .collect();
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    let list: Vec<String> = samples.iter().map(|s| format!("{s:.3}")).collect();
    Ok(format!(
        "{{\"trials\": {trials}, \"timeouts\": {timeouts}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \
         \"max_ms\": {:.3}, \"overruns\": {}, \"samples_ms\": [{}], \"journald_ms\": [{}]}}",
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted.last().copied().unwrap_or(f64::NAN),
        watch.overruns,
        list.join(", "),
        stamped.join(", ")
    ))
}

/// For each `(message, written at)`: how long after the write journald
/// stamped the last entry with that message (ms), read back from the
/// namespace's journal files; `None` where none is found.
fn journald_stamps(ns: &str, written: &[(String, u64)]) -> Result<Vec<Option<f64>>> {
    let machine = std::fs::read_to_string("/etc/machine-id").map_err(|e| e.to_string())?;
    let dir = ["/var/log/journal", "/run/log/journal"]
        .iter()
        .map(|base| PathBuf::from(format!("{base}/{}.{ns}", machine.trim())))
        .find(|d| d.is_dir())
        .ok_or_else(|| format!("no journal directory for namespace {ns}"))?;
    let dir = dir.to_string_lossy().into_owned();
    let mut j = journal::OpenDirectoryOptions::default()
        .open_directory(dir.as_str())
        .map_err(|e| format!("opening {dir}: {e}"))?;
    let wanted: HashSet<&str> = written.iter().map(|(m, _)| m.as_str()).collect();
    let mut last: HashMap<String, u64> = HashMap::new();
    while j.next().map_err(|e| e.to_string())? > 0 {
        let Ok(Some(f)) = j.get_data("MESSAGE") else {
            continue;
        };
        let Some(message) = f.value().and_then(|v| std::str::from_utf8(v).ok()) else {
            continue;
        };
        if wanted.contains(message) {
            let message = message.to_string();
            let at = j.timestamp_usec().map_err(|e| e.to_string())?;
            last.insert(message, at);
        }
    }
    Ok(written
        .iter()
        .map(|(m, wall)| last.get(m).map(|&at| (at as f64 - *wall as f64) / 1e3))
        .collect())
}

fn burst(args: &[String]) -> Result<String> {
    let o = Opts::parse(args, &[]);
    let expect: usize = o.num("expect", 0)?;
    let timeout = Duration::from_secs_f64(o.num("timeout-s", 600.0)?);
    let mut watch = NfWatch::open().map_err(|e| format!("netlink: {e}"))?;
    let mut distinct: HashSet<IpAddr> = HashSet::new();
    let mut seen = Vec::new();
    let mut first: Option<Instant> = None;
    let mut last: Option<Instant> = None;
    let t0 = Instant::now();
    let mut child = None;
    if let Some(into) = o.get("into") {
        for f in &o.rest {
            let from = PathBuf::from(f);
            let name = from
                .file_name()
                .ok_or_else(|| format!("{f}: no file name"))?;
            std::fs::rename(&from, Path::new(into).join(name))
                .map_err(|e| format!("moving {f} into {into}: {e}"))?;
        }
    } else if let Some((prog, rest)) = o.rest.split_first() {
        child = Some(
            Command::new(prog)
                .args(rest)
                .spawn()
                .map_err(|e| format!("{prog}: {e}"))?,
        );
    } else {
        return Err("burst needs --into DIR FILE... or -- CMD...".into());
    }
    while distinct.len() < expect && t0.elapsed() < timeout {
        let left = timeout.saturating_sub(t0.elapsed());
        seen.clear();
        watch
            .wait(left.min(Duration::from_millis(200)), &mut seen)
            .map_err(|e| e.to_string())?;
        for a in &seen {
            if distinct.insert(a.ip) {
                first.get_or_insert(a.at);
                last = Some(a.at);
            }
        }
    }
    let mut exit = String::from("null");
    if let Some(mut c) = child {
        let status = c.wait().map_err(|e| e.to_string())?;
        exit = status.code().map_or("null".into(), |c| c.to_string());
    }
    let ms = |t: Option<Instant>| t.map_or(f64::NAN, |t| t.duration_since(t0).as_secs_f64() * 1e3);
    Ok(format!(
        "{{\"expect\": {expect}, \"seen\": {}, \"first_ms\": {:.3}, \"last_ms\": {:.3}, \
         \"overruns\": {}, \"exit\": {exit}}}",
        distinct.len(),
        ms(first),
        ms(last),
        watch.overruns
    ))
}

fn scan_file(args: &[String]) -> Result<String> {
    use std::io::BufRead;
    let o = Opts::parse(args, &[]);
    let path = o.need("file")?;
    let config = Config::load(Path::new(o.need("config")?)).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let filter = Filter::new(&config.jails).map_err(|e| e.to_string())?;
    let mut all = JailSet::EMPTY;
    for i in 0..config.jails.len() {
        all.insert(JailId(i as u16));
    }
    let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut cache = filter.cache();
    let mut hits = Vec::new();
    let mut buf = Vec::with_capacity(4096);
    let (mut lines, mut found) = (0u64, 0u64);
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        lines += 1;
        // `Dec 14 09:58:37 ` is 16 bytes; the rest is fail2ban's journal line.
        let line = buf.get(16..).unwrap_or_default();
        let message = line
            .windows(3)
            .position(|w| w == b"]: ")
            .map_or(line, |i| &line[i + 3..]);
        hits.clear();
        filter.scan_entry(&mut cache, message, line, &all, &mut hits);
        found += hits.len() as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(format!(
        "{{\"lines\": {lines}, \"hits\": {found}, \"secs\": {secs:.6}, \"rate\": {:.1}}}",
        lines as f64 / secs
    ))
}
