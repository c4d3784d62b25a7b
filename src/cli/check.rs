//! `banjo check`: fail2ban-regex for banjo. Runs one filter, through the
//! very matcher the daemon uses, over a log file, standard input or the
//! journal, and reports what it found.
//!
//! Files are read as fail2ban reads them: the date is found (the filter's
//! `datepattern`, else fail2ban's default templates) and cut out, and
//! fail2ban filters see the rest (`logtype = file`); banjo's own filters
//! see the MESSAGE part (after `host ident[pid]: `). Journal entries become
//! the line fail2ban's systemd backend builds (`logtype = journal`), and
//! banjo's filters see MESSAGE. A line that is not UTF-8, or longer than
//! 1 MiB, is counted and skipped.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::config::{self, Config};
use crate::fail2ban::{self, date::DateDetector, ImportedFilter};
use crate::filter::{Detail, Filter, LinePrefilter, Outcome};
use crate::jail::{FilterInput, Jail, JailSet, JournalMatch};

use super::blocks::{Block, BlockReader, MAX_LINE};
use super::hosts::Hosts;
use super::{usage, EXIT_CONFIG, EXIT_FAILURE};

/// Hosts listed in the text report.
const TOP_HOSTS: usize = 20;

struct Options {
    filter: Option<String>,
    filter_dir: PathBuf,
    config: Option<PathBuf>,
    jail: Option<String>,
    input: Option<String>,
    journal: bool,
    journal_dir: Option<PathBuf>,
    since: Option<String>,
    until: Option<String>,
    matches: Vec<String>,
    print_missed: bool,
    json: bool,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        filter: None,
        filter_dir: PathBuf::from("/etc/fail2ban/filter.d"),
        config: None,
        jail: None,
        input: None,
        journal: false,
        journal_dir: None,
        since: None,
        until: None,
        matches: Vec::new(),
        print_missed: false,
        json: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--filter" => o.filter = Some(value("--filter")?),
            "--filter-dir" => o.filter_dir = PathBuf::from(value("--filter-dir")?),
            "--config" | "-c" => o.config = Some(PathBuf::from(value("--config")?)),
            "--jail" => o.jail = Some(value("--jail")?),
            "--journal" => o.journal = true,
            "--journal-dir" => {
                o.journal = true;
                o.journal_dir = Some(PathBuf::from(value("--journal-dir")?));
            }
            "--since" => o.since = Some(value("--since")?),
            "--until" => o.until = Some(value("--until")?),
            "--print-missed" => o.print_missed = true,
            "--json" => o.json = true,
            s if s.contains('=') && !s.starts_with('-') && o.journal => o.matches.push(s.into()),
            s if !s.starts_with('-') || s == "-" => {
                if o.input.replace(s.to_string()).is_some() {
                    return Err("more than one input".into());
                }
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if o.filter.is_some() == (o.config.is_some() || o.jail.is_some()) {
        return Err("give either --filter, or --config and --jail".into());
    }
    if o.config.is_some() != o.jail.is_some() {
        return Err("--config and --jail go together".into());
    }
    if o.journal == o.input.is_some() {
        return Err("give one input: a file, - (standard input) or --journal".into());
    }
    if !o.journal && (o.since.is_some() || o.until.is_some()) {
        return Err("--since and --until need --journal".into());
    }
    Ok(o)
}

/// The filter to run, ready.
struct Setup {
    filter: Filter,
    jail: Jail,
    /// Failregexes as written, for the report (without the prefregex).
    regexes: Vec<String>,
    /// Offset from a hit's failregex index to `regexes`.
    offset: usize,
    dates: DateDetector,
    journalmatch: Option<JournalMatch>,
}

/// A valid jail to carry a filter (a configuration gives every field).
fn base_jail(toml: &str) -> Result<Jail, String> {
    let mut config =
        Config::parse(Path::new("banjo-check.toml"), toml).map_err(|e| e.to_string())?;
    if config.jails.is_empty() {
        return Err("no jail".into());
    }
    Ok(config.jails.remove(0))
}

fn setup(o: &Options) -> Result<Setup, String> {
    let logtype = if o.journal { "journal" } else { "file" };
    let (jail, datepattern) = if let Some(spec) = &o.filter {
        let (name, args) = fail2ban::parse_spec(spec)?;
        let is_path = name.contains('/') || name.ends_with(".conf") || name.ends_with(".local");
        if !is_path && args.is_empty() && name == "postfix" {
            // banjo's built-in filter, as `filter = "postfix"` gives it.
            let jail = base_jail("[jail.check]\nfilter = \"postfix\"\n")?;
            (jail, None)
        } else {
            let file = if is_path {
                fail2ban::load_filter_file(Path::new(&name), &args, logtype)
            } else {
                fail2ban::load_named(&name, &args, &o.filter_dir, logtype)
            }
            .map_err(|e| e.to_string())?;
            let mut jail = base_jail("[jail.check]\nfailregex = ['x <HOST>']\n")?;
            apply(&mut jail, &file.filter)?;
            (jail, file.datepattern)
        }
    } else {
        let (Some(path), Some(name)) = (&o.config, &o.jail) else {
            return Err("--config and --jail go together".into());
        };
        let config = Config::load(path).map_err(|e| e.to_string())?;
        let jail = config
            .jails
            .into_iter()
            .find(|j| j.name == *name)
            .ok_or_else(|| format!("{}: no enabled jail {name:?}", path.display()))?;
        (jail, None)
    };
    let filter = Filter::new(std::slice::from_ref(&jail)).map_err(|e| e.to_string())?;
    let offset = usize::from(
        jail.input == FilterInput::Fail2banLine
            && jail
                .failregex
                .first()
                .is_some_and(|f| f.starts_with(crate::filter::PREFREGEX_MARK)),
    );
    let regexes = jail.failregex.get(offset..).unwrap_or(&[]).to_vec();
    let dates = DateDetector::new(datepattern.as_deref())?;
    let journalmatch = if o.matches.is_empty() {
        Some(jail.journalmatch.clone())
    } else {
        Some(config::parse_journalmatch(
            o.matches.iter().map(String::as_str),
        )?)
    };
    Ok(Setup {
        filter,
        jail,
        regexes,
        offset,
        dates,
        journalmatch,
    })
}

/// Puts a fail2ban filter's regexes (and journalmatch) into `jail`.
fn apply(jail: &mut Jail, f: &ImportedFilter) -> Result<(), String> {
    jail.failregex = f.failregex.clone();
    jail.ignoreregex = f.ignoreregex.clone();
    jail.input = f.input;
    if let Some(m) = &f.journalmatch {
        jail.journalmatch = config::parse_journalmatch(m.iter().map(String::as_str))?;
    }
    Ok(())
}

#[derive(Default)]
struct Stats {
    read: u64,
    matched: u64,
    ignored: u64,
    missed: u64,
    not_utf8: u64,
    too_long: u64,
    per_regex: Vec<u64>,
}

/// Runs `banjo check`.
pub(crate) fn main(args: &[String]) -> ExitCode {
    let o = match parse_args(args) {
        Ok(o) => o,
        Err(e) => return usage(&e),
    };
    let s = match setup(&o) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = if o.journal {
        run_journal(&o, &s)
    } else {
        run_lines(&o, &s)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `banjo check ... | head`: the reader has seen enough.
        Err(e) if e.contains("Broken pipe") => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("banjo check: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

impl Stats {
    fn new(regexes: usize) -> Stats {
        Stats {
            per_regex: vec![0; regexes],
            ..Stats::default()
        }
    }

    fn merge(&mut self, other: Stats) {
        self.read += other.read;
        self.matched += other.matched;
        self.ignored += other.ignored;
        self.missed += other.missed;
        self.not_utf8 += other.not_utf8;
        self.too_long += other.too_long;
        for (a, b) in self.per_regex.iter_mut().zip(other.per_regex) {
            *a += b;
        }
    }
}

/// Matches lines: one per thread.
struct Worker<'a> {
    s: &'a Setup,
    o: &'a Options,
    cache: crate::filter::Cache,
    details: Vec<Detail>,
    jails: JailSet,
    cut: String,
    /// The worker's own count: the report adds them up once at the end
    /// (merging per block made the report compete with the workers).
    hosts: Hosts,
    /// Lines with a literal hit, and how many of them matched, until
    /// [`PROBE_LINES`] have been seen.
    probe: (u32, u32),
}

/// After this many lines with a literal hit, a worker decides whether the
/// filter's combined DFA pass is still worth running on them.
const PROBE_LINES: u32 = 2048;

impl<'a> Worker<'a> {
    fn new(s: &'a Setup, o: &'a Options) -> Worker<'a> {
        Worker {
            s,
            o,
            cache: s.filter.cache(),
            details: Vec::new(),
            jails: JailSet::first(1),
            cut: String::new(),
            hosts: Hosts::default(),
            probe: (0, 0),
        }
    }

    /// The lines of one block. With a prefilter, a block of pure ASCII
    /// is searched as a whole and only the lines with a hit are matched:
    /// the others cannot match and count as missed. fail2ban cuts the
    /// date out before matching, so the search sees the line with its
    /// date; a literal that only the cut would join (a date written into
    /// the middle of `NOQUEUE`) is not found there.
    fn block(
        &mut self,
        b: &Block,
        prefilter: Option<&LinePrefilter>,
        st: &mut Stats,
        out: &mut Vec<u8>,
    ) {
        st.read += b.too_long;
        st.too_long += b.too_long;
        let data = &b.data;
        let Some(pf) = prefilter.filter(|_| data.is_ascii()) else {
            for (k, line) in b.lines().enumerate() {
                self.file_line(b.first_line + k as u64, line, st, out);
            }
            return;
        };
        // Line numbers are only printed with `--json`: counting the lines
        // between hits would otherwise go over the block a second time.
        let numbered = self.o.json;
        let mut n = b.first_line;
        let mut pos = 0;
        let mut seen = 0u64;
        while let Some(hit) = pf.find(data, pos) {
            let start = memchr::memrchr(b'\n', &data[pos..hit]).map_or(pos, |p| pos + p + 1);
            let end = memchr::memchr(b'\n', &data[hit..]).map_or(data.len(), |p| hit + p);
            if numbered {
                n += memchr::memchr_iter(b'\n', &data[pos..start]).count() as u64;
            }
            seen += 1;
            let before = st.matched + st.ignored;
            self.file_line(n, &data[start..end], st, out);
            self.probe(st.matched + st.ignored > before);
            n += 1;
            pos = end + 1;
            if pos >= data.len() {
                break;
            }
        }
        let rest = b.lines.saturating_sub(seen);
        st.read += rest;
        st.missed += rest;
    }

    /// Counts a line with a literal hit toward the probe. When three in
    /// four such lines match, the literals alone are nearly as selective
    /// as the combined DFA pass, which then only adds its cost.
    fn probe(&mut self, matched: bool) {
        let (lines, hits) = &mut self.probe;
        if *lines == PROBE_LINES {
            return;
        }
        *lines += 1;
        *hits += u32::from(matched);
        if *lines == PROBE_LINES && *hits * 4 >= PROBE_LINES * 3 {
            self.cache.skip_combined_pass();
        }
    }

    /// One line of a log file.
    fn file_line(&mut self, n: u64, mut bytes: &[u8], st: &mut Stats, out: &mut Vec<u8>) {
        if let Some(b) = bytes.strip_suffix(b"\r") {
            bytes = b;
        }
        let Ok(text) = std::str::from_utf8(bytes) else {
            st.read += 1;
            st.not_utf8 += 1;
            return;
        };
        let mut cut = std::mem::take(&mut self.cut);
        cut.clear();
        let date = self.s.dates.find(text);
        match &date {
            Some(f) => {
                cut.push_str(&text[..f.start]);
                cut.push_str(&text[f.end..]);
            }
            None => cut.push_str(text),
        }
        let message = if self.s.jail.input == FilterInput::Message {
            syslog_message(date.as_ref().map_or(text, |f| &text[f.end..]))
        } else {
            ""
        };
        self.record(n, message.as_bytes(), cut.as_bytes(), text, st, out);
        self.cut = cut;
    }

    /// Matches one line (`message` for banjo's filters, `line` for
    /// fail2ban's) and counts it; `raw` is what `--print-missed` prints.
    fn record(
        &mut self,
        n: u64,
        message: &[u8],
        line: &[u8],
        raw: &str,
        st: &mut Stats,
        out: &mut Vec<u8>,
    ) {
        st.read += 1;
        self.details.clear();
        self.s.filter.scan_entry_details(
            &mut self.cache,
            message,
            line,
            &self.jails,
            &mut self.details,
        );
        let Some(d) = self.details.first() else {
            st.missed += 1;
            if self.o.print_missed && !self.o.json {
                let _ = writeln!(out, "missed {n}: {raw}");
            }
            return;
        };
        if d.hit.outcome == Outcome::Ignored {
            st.ignored += 1;
            return;
        }
        st.matched += 1;
        let i = d.hit.failregex.saturating_sub(self.s.offset);
        if let Some(c) = st.per_regex.get_mut(i) {
            *c += 1;
        }
        let address = match d.hit.outcome {
            Outcome::Failure(ip) => Some(ip),
            _ => None,
        };
        let host = match (&d.host, address) {
            (Some(h), _) => std::borrow::Cow::Borrowed(h.as_str()),
            (None, Some(ip)) => std::borrow::Cow::Owned(ip.to_string()),
            (None, None) => std::borrow::Cow::Borrowed(""),
        };
        if self.o.json {
            // Written by hand: a `json!` object per line costs more than
            // matching the line. Only the host needs escaping.
            let _ = write!(out, "{{\"line\":{n},\"host\":");
            let _ = serde_json::to_writer(&mut *out, &host);
            let _ = writeln!(out, ",\"failregex\":{i}}}");
        }
        self.hosts.count(&host, address);
    }
}

/// The totals, the output in line order, and the progress line.
struct Report<'a> {
    s: &'a Setup,
    o: &'a Options,
    stats: Stats,
    hosts: Hosts,
    out: std::io::BufWriter<std::io::StdoutLock<'static>>,
    start: Instant,
    next_progress: Instant,
    progress: bool,
}

impl<'a> Report<'a> {
    fn new(s: &'a Setup, o: &'a Options) -> Report<'a> {
        let start = Instant::now();
        Report {
            s,
            o,
            stats: Stats::new(s.regexes.len()),
            hosts: Hosts::default(),
            out: std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock()),
            start,
            next_progress: start + Duration::from_secs(1),
            progress: std::io::stderr().is_terminal(),
        }
    }

    /// Adds a batch of results (in line order) and updates the progress
    /// line on a terminal once the input has taken a second.
    fn add(&mut self, stats: Stats, out: &[u8]) -> std::io::Result<()> {
        self.stats.merge(stats);
        self.out.write_all(out)?;
        if self.progress {
            let now = Instant::now();
            if now >= self.next_progress {
                self.next_progress = now + Duration::from_millis(500);
                let secs = now.duration_since(self.start).as_secs_f64();
                eprint!(
                    "\r{} lines, {} matched, {:.0} lines/s   ",
                    self.stats.read,
                    self.stats.matched,
                    self.stats.read as f64 / secs.max(1e-9)
                );
            }
        }
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<()> {
        let elapsed = self.start.elapsed();
        if self.progress && elapsed >= Duration::from_secs(1) {
            eprint!("\r{:60}\r", "");
        }
        let st = &self.stats;
        let rate = st.read as f64 / elapsed.as_secs_f64().max(1e-9);
        let hosts = self.hosts.ranked((!self.o.json).then_some(TOP_HOSTS));
        if self.o.json {
            let summary = serde_json::json!({"summary": {
                "lines": st.read, "matched": st.matched, "ignored": st.ignored,
                "missed": st.missed, "skipped_not_utf8": st.not_utf8,
                "skipped_too_long": st.too_long,
                "failregex": st.per_regex,
                "hosts": hosts.iter().map(|(h, c)| serde_json::json!({"host": h.as_str(), "count": c})).collect::<Vec<_>>(),
                "elapsed_s": elapsed.as_secs_f64(), "lines_per_s": rate,
            }});
            writeln!(self.out, "{summary}")?;
            return self.out.flush();
        }
        let out = &mut self.out;
        let kind = match self.s.jail.input {
            FilterInput::Message => "banjo filter, matched against MESSAGE",
            FilterInput::Fail2banLine => "fail2ban filter, matched against the fail2ban line",
        };
        writeln!(out, "Jail: {} ({kind})", self.s.jail.name)?;
        writeln!(
            out,
            "Lines: {} read, {} matched, {} ignored, {} missed",
            st.read, st.matched, st.ignored, st.missed
        )?;
        if st.not_utf8 + st.too_long > 0 {
            writeln!(
                out,
                "Skipped: {} not UTF-8, {} longer than 1 MiB",
                st.not_utf8, st.too_long
            )?;
        }
        writeln!(out, "\nFailregex hits:")?;
        for (i, (re, c)) in self.s.regexes.iter().zip(&st.per_regex).enumerate() {
            writeln!(out, "  #{i:<3} {c:>10}  {re}")?;
        }
        let distinct = self.hosts.len();
        writeln!(out, "\nHosts: {distinct} distinct")?;
        for (h, c) in &hosts {
            writeln!(out, "  {:<40} {c:>10}", h.as_str())?;
        }
        if distinct > TOP_HOSTS {
            writeln!(out, "  ... {} more", distinct - TOP_HOSTS)?;
        }
        writeln!(
            out,
            "\nElapsed: {:.3} s, {:.0} lines/s",
            elapsed.as_secs_f64(),
            rate
        )?;
        out.flush()
    }
}

