//! The filter: which jails' failregexes a journal MESSAGE hits, and which
//! address each hit names.
//!
//! # One automaton for every jail
//!
//! fail2ban tries each failregex of each jail in turn, so its cost per line
//! grows with the number of patterns. banjo compiles *all* failregexes of
//! *all* jails into one multi-pattern regex-automata `meta::Regex`, run as a
//! lazy DFA: one pass over the line, whatever the number of jails.
//!
//! 1. A leftmost-first matcher over the failregexes answers `is_match`. Most
//!    lines (connects, TLS, queue manager chatter) stop here, usually after a
//!    few bytes, since every failregex is anchored (below).
//! 2. On a hit, a second matcher over the failregexes *and* ignoreregexes,
//!    built with `MatchKind::All`, reports every pattern that matches
//!    (`which_overlapping_matches`).
//! 3. Only for those candidates, a small per-failregex `meta::Regex` runs
//!    the captures that find the host. (Capturing through the combined
//!    matcher would need a capture cache of hundreds of MB.) Identical
//!    patterns of several jails share one pattern and one capture run.
//!
//! The syntax is ASCII and byte-oriented (`unicode(false)`, `utf8(false)`):
//! MESSAGE may be any bytes, `\w`/`\d`/`\s`/`\b` are ASCII, `.` matches any
//! byte but `\n`. This keeps the lazy DFA usable: a Unicode `\b` would make
//! regex-automata silently fall back to a PikeVM, about 100 times slower.
//! The translation from fail2ban's Python dialect (`[^[]`, `\Z`, `(?#...)`,
//! ...) and what is refused (look-around, backreferences, ...) is described
//! in `failregex.rs`.
//!
//! # Anchoring
//!
//! A failregex matches from the start of MESSAGE, as if it began with `^`.
//! Text an attacker controls (a HELO name, a SASL username) only ever comes
//! after the daemon's own words, so an anchored failregex cannot start
//! matching inside it. An ignoreregex is searched anywhere in the line, as
//! in fail2ban: a broader veto errs on the side of not banning. (Anchor an
//! ignoreregex with `^` yourself when an attacker could write its text.)
//!
//! # The earliest host
//!
//! Each host tag captures a maximal token of address characters, which
//! `host.rs` then accepts only if it is exactly one address, so
//! `from 1.2.3.4.evil.example` is [`Outcome::NotAnAddress`], never a ban of
//! 1.2.3.4. Where the line offers several places the tag could match, the
//! capture regex takes the *earliest*: it is compiled with every repetition
//! lazy except inside the tag. For `warning: (.*)\[<HOST>\]: SASL ...` that
//! is the real client's `[IP]`, not one repeated later in a username.
//! Greediness does not change *whether* a pattern matches, only what it
//! captures.
//!
//! # Which hit a jail gets
//!
//! For each jail in the entry's [`JailSet`], its failregexes are tried in
//! configuration order; the first that yields an address wins. If some
//! matched but none yielded an address, the first of those gives
//! [`Outcome::NotAnAddress`]. If any of the jail's ignoreregexes also matched
//! the line, the outcome becomes [`Outcome::Ignored`]. A jail gets at most
//! one [`Hit`] per line. When a failregex has several host tags, the first
//! tag that took part in the match names the host.

mod failregex;
mod host;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use regex_automata::meta::{self, Regex, WhichCaptures};
use regex_automata::util::captures::Captures;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchKind, PatternID, PatternSet};

use crate::jail::{Jail, JailId, JailSet, MAX_JAILS};

use self::host::HostKind;

/// banjo's failregexes for Postfix smtpd (journal MESSAGE, no syslog prefix):
/// SASL authentication failures, and 5xx rejects of RCPT, MAIL, EHLO/HELO or
/// VRFY (non-FQDN HELO, relay access denied, unknown user, ...), each with
/// the client's `name[address]` (and port, with `smtpd_client_port_logging`).
pub const POSTFIX_FAILREGEX: &[&str] = &[
    r"warning: [-._0-9A-Za-z]+\[<HOST>\](?::[0-9]+)?: SASL [-_0-9A-Za-z]+ authentication failed",
    r"[0-9A-Za-z]+: reject: (?:RCPT|MAIL|EHLO|HELO|VRFY) from [-._0-9A-Za-z]+\[<HOST>\](?::[0-9]+)?: 5[0-9][0-9] ",
];

/// The matching ignoreregex for [`POSTFIX_FAILREGEX`]: a SASL failure
/// because Dovecot's auth service is down is not the client's doing
/// (anchored at both ends, so a username cannot forge it).
pub const POSTFIX_IGNOREREGEX: &[&str] = &[
    r"^warning: [-._0-9A-Za-z]+\[[0-9A-Fa-f.:]+\](?::[0-9]+)?: SASL [-_0-9A-Za-z]+ authentication failed: Connection lost to authentication server$",
];

/// Lazy DFA cache of each combined matcher: ample for hundreds of patterns,
/// so the DFA never gives up for lack of room.
const COMBINED_CACHE: usize = 16 << 20;
/// NFA size limit of each combined matcher.
const COMBINED_NFA_LIMIT: usize = 256 << 20;

/// Which list of a jail a regex comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatternKind {
    /// A `failregex`.
    Failregex,
    /// An `ignoreregex`.
    Ignoreregex,
}

impl fmt::Display for PatternKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PatternKind::Failregex => "failregex",
            PatternKind::Ignoreregex => "ignoreregex",
        })
    }
}

/// Why [`Filter::new`] refused a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildError {
    jail: Option<String>,
    kind: PatternKind,
    index: Option<usize>,
    reason: String,
}

impl BuildError {
    /// The jail at fault; `None` when the configuration as a whole is (too
    /// many jails, combined matcher too large).
    pub fn jail(&self) -> Option<&str> {
        self.jail.as_deref()
    }

    /// Whether a failregex or an ignoreregex is at fault.
    pub fn kind(&self) -> PatternKind {
        self.kind
    }

    /// Index of the faulty regex in its list; `None` if the list as a whole is.
    pub fn index(&self) -> Option<usize> {
        self.index
    }

    /// What is wrong, without the jail and index.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.jail {
            Some(jail) => write!(f, "jail {jail}: {}", self.kind)?,
            None => write!(f, "all jails: {}", self.kind)?,
        }
        if let Some(i) = self.index {
            write!(f, " {i}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for BuildError {}

/// What a jail's hit on a line amounts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A failure of this address.
    Failure(IpAddr),
    /// A failregex matched, but so did one of the jail's ignoreregexes.
    Ignored,
    /// A failregex matched, but its host tag took text that is not an address.
    NotAnAddress,
}

/// One jail's verdict on one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    /// The jail.
    pub jail: JailId,
    /// Index of the deciding failregex in the jail's list.
    pub failregex: usize,
    /// What the hit amounts to.
    pub outcome: Outcome,
}

/// Result of one capture run, remembered for the rest of the scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Captured {
    Addr(IpAddr),
    NotAnAddress,
    NoMatch,
}

/// A distinct failregex (after expansion) and its capture regex.
#[derive(Debug)]
struct FailPattern {
    capture: Regex,
    /// Group index and tag kind of each host tag, in pattern order.
    hosts: Vec<(usize, HostKind)>,
}

/// A jail's patterns, as pattern ids of the combined matchers.
#[derive(Debug)]
struct JailPatterns {
    fail: Vec<PatternID>,
    ignore: Vec<PatternID>,
}

/// All jails' failregexes and ignoreregexes, compiled. Built once per
/// configuration; immutable and shareable between threads.
#[derive(Debug)]
pub struct Filter {
    id: u64,
    /// Leftmost-first over the distinct failregexes (pattern id = index in `fail`).
    first: Regex,
    /// `MatchKind::All` over the distinct failregexes, then the distinct ignoreregexes.
    all: Regex,
    fail: Vec<FailPattern>,
    jails: Vec<JailPatterns>,
}

/// Per-thread mutable search state for one [`Filter`].
#[derive(Debug)]
pub struct Cache {
    filter: u64,
    first: meta::Cache,
    all: meta::Cache,
    set: PatternSet,
    /// Capture state per distinct failregex, created on first use.
    captures: Vec<Option<(meta::Cache, Captures)>>,
    /// Capture results of the current scan, and which entries to reset.
    memo: Vec<Option<Captured>>,
    touched: Vec<usize>,
}

static NEXT_FILTER_ID: AtomicU64 = AtomicU64::new(0);

fn syntax_config(swap_greed: bool) -> syntax::Config {
    syntax::Config::new()
        .unicode(false)
        .utf8(false)
        .swap_greed(swap_greed)
}

fn combined_config(kind: MatchKind) -> meta::Config {
    meta::Config::new()
        .match_kind(kind)
        .utf8_empty(false)
        .which_captures(WhichCaptures::None)
        .hybrid_cache_capacity(COMBINED_CACHE)
        .nfa_size_limit(Some(COMBINED_NFA_LIMIT))
}

/// regex-automata's own words: the `error:` line of a syntax error (its
/// caret diagram shows the expanded pattern, not the one the user wrote).
fn regex_reason(e: &meta::BuildError) -> String {
    if let Some(syntax) = e.syntax_error() {
        return syntax_reason(&syntax.to_string());
    }
    if let Some(limit) = e.size_limit() {
        return format!("compiled regex exceeds the size limit of {limit} bytes");
    }
    e.to_string()
}