/// The MESSAGE part of a syslog line whose date is already cut:
/// what follows `host ident[pid]: `.
fn syslog_message(rest: &str) -> &str {
    let t = rest.trim_start();
    match t.split_once(' ') {
        Some((_, after)) => match after.find(": ") {
            Some(p) if !after[..p].contains(' ') => &after[p + 2..],
            _ => t,
        },
        None => t,
    }
}

/// What a worker sends the report: a block's results, and at the end its
/// failures per host.
enum Done {
    Block(u64, Stats, Vec<u8>),
    Hosts(Hosts),
}

fn run_lines(o: &Options, s: &Setup) -> Result<(), String> {
    let input = o.input.as_deref().unwrap_or("-");
    let reader: Box<dyn Read + Send> = if input == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(input).map_err(|e| format!("{input}: {e}"))?)
    };
    let mut blocks = BlockReader::new(reader);
    let io = |e: std::io::Error| format!("{input}: {e}");
    // `--print-missed` prints every line, so every line is looked at.
    let prefilter = if o.print_missed {
        None
    } else {
        let first = blocks.peek().map_err(io)?;
        s.filter
            .line_prefilter(first.map_or(&[][..], |b| &b.data[..]))
    };
    let prefilter = prefilter.as_ref();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get().min(4))
        .unwrap_or(1);
    // A filter that carries state from line to line (fail2ban's
    // multi-line failure ids) must see the lines in order.
    if threads < 2 || !s.filter.is_stateless() {
        let mut report = Report::new(s, o);
        let mut worker = Worker::new(s, o);
        let mut out = Vec::new();
        while let Some(block) = blocks.next_block().map_err(io)? {
            let mut st = Stats::new(s.regexes.len());
            worker.block(&block, prefilter, &mut st, &mut out);
            report.add(st, &out).map_err(|e| e.to_string())?;
            out.clear();
            blocks.recycle(block.data);
        }
        report.hosts.merge(worker.hosts);
        return report.finish().map_err(|e| e.to_string());
    }
    let (to_workers, from_reader) = std::sync::mpsc::sync_channel::<Block>(threads * 2);
    // Only the workers hold the receiving end: when they have all stopped
    // (the output closed), the reader's next send fails and it stops too.
    let from_reader = std::sync::Arc::new(std::sync::Mutex::new(from_reader));
    let (to_report, results) = std::sync::mpsc::channel::<Done>();
    let (give_back, given_back) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| -> Result<(), String> {
        for _ in 0..threads {
            let to_report = to_report.clone();
            let give_back = give_back.clone();
            let from_reader = std::sync::Arc::clone(&from_reader);
            scope.spawn(move || {
                let mut worker = Worker::new(s, o);
                loop {
                    let block = match from_reader.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(block) = block else { break };
                    let mut st = Stats::new(s.regexes.len());
                    let mut out = Vec::new();
                    worker.block(&block, prefilter, &mut st, &mut out);
                    if to_report.send(Done::Block(block.index, st, out)).is_err() {
                        return;
                    }
                    // The reader may have finished: then the buffer is
                    // simply freed.
                    let _ = give_back.send(block.data);
                }
                let _ = to_report.send(Done::Hosts(worker.hosts));
            });
        }
        drop(to_report);
        drop(give_back);
        drop(from_reader);
        // The report runs beside the reader, putting blocks back in order.
        let report = scope.spawn(move || -> std::io::Result<()> {
            let mut report = Report::new(s, o);
            let mut pending = std::collections::BTreeMap::new();
            let mut next = 0u64;
            for done in results {
                let (index, st, out) = match done {
                    Done::Block(index, st, out) => (index, st, out),
                    Done::Hosts(hosts) => {
                        report.hosts.merge(hosts);
                        continue;
                    }
                };
                pending.insert(index, (st, out));
                while let Some((st, out)) = pending.remove(&next) {
                    report.add(st, &out)?;
                    next += 1;
                }
            }
            report.finish()
        });
        let mut failed = None;
        loop {
            for buf in given_back.try_iter() {
                blocks.recycle(buf);
            }
            match blocks.next_block() {
                Ok(Some(block)) => {
                    if to_workers.send(block).is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    failed = Some(io(e));
                    break;
                }
            }
        }
        drop(to_workers);
        let reported = report
            .join()
            .map_err(|_| "a worker panicked".to_string())?
            .map_err(|e| e.to_string());
        match failed {
            Some(e) => Err(e),
            None => reported,
        }
    })
}