fn syntax_reason(text: &str) -> String {
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .map_or_else(
            || text.split_whitespace().collect::<Vec<_>>().join(" "),
            str::to_string,
        )
}

/// Expands and compiles one failregex into its capture regex.
fn compile_failregex(template: &str) -> Result<(String, FailPattern), String> {
    let expanded = failregex::expand(template, true, true)?;
    let capture = Regex::builder()
        .syntax(syntax_config(true))
        .configure(meta::Config::new().utf8_empty(false))
        .build(&expanded.capture)
        .map_err(|e| regex_reason(&e))?;
    let mut hosts = Vec::with_capacity(expanded.hosts.len());
    for (i, kind) in expanded.hosts.iter().enumerate() {
        let group = capture
            .group_info()
            .to_index(PatternID::ZERO, &failregex::host_group(i))
            .ok_or_else(|| "internal error: host group missing".to_string())?;
        hosts.push((group, *kind));
    }
    Ok((expanded.matcher, FailPattern { capture, hosts }))
}

/// Expands and checks one ignoreregex.
fn compile_ignoreregex(template: &str) -> Result<String, String> {
    let expanded = failregex::expand(template, false, false)?;
    syntax::parse_with(&expanded.matcher, &syntax_config(false))
        .map_err(|e| syntax_reason(&e.to_string()))?;
    Ok(expanded.matcher)
}

fn pattern_id(i: usize) -> Result<PatternID, BuildError> {
    PatternID::new(i).map_err(|_| BuildError {
        jail: None,
        kind: PatternKind::Failregex,
        index: None,
        reason: "too many patterns".to_string(),
    })
}

impl Filter {
    /// Compiles every jail's regexes (`jails[i]` is `JailId(i)`) into one
    /// filter.
    pub fn new(jails: &[Jail]) -> Result<Filter, BuildError> {
        if jails.len() > MAX_JAILS {
            return Err(BuildError {
                jail: None,
                kind: PatternKind::Failregex,
                index: None,
                reason: format!("{} jails, at most {MAX_JAILS} are supported", jails.len()),
            });
        }
        let mut fail_texts: Vec<String> = Vec::new();
        let mut fail: Vec<FailPattern> = Vec::new();
        let mut fail_ids: HashMap<String, usize> = HashMap::new();
        let mut ignore_texts: Vec<String> = Vec::new();
        let mut ignore_ids: HashMap<String, usize> = HashMap::new();
        let mut per_jail: Vec<(Vec<usize>, Vec<usize>)> = Vec::with_capacity(jails.len());
        for jail in jails {
            let err = |kind, index, reason| BuildError {
                jail: Some(jail.name.clone()),
                kind,
                index,
                reason,
            };
            if jail.failregex.is_empty() {
                return Err(err(PatternKind::Failregex, None, "no failregex".to_string()));
            }
            let mut mine = (Vec::new(), Vec::new());
            for (i, template) in jail.failregex.iter().enumerate() {
                let (text, pattern) = compile_failregex(template)
                    .map_err(|r| err(PatternKind::Failregex, Some(i), r))?;
                let id = *fail_ids.entry(text.clone()).or_insert_with(|| {
                    fail_texts.push(text);
                    fail.push(pattern);
                    fail_texts.len() - 1
                });
                mine.0.push(id);
            }
            for (i, template) in jail.ignoreregex.iter().enumerate() {
                let text = compile_ignoreregex(template)
                    .map_err(|r| err(PatternKind::Ignoreregex, Some(i), r))?;
                let id = *ignore_ids.entry(text.clone()).or_insert_with(|| {
                    ignore_texts.push(text);
                    ignore_texts.len() - 1
                });
                mine.1.push(id);
            }
            per_jail.push(mine);
        }
        let whole = |kind, e: meta::BuildError| BuildError {
            jail: None,
            kind,
            index: None,
            reason: format!("combined matcher: {}", regex_reason(&e)),
        };
        let first = Regex::builder()
            .syntax(syntax_config(false))
            .configure(combined_config(MatchKind::LeftmostFirst))
            .build_many(&fail_texts)
            .map_err(|e| whole(PatternKind::Failregex, e))?;
        let all_texts: Vec<&String> = fail_texts.iter().chain(&ignore_texts).collect();
        let all = Regex::builder()
            .syntax(syntax_config(false))
            .configure(combined_config(MatchKind::All))
            .build_many(&all_texts)
            .map_err(|e| whole(PatternKind::Ignoreregex, e))?;
        let mut jail_patterns = Vec::with_capacity(per_jail.len());
        for (f, i) in per_jail {
            jail_patterns.push(JailPatterns {
                fail: f.into_iter().map(pattern_id).collect::<Result<_, _>>()?,
                ignore: i
                    .into_iter()
                    .map(|i| pattern_id(fail_texts.len() + i))
                    .collect::<Result<_, _>>()?,
            });
        }
        Ok(Filter {
            id: NEXT_FILTER_ID.fetch_add(1, Ordering::Relaxed),
            first,
            all,
            fail,
            jails: jail_patterns,
        })
    }

    /// Checks a single failregex the way [`Filter::new`] would; the error is
    /// the reason alone.
    pub fn validate(pattern: &str) -> Result<(), String> {
        let (text, _) = compile_failregex(pattern)?;
        syntax::parse_with(&text, &syntax_config(false))
            .map_err(|e| syntax_reason(&e.to_string()))?;
        Ok(())
    }

    /// Fresh search state for this filter; keep one per thread.
    pub fn cache(&self) -> Cache {
        Cache {
            filter: self.id,
            first: self.first.create_cache(),
            all: self.all.create_cache(),
            set: PatternSet::new(self.all.pattern_len()),
            captures: (0..self.fail.len()).map(|_| None).collect(),
            memo: vec![None; self.fail.len()],
            touched: Vec::new(),
        }
    }

    /// Matches one journal MESSAGE for the jails in `jails` (those whose
    /// journalmatch the entry satisfied) and appends at most one [`Hit`] per
    /// such jail to `hits`.
    pub fn scan(&self, cache: &mut Cache, message: &[u8], jails: &JailSet, hits: &mut Vec<Hit>) {
        if cache.filter != self.id {
            *cache = self.cache();
        }
        if jails.is_empty() {
            return;
        }
        let input = Input::new(message);
        if !self.first.is_match_with(&mut cache.first, &input) {
            return;
        }
        cache.set.clear();
        self.all
            .which_overlapping_matches_with(&mut cache.all, &input, &mut cache.set);
        for (j, patterns) in self.jails.iter().enumerate() {
            // `new` refuses more than MAX_JAILS jails, so this never fails.
            let Ok(id) = u16::try_from(j).map(JailId) else {
                break;
            };
            if !jails.contains(id) {
                continue;
            }
            let mut chosen: Option<(usize, Outcome)> = None;
            for (k, pid) in patterns.fail.iter().enumerate() {
                if !cache.set.contains(*pid) {
                    continue;
                }
                match self.capture(cache, pid.as_usize(), message) {
                    Captured::Addr(ip) => {
                        chosen = Some((k, Outcome::Failure(ip)));
                        break;
                    }
                    Captured::NotAnAddress if chosen.is_none() => {
                        chosen = Some((k, Outcome::NotAnAddress));
                    }
                    Captured::NotAnAddress | Captured::NoMatch => {}
                }
            }
            if let Some((failregex, mut outcome)) = chosen {
                if patterns.ignore.iter().any(|p| cache.set.contains(*p)) {
                    outcome = Outcome::Ignored;
                }
                hits.push(Hit {
                    jail: id,
                    failregex,
                    outcome,
                });
            }
        }
        for i in cache.touched.drain(..) {
            if let Some(slot) = cache.memo.get_mut(i) {
                *slot = None;
            }
        }
    }

    /// Runs (or recalls) the capture regex of distinct failregex `i`.
    fn capture(&self, cache: &mut Cache, i: usize, message: &[u8]) -> Captured {
        if let Some(Some(done)) = cache.memo.get(i) {
            return *done;
        }
        let (Some(pattern), Some(slot)) = (self.fail.get(i), cache.captures.get_mut(i)) else {
            return Captured::NoMatch;
        };
        let (re_cache, caps) = slot.get_or_insert_with(|| {
            (
                pattern.capture.create_cache(),
                pattern.capture.create_captures(),
            )
        });
        let input = Input::new(message).anchored(Anchored::Yes);
        pattern.capture.search_captures_with(re_cache, &input, caps);
        let result = if !caps.is_match() {
            Captured::NoMatch
        } else {
            let first = pattern
                .hosts
                .iter()
                .find_map(|(group, kind)| caps.get_group(*group).map(|span| (span, *kind)));
            match first {
                Some((span, kind)) if host::delimited(message, span.start, span.end) => {
                    match message.get(span.range()).and_then(|t| host::parse(t, kind)) {
                        Some(ip) => Captured::Addr(ip),
                        None => Captured::NotAnAddress,
                    }
                }
                _ => Captured::NotAnAddress,
            }
        };
        if let Some(memo) = cache.memo.get_mut(i) {
            *memo = Some(result);
            cache.touched.push(i);
        }
        result
    }
}

#[cfg(test)]
mod tests;