/// `--since`/`--until`: `YYYY-MM-DD[ HH:MM[:SS]]` (local time), `@EPOCH`,
/// or `-N[smhd]` before now; microseconds since the epoch.
fn parse_time(t: &str) -> Result<u64, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs() as i64;
    let bad = || format!("{t:?}: not YYYY-MM-DD[ HH:MM[:SS]], @EPOCH or -N[smhd]");
    let secs = if let Some(e) = t.strip_prefix('@') {
        e.parse::<i64>().map_err(|_| bad())?
    } else if let Some(rel) = t.strip_prefix('-') {
        let (num, unit) = rel.split_at(rel.len().saturating_sub(1));
        let n: i64 = num.parse().map_err(|_| bad())?;
        let mul = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            _ => return Err(bad()),
        };
        now - n * mul
    } else {
        let (date, time) = t.split_once([' ', 'T']).unwrap_or((t, "00:00:00"));
        let d: Vec<u32> = date
            .split('-')
            .map(|x| x.parse().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        let h: Vec<u32> = time
            .split(':')
            .map(|x| x.parse().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        if d.len() != 3 || h.len() < 2 || h.len() > 3 {
            return Err(bad());
        }
        let days = fail2ban::date::days_from_civil(d[0] as i32, d[1], d[2]);
        let naive = days * 86400
            + i64::from(h[0]) * 3600
            + i64::from(h[1]) * 60
            + i64::from(*h.get(2).unwrap_or(&0));
        naive - local_offset(naive)
    };
    u64::try_from(secs)
        .map(|s| s * 1_000_000)
        .map_err(|_| bad())
}

/// The local zone's offset east of UTC, in seconds, around `t`.
fn local_offset(t: i64) -> i64 {
    let time = t as libc::time_t;
    // SAFETY: localtime_r only writes the tm we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&time, &mut tm).is_null() };
    if ok {
        tm.tm_gmtoff
    } else {
        0
    }
}

fn run_journal(o: &Options, s: &Setup) -> Result<(), String> {
    use systemd::journal;
    let step = |what: &str| {
        let what = what.to_string();
        move |e: systemd::Error| format!("journal: {what}: {e}")
    };
    let mut j = match &o.journal_dir {
        Some(dir) => journal::OpenDirectoryOptions::default()
            .open_directory(dir.as_os_str().as_encoded_bytes())
            .map_err(step("opening the directory"))?,
        None => journal::OpenOptions::default()
            .system(true)
            .open()
            .map_err(step("opening"))?,
    };
    j.set_data_threshold(64 * 1024)
        .map_err(step("data threshold"))?;
    if let Some(m) = &s.journalmatch {
        for group in &m.groups {
            for t in group {
                j.match_add(t.field.as_str(), t.value.as_str())
                    .map_err(step("adding a match"))?;
            }
            j.match_or().map_err(step("adding a match"))?;
        }
    }
    let until = o.until.as_deref().map(parse_time).transpose()?;
    match o.since.as_deref().map(parse_time).transpose()? {
        Some(us) => j.seek_realtime_usec(us).map_err(step("seeking"))?,
        None => j.seek_head().map_err(step("seeking"))?,
    }
    let mut report = Report::new(s, o);
    let mut worker = Worker::new(s, o);
    let mut st = Stats::new(s.regexes.len());
    let mut out = Vec::new();
    let mut message = Vec::new();
    let mut line = Vec::new();
    let mut fields: [Vec<u8>; 6] = Default::default();
    const NAMES: [&str; 6] = [
        "_HOSTNAME",
        "SYSLOG_IDENTIFIER",
        "_COMM",
        "SYSLOG_PID",
        "_PID",
        "_SOURCE_MONOTONIC_TIMESTAMP",
    ];
    let mut n = 0u64;
    while j.next().map_err(step("reading"))? > 0 {
        if let Some(limit) = until {
            if j.timestamp_usec().map_err(step("reading a timestamp"))? > limit {
                break;
            }
        }
        n += 1;
        message.clear();
        if let Ok(Some(f)) = j.get_data("MESSAGE") {
            if let Some(v) = f.value() {
                message.extend_from_slice(v);
            }
        }
        for (name, slot) in NAMES.iter().zip(fields.iter_mut()) {
            slot.clear();
            if let Ok(Some(f)) = j.get_data(*name) {
                if let Some(v) = f.value() {
                    slot.extend_from_slice(v);
                }
            }
        }
        fn some(v: &[u8]) -> Option<&[u8]> {
            (!v.is_empty()).then_some(v)
        }
        let ident = some(&fields[1]).or_else(|| some(&fields[2]));
        let pid = some(&fields[3]).or_else(|| some(&fields[4]));
        let mono = std::str::from_utf8(&fields[5])
            .ok()
            .and_then(|s| s.parse().ok());
        fail2ban::journal_line(&mut line, some(&fields[0]), ident, pid, mono, &message);
        if line.len() > MAX_LINE {
            st.read += 1;
            st.too_long += 1;
            continue;
        }
        let Ok(raw) = std::str::from_utf8(&line) else {
            st.read += 1;
            st.not_utf8 += 1;
            continue;
        };
        worker.record(n, &message, &line, raw, &mut st, &mut out);
        if n % 4096 == 0 {
            let done = std::mem::replace(&mut st, Stats::new(s.regexes.len()));
            report.add(done, &out).map_err(|e| e.to_string())?;
            out.clear();
        }
    }
    report.add(st, &out).map_err(|e| e.to_string())?;
    report.hosts.merge(worker.hosts);
    report.finish().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_lines() {
        assert_eq!(
            syslog_message(" mail postfix/smtpd[1]: connect from x"),
            "connect from x"
        );
        assert_eq!(syslog_message(" mail kernel: [ 1.0] x: y"), "[ 1.0] x: y");
        assert!(parse_time("@100").is_ok_and(|t| t == 100_000_000));
        assert!(parse_time("2024-01-02 03:04").is_ok());
        assert!(parse_time("-1h").is_ok());
        assert!(parse_time("yesterday").is_err());
    }
}
