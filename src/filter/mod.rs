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
//! 1. A `MatchKind::All` matcher over the failregexes reports every one
//!    that matches (`which_overlapping_matches`). Most lines (connects,
//!    TLS, queue manager chatter) stop here, usually after a few bytes,
//!    since every failregex is anchored (below).
//! 2. On a hit, and only for a jail that has ignoreregexes, a second such
//!    matcher over the ignoreregexes (searched anywhere in the line, so
//!    over all of it) says whether one of the jail's matches too.
//! 3. Only for those candidates, a small per-failregex `meta::Regex` runs
//!    the captures that find the host. (Capturing through the combined
//!    matcher would need a capture cache of hundreds of MB.) Identical
//!    patterns of several jails share one pattern and one capture run.
//!    A failregex that starts with a literal and a `.*` (the tutorial's
//!    `lost connection after AUTH from (.*)\[<HOST>\]`) is searched past
//!    the literal, at the places its tail can start (`lead.rs`).
//!
//! # fail2ban's filters
//!
//! Jails whose filter comes from fail2ban ([`FilterInput::Fail2banLine`])
//! are matched with fail2ban's semantics instead, on the line fail2ban's
//! journal backend builds: see `imported.rs` (how) and `python.rs` (the
//! translation of Python's regex dialect, and of look-around, which the
//! DFA only over-approximates and an exact engine then confirms). Their
//! failregexes have their own combined DFA, so the cost of a line stays
//! flat in the number of jails there too. [`Filter::scan_entry`] matches
//! both kinds; [`Filter::scan`] only banjo's own.
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
mod imported;
mod lead;
mod literals;
mod python;

pub use self::literals::LinePrefilter;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use regex_automata::meta::{self, Regex};
use regex_automata::nfa::thompson::WhichCaptures;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchKind, PatternID, PatternSet};

use crate::jail::{FilterInput, Jail, JailId, JailSet, MAX_JAILS};

use self::host::HostKind;
use self::imported::{Imported, Spec, Text, Tries};
use self::lead::{Lead, Search, Slot};

/// Marks the first failregex of a [`FilterInput::Fail2banLine`] jail as
/// its fail2ban `prefregex` (it is a Python comment group, so the entry
/// stays a valid fail2ban regex). `crate::fail2ban` writes it; until
/// `Jail` carries the prefregex itself, this is how it reaches the filter.
pub const PREFREGEX_MARK: &str = "(?#banjo:prefregex)";

/// banjo's failregexes for Postfix smtpd (journal MESSAGE, no syslog prefix):
/// SASL authentication failures; 5xx rejects of RCPT, MAIL, EHLO/HELO,
/// VRFY, DATA or BDAT (non-FQDN HELO, relay access denied, unknown user,
/// milter rejects, ...); the 4xx rejects fail2ban's `postfix` filter also
/// counts (client or HELO host not found, unknown sender domain, RBL
/// listings: not greylisting); and "improper command pipelining" or "too
/// many errors" after a command. Each with the client's `name[address]`
/// (and port, with `smtpd_client_port_logging`). On fail2ban's own postfix
/// samples this finds every failure its default mode finds (see
/// tests/conformance.rs).
pub const POSTFIX_FAILREGEX: &[&str] = &[
    r"warning: [-._0-9A-Za-z]+\[<HOST>\](?::[0-9]+)?: SASL [-_0-9A-Za-z]+ authentication failed",
    r"[0-9A-Za-z]+: (?:milter-)?reject: (?:RCPT|MAIL|EHLO|HELO|VRFY|DATA|BDAT|END-OF-MESSAGE) from [-._0-9A-Za-z]*\[<HOST>\](?::[0-9]+)?: 5[0-9][0-9] ",
    r"[0-9A-Za-z]+: (?:milter-)?reject: (?:RCPT|MAIL|EHLO|HELO|VRFY|DATA|BDAT) from [-._0-9A-Za-z]*\[<HOST>\](?::[0-9]+)?: 4[0-9][0-9] 4\.[0-9]\.[0-9]+ (?:(?:<[^>]*>)?: )?(?:(?:Helo command|(?:Sender|Recipient) address) rejected: )?(?:Service unavailable|(?:Client host|Command|Data command) rejected|Relay access denied|(?:Host|Domain) not found|need fully-qualified hostname)",
    r"(?:improper command pipelining|too many errors) after [A-Z]+ from [-._0-9A-Za-z]*\[<HOST>\](?::[0-9]+)?(?::|$)",
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

/// Checks a fail2ban filter's regexes the way [`Filter::new`] compiles
/// them for a [`FilterInput::Fail2banLine`] jail. In the error, a
/// prefregex problem has no index; failregex `i` is the `i`-th failregex.
pub fn check_fail2ban(
    prefregex: Option<&str>,
    failregex: &[String],
    ignoreregex: &[String],
) -> Result<(), BuildError> {
    let fail: Vec<(usize, String)> = failregex.iter().cloned().enumerate().collect();
    Imported::new(&[Spec {
        name: "check".to_string(),
        prefregex: prefregex.map(str::to_string),
        failregex: fail,
        ignoreregex: ignoreregex.to_vec(),
    }])
    .map(|_| ())
    .map_err(|mut e| {
        if e.reason.starts_with("prefregex: ") {
            e.index = None;
            e.reason = e.reason["prefregex: ".len()..].to_string();
        }
        e
    })
}

/// A [`Hit`] with the failure id as the filter found it (for `banjo
/// check` and the conformance test; the daemon needs only the hit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detail {
    /// The hit.
    pub hit: Hit,
    /// The failure id: the address, or for fail2ban filters the host name
    /// or `<F-ID>` text fail2ban would report; `None` for ignored hits.
    pub host: Option<String>,
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
    /// The regex searched for groups: the whole pattern, or with a
    /// `lead`, the rest of it after the leading literal.
    capture: Regex,
    /// The pattern starts with a literal and a `.*`, searched past as
    /// `lead.rs` says.
    lead: Option<Lead>,
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
    /// `MatchKind::All` over the distinct failregexes (pattern id = index
    /// in `fail`).
    fails: Regex,
    /// `MatchKind::All` over the distinct ignoreregexes; `None` if no jail
    /// has one.
    ignores: Option<Regex>,
    fail: Vec<FailPattern>,
    jails: Vec<JailPatterns>,
    /// The fail2ban-dialect jails, and which jail each is.
    imported: Option<Imported>,
    imported_ids: Vec<JailId>,
    /// Whether any jail uses banjo's own dialect.
    has_native: bool,
    /// The distinct failregexes of banjo's own dialect, as compiled.
    fail_texts: Vec<String>,
}

/// Per-thread mutable search state for one [`Filter`].
#[derive(Debug)]
pub struct Cache {
    filter: u64,
    fails: meta::Cache,
    ignores: Option<meta::Cache>,
    /// The failregexes that matched the line...
    set: PatternSet,
    /// ...and the ignoreregexes, once searched (`ignores_searched`).
    ignore_set: PatternSet,
    ignores_searched: bool,
    /// Capture state per distinct failregex: its `capture` regex's and
    /// its lead's tail's (see [`lead::first_match`]).
    captures: Vec<[Slot; 2]>,
    /// Capture results of the current scan, and which entries to reset.
    memo: Vec<Option<Captured>>,
    touched: Vec<usize>,
    /// State of the fail2ban-dialect jails.
    imported: Option<imported::State>,
    /// The fail2ban line being matched, `\n` appended.
    line: Vec<u8>,
    /// How fail2ban-dialect jails try their failregexes on an ASCII line:
    /// after the combined DFA, if the filter judges it worth running
    /// (`Imported::wants_prefilter`); at once, expecting matches, after
    /// [`Cache::skip_combined_pass`].
    tries: Tries,
}

impl Cache {
    /// For a caller whose lines, narrowed down by a [`LinePrefilter`],
    /// mostly match: fail2ban-dialect jails then match each line exactly
    /// at once, without first running the combined DFA over it (which
    /// only pays when it rejects most lines). The outcome is the same.
    pub fn skip_combined_pass(&mut self) {
        self.tries = Tries::Expected;
    }
}

static NEXT_FILTER_ID: AtomicU64 = AtomicU64::new(0);

fn syntax_config(swap_greed: bool) -> syntax::Config {
    syntax::Config::new()
        .unicode(false)
        .utf8(false)
        .swap_greed(swap_greed)
}

/// The configuration of a regex searched for groups. `backtrack_only`
/// leaves out the lazy DFA pass meta otherwise makes to find the match
/// first: for anchored searches where a match is all but certain. The
/// backtracker runs then, or the PikeVM on lines too long for it.
fn capture_config(backtrack_only: bool) -> meta::Config {
    meta::Config::new()
        .utf8_empty(false)
        .hybrid(!backtrack_only)
        .dfa(!backtrack_only)
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
    // The capture search runs only where the combined matcher has found a
    // match, anchored: a DFA pass to find the match's end first would only
    // repeat that.
    let whole = Regex::builder()
        .syntax(syntax_config(true))
        .configure(capture_config(true))
        .build(&expanded.capture)
        .map_err(|e| regex_reason(&e))?;
    let (capture, lead) = match Lead::compile_anchored(&expanded.capture)? {
        Some((lead, rest)) if lead::same_groups(&rest, &whole) => (rest, Some(lead)),
        _ => (whole, None),
    };
    let mut hosts = Vec::with_capacity(expanded.hosts.len());
    for (i, kind) in expanded.hosts.iter().enumerate() {
        let group = capture
            .group_info()
            .to_index(PatternID::ZERO, &failregex::host_group(i))
            .ok_or_else(|| "internal error: host group missing".to_string())?;
        hosts.push((group, *kind));
    }
    Ok((
        expanded.matcher,
        FailPattern {
            capture,
            lead,
            hosts,
        },
    ))
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
        let mut imported_specs = Vec::new();
        let mut imported_ids = Vec::new();
        for (j, jail) in jails.iter().enumerate() {
            if jail.input == FilterInput::Fail2banLine {
                if jail.failregex.is_empty() {
                    return Err(BuildError {
                        jail: Some(jail.name.clone()),
                        kind: PatternKind::Failregex,
                        index: None,
                        reason: "the list is empty".to_string(),
                    });
                }
                let mut prefregex = None;
                let mut fail = Vec::new();
                for (i, re) in jail.failregex.iter().enumerate() {
                    match re.strip_prefix(PREFREGEX_MARK) {
                        Some(p) if i == 0 => prefregex = Some(p.to_string()),
                        _ => fail.push((i, re.clone())),
                    }
                }
                if fail.is_empty() {
                    return Err(BuildError {
                        jail: Some(jail.name.clone()),
                        kind: PatternKind::Failregex,
                        index: None,
                        reason: "no failregex after the prefregex".to_string(),
                    });
                }
                imported_specs.push(Spec {
                    name: jail.name.clone(),
                    prefregex,
                    failregex: fail,
                    ignoreregex: jail.ignoreregex.clone(),
                });
                imported_ids.push(JailId(u16::try_from(j).unwrap_or(u16::MAX)));
                per_jail.push((Vec::new(), Vec::new()));
                continue;
            }
            let err = |kind, index, reason| BuildError {
                jail: Some(jail.name.clone()),
                kind,
                index,
                reason,
            };
            if jail.failregex.is_empty() {
                return Err(err(
                    PatternKind::Failregex,
                    None,
                    "the list is empty".to_string(),
                ));
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
        let fails = Regex::builder()
            .syntax(syntax_config(false))
            .configure(combined_config(MatchKind::All))
            .build_many(&fail_texts)
            .map_err(|e| whole(PatternKind::Failregex, e))?;
        let ignores = match ignore_texts.is_empty() {
            true => None,
            false => Some(
                Regex::builder()
                    .syntax(syntax_config(false))
                    .configure(combined_config(MatchKind::All))
                    .build_many(&ignore_texts)
                    .map_err(|e| whole(PatternKind::Ignoreregex, e))?,
            ),
        };
        let mut jail_patterns = Vec::with_capacity(per_jail.len());
        for (f, i) in per_jail {
            jail_patterns.push(JailPatterns {
                fail: f.into_iter().map(pattern_id).collect::<Result<_, _>>()?,
                ignore: i.into_iter().map(pattern_id).collect::<Result<_, _>>()?,
            });
        }
        let imported = if imported_specs.is_empty() {
            None
        } else {
            Some(Imported::new(&imported_specs)?)
        };
        Ok(Filter {
            id: NEXT_FILTER_ID.fetch_add(1, Ordering::Relaxed),
            fails,
            ignores,
            fail,
            jails: jail_patterns,
            has_native: imported_ids.len() < jails.len(),
            imported,
            imported_ids,
            fail_texts,
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

    /// Whether matching a line never depends on earlier lines (no jail
    /// uses fail2ban's multi-line failure ids), so lines may be matched
    /// in any order, on several threads.
    pub fn is_stateless(&self) -> bool {
        self.imported.as_ref().map_or(true, Imported::is_stateless)
    }

    /// A search for the lines this filter may match, over a whole buffer
    /// (see [`LinePrefilter`]), tuned to `sample` (some of the input);
    /// `None` when some failregex needs no literal worth searching for.
    pub fn line_prefilter(&self, sample: &[u8]) -> Option<LinePrefilter> {
        let mut jails = Vec::new();
        if self.has_native {
            jails.push(vec![self.fail_texts.iter().map(String::as_str).collect()]);
        }
        if let Some(imp) = &self.imported {
            jails.extend(imp.conditions());
        }
        LinePrefilter::new(&jails, &syntax_config(false), sample)
    }

    /// Fresh search state for this filter; keep one per thread.
    pub fn cache(&self) -> Cache {
        Cache {
            filter: self.id,
            fails: self.fails.create_cache(),
            ignores: self.ignores.as_ref().map(Regex::create_cache),
            set: PatternSet::new(self.fails.pattern_len()),
            ignore_set: PatternSet::new(self.ignores.as_ref().map_or(0, Regex::pattern_len)),
            ignores_searched: false,
            captures: (0..self.fail.len()).map(|_| [None, None]).collect(),
            memo: vec![None; self.fail.len()],
            touched: Vec::new(),
            imported: self.imported.as_ref().map(Imported::state),
            line: Vec::new(),
            tries: match self
                .imported
                .as_ref()
                .is_some_and(Imported::wants_prefilter)
            {
                true => Tries::Listed,
                false => Tries::Blind,
            },
        }
    }

    /// Matches one journal entry for the jails in `jails`: banjo's own
    /// filters see `message` (the bare MESSAGE), fail2ban filters see
    /// `line`, the line fail2ban's systemd backend builds
    /// (`_HOSTNAME SYSLOG_IDENTIFIER[SYSLOG_PID]: MESSAGE`, see
    /// [`FilterInput::Fail2banLine`]). Appends at most one [`Hit`] per
    /// jail to `hits`.
    pub fn scan_entry(
        &self,
        cache: &mut Cache,
        message: &[u8],
        line: &[u8],
        jails: &JailSet,
        hits: &mut Vec<Hit>,
    ) {
        if self.has_native {
            self.scan(cache, message, jails, hits);
        }
        self.scan_imported(cache, line, jails, &mut |hit, _| hits.push(hit));
    }

    /// [`Filter::scan_entry`], with the failure id of each hit.
    pub fn scan_entry_details(
        &self,
        cache: &mut Cache,
        message: &[u8],
        line: &[u8],
        jails: &JailSet,
        out: &mut Vec<Detail>,
    ) {
        let mut hits = Vec::new();
        if self.has_native {
            self.scan(cache, message, jails, &mut hits);
        }
        for hit in hits {
            let host = match hit.outcome {
                Outcome::Failure(ip) => Some(ip.to_string()),
                _ => None,
            };
            out.push(Detail { hit, host });
        }
        self.scan_imported(cache, line, jails, &mut |hit, host| {
            out.push(Detail { hit, host })
        });
    }

    /// The fail2ban-dialect jails' part of a scan.
    fn scan_imported(
        &self,
        cache: &mut Cache,
        line: &[u8],
        jails: &JailSet,
        sink: &mut dyn FnMut(Hit, Option<String>),
    ) {
        let Some(imp) = &self.imported else {
            return;
        };
        if cache.filter != self.id {
            *cache = self.cache();
        }
        if !self.imported_ids.iter().any(|id| jails.contains(*id)) {
            return;
        }
        let Cache {
            line: buf,
            imported: state,
            ..
        } = cache;
        let Some(state) = state.as_mut() else {
            return;
        };
        // fail2ban's journal backend writes a newline in MESSAGE as a
        // backslash and an `n`,
        // and searches the line with a newline appended.
        buf.clear();
        if line.contains(&b'\n') {
            for &b in line {
                if b == b'\n' {
                    buf.extend_from_slice(b"\\n");
                } else {
                    buf.push(b);
                }
            }
        } else {
            buf.extend_from_slice(line);
        }
        buf.push(b'\n');
        let ascii = buf.is_ascii();
        let lossy = match std::str::from_utf8(buf) {
            Ok(s) => std::borrow::Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(buf),
        };
        let text = Text {
            bytes: lossy.as_bytes(),
            str: &lossy,
            ascii,
        };
        // The combined DFA runs on ASCII lines only.
        let tries = match cache.tries {
            Tries::Listed if !ascii => Tries::Blind,
            tries => tries,
        };
        if tries == Tries::Listed && !imp.prefilter(state, &text) {
            return;
        }
        for (k, id) in self.imported_ids.iter().enumerate() {
            if !jails.contains(*id) {
                continue;
            }
            if let Some(found) = imp.eval(k, state, &text, tries) {
                sink(
                    Hit {
                        jail: *id,
                        failregex: found.failregex,
                        outcome: found.outcome,
                    },
                    found.host,
                );
            }
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
        cache.set.clear();
        self.fails
            .which_overlapping_matches_with(&mut cache.fails, &input, &mut cache.set);
        if cache.set.is_empty() {
            return;
        }
        cache.ignores_searched = false;
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
                if !patterns.ignore.is_empty() && self.ignored(cache, message, &patterns.ignore) {
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

    /// Whether one of `ignore` (a jail's ignoreregexes) matches `message`:
    /// they are all searched at the first such question of a scan, and
    /// only for lines some failregex matched.
    fn ignored(&self, cache: &mut Cache, message: &[u8], ignore: &[PatternID]) -> bool {
        if !cache.ignores_searched {
            cache.ignores_searched = true;
            cache.ignore_set.clear();
            if let (Some(re), Some(re_cache)) = (&self.ignores, &mut cache.ignores) {
                re.which_overlapping_matches_with(
                    re_cache,
                    &Input::new(message),
                    &mut cache.ignore_set,
                );
            }
        }
        ignore.iter().any(|p| cache.ignore_set.contains(*p))
    }

    /// Runs (or recalls) the capture regex of distinct failregex `i`.
    fn capture(&self, cache: &mut Cache, i: usize, message: &[u8]) -> Captured {
        if let Some(Some(done)) = cache.memo.get(i) {
            return *done;
        }
        let (Some(pattern), Some(slots)) = (self.fail.get(i), cache.captures.get_mut(i)) else {
            return Captured::NoMatch;
        };
        let found = match &pattern.lead {
            Some(lead) => lead::first_match(lead.searches(&pattern.capture, message), slots),
            None => {
                let whole = Search {
                    regex: &pattern.capture,
                    tail: false,
                    input: Input::new(message).anchored(Anchored::Yes),
                };
                lead::first_match(std::iter::once(whole), slots)
            }
        };
        let caps = found
            .and_then(|k| slots.get(k)?.as_ref())
            .map(|(_, caps)| caps);
        let result = match caps {
            None => Captured::NoMatch,
            Some(caps) => {
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
mod tests {

    use super::*;
    use crate::jail::{JournalMatch, MatchTerm};

    fn jail(name: &str, failregex: &[&str], ignoreregex: &[&str]) -> Jail {
        Jail {
            journalmatch: JournalMatch {
                groups: vec![vec![MatchTerm {
                    field: "SYSLOG_IDENTIFIER".into(),
                    value: "postfix/smtpd".into(),
                }]],
            },
            failregex: failregex.iter().map(|s| s.to_string()).collect(),
            ignoreregex: ignoreregex.iter().map(|s| s.to_string()).collect(),
            ..Jail::test(name)
        }
    }

    fn scan_all(filter: &Filter, line: &[u8]) -> Vec<Hit> {
        let mut cache = filter.cache();
        let mut hits = Vec::new();
        filter.scan(
            &mut cache,
            line,
            &JailSet::first(filter.jails.len()),
            &mut hits,
        );
        hits
    }

    /// The outcome of the single jail of `filter`, if any.
    fn one(filter: &Filter, line: &str) -> Option<Outcome> {
        let hits = scan_all(filter, line.as_bytes());
        assert!(hits.len() <= 1, "{hits:?}");
        hits.first().map(|h| h.outcome)
    }

    fn failure(s: &str) -> Option<Outcome> {
        Some(Outcome::Failure(s.parse().unwrap()))
    }

    fn postfix() -> Filter {
        Filter::new(&[jail("postfix", POSTFIX_FAILREGEX, POSTFIX_IGNOREREGEX)]).unwrap()
    }

    const FLOOD: &str = r"lost connection after AUTH from (.*)\[<HOST>\]";

    #[test]
    fn tutorial_flood_failregex() {
        let f = Filter::new(&[jail("flood", &[FLOOD], &[])]).unwrap();
        assert_eq!(
            one(
                &f,
                "lost connection after AUTH from unknown[114.232.141.99]"
            ),
            failure("114.232.141.99")
        );
        assert_eq!(
            one(&f, "lost connection after AUTH from unknown[2001:db8::66]"),
            failure("2001:db8::66")
        );
        assert_eq!(
            one(&f, "lost connection after EHLO from unknown[192.0.2.66]"),
            None
        );
        assert_eq!(one(&f, "connect from unknown[192.0.2.66]"), None);
        // Anchored: the words must start the message.
        assert_eq!(
            one(&f, "x lost connection after AUTH from unknown[192.0.2.66]"),
            None
        );
    }

    #[test]
    fn real_postfix_lines() {
        let f = postfix();
        let cases: &[(&str, Option<Outcome>)] = &[
            (
                "warning: unknown[192.0.2.66]: SASL LOGIN authentication failed: authentication failure, sasl_username=alice@example.test",
                failure("192.0.2.66"),
            ),
            ("warning: SASL authentication failure: Password verification failed", None),
            (
                "warning: bad.example.net[192.0.2.77]: SASL LOGIN authentication failed: authentication failure, sasl_username=admin@example.test",
                failure("192.0.2.77"),
            ),
            (
                "warning: unknown[2001:db8::66]: SASL LOGIN authentication failed: authentication failure, sasl_username=alice@example.test",
                failure("2001:db8::66"),
            ),
            (
                "warning: unknown[192.0.2.66]:50312: SASL PLAIN authentication failed: UGFzc3dvcmQ6",
                failure("192.0.2.66"),
            ),
            (
                "NOQUEUE: reject: RCPT from unknown[192.0.2.66]: 504 5.5.2 <ylmf-pc>: Helo command rejected: need fully-qualified hostname; from=<spam@example.net> to=<alice@example.test> proto=ESMTP helo=<ylmf-pc>",
                failure("192.0.2.66"),
            ),
            (
                "NOQUEUE: reject: RCPT from unknown[192.0.2.66]: 554 5.7.1 <victim@example.org>: Relay access denied; from=<spam@example.net> to=<victim@example.org> proto=ESMTP helo=<example.net>",
                failure("192.0.2.66"),
            ),
            (
                "NOQUEUE: reject: RCPT from bad.example.net[192.0.2.77]: 550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown in local recipient table; from=<a@example.net> to=<nobody@example.test> proto=ESMTP helo=<bad.example.net>",
                failure("192.0.2.77"),
            ),
            (
                "D45C3D01B2: reject: RCPT from unknown[192.0.2.66]: 554 5.7.1 <v@example.org>: Relay access denied; from=<s@example.net> to=<v@example.org> proto=ESMTP helo=<x>",
                failure("192.0.2.66"),
            ),
            // The temporary rejects fail2ban counts too.
            (
                "NOQUEUE: reject: RCPT from unknown[192.0.2.66]: 450 4.7.1 Client host rejected: cannot find your hostname, [192.0.2.66]; from=<a@example.net> to=<b@example.test> proto=ESMTP helo=<x>",
                failure("192.0.2.66"),
            ),
            (
                "improper command pipelining after DATA from unknown[192.0.2.66]:",
                failure("192.0.2.66"),
            ),
            (
                "too many errors after RCPT from mail.example.net[192.0.2.66]",
                failure("192.0.2.66"),
            ),
            (
                "NOQUEUE: reject: RCPT from [192.0.2.66]:60591: 550 5.7.1 Service unavailable; client [192.0.2.66] blocked using rbl.example.com",
                failure("192.0.2.66"),
            ),
            // Greylisting and other temporary rejects are not failures.
            (
                "NOQUEUE: reject: RCPT from unknown[192.0.2.66]: 450 4.7.1 <x@example.test>: Recipient address rejected: try later; from=<a@example.net> to=<x@example.test> proto=ESMTP helo=<a>",
                None,
            ),
            ("connect from unknown[1.2.3.4]", None),
            ("connect from unknown[192.0.2.66]", None),
            ("lost connection after AUTH from unknown[192.0.2.66]", None),
            ("disconnect from unknown[192.0.2.66] ehlo=1 auth=0/1 commands=1/2", None),
            (
                "D45C3D01B2: client=legit.example.test[192.0.2.10], sasl_method=PLAIN, sasl_username=alice@example.test",
                None,
            ),
            // Dovecot's auth service being down is not the client's fault.
            (
                "warning: unknown[192.0.2.66]: SASL PLAIN authentication failed: Connection lost to authentication server",
                Some(Outcome::Ignored),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(one(&f, line), *want, "{line}");
        }
    }

    #[test]
    fn earliest_host_wins() {
        let f = Filter::new(&[jail(
            "sasl",
            &[r"warning: (.*)\[<HOST>\]: SASL \S+ authentication failed"],
            &[],
        )])
        .unwrap();
        let line = "warning: unknown[198.51.100.7]: SASL LOGIN authentication failed: authentication failure, sasl_username=x]: SASL LOGIN authentication failed [192.0.2.99]: SASL PLAIN authentication failed";
        assert_eq!(one(&f, line), failure("198.51.100.7"));
        // A lazy marker the user wrote stays lazy.
        let f = Filter::new(&[jail(
            "lazy",
            &[r"warning: (.*?)\[<HOST>\]: SASL \S+? authentication failed"],
            &[],
        )])
        .unwrap();
        assert_eq!(one(&f, line), failure("198.51.100.7"));
    }

    #[test]
    fn searching_past_the_literal_finds_what_the_whole_pattern_finds() {
        let patterns = [
            FLOOD,
            r"warning: (.*)\[<HOST>\]: SASL \S+ authentication failed",
            r"warning: .*?\[<HOST>\]",
            r"client (.*)\[<ADDR>\]:(.*)\[<HOST>\]",
        ];
        let brackets = "[".repeat(lead::MAX_TAIL_TRIES + 1);
        let lines = [
            "lost connection after AUTH from unknown[192.0.2.66]".to_string(),
            "lost connection after AUTH from a[b] c[192.0.2.66] [192.0.2.99]".to_string(),
            "lost connection after AUTH from [[192.0.2.66]]".to_string(),
            format!("lost connection after AUTH from {brackets}192.0.2.66]"),
            "lost connection after AUTH from x\n[192.0.2.66]".to_string(),
            "lost connection after AUTH from x[\n192.0.2.66] [192.0.2.99]".to_string(),
            "warning: unknown[198.51.100.7]: SASL LOGIN authentication failed: x]: SASL LOGIN authentication failed [192.0.2.99]".to_string(),
            "warning: [x]: SASL PLAIN authentication failed".to_string(),
            "client a[192.0.2.1]:b[192.0.2.2]".to_string(),
            "client a[192.0.2.1]:b[c]".to_string(),
        ];
        for pattern in patterns {
            let f = Filter::new(&[jail("j", &[pattern], &[])]).unwrap();
            assert!(f.fail[0].lead.is_some(), "{pattern}");
            // The same filter, searching the whole pattern as before.
            let mut whole = Filter::new(&[jail("j", &[pattern], &[])]).unwrap();
            whole.fail[0].lead = None;
            whole.fail[0].capture = Regex::builder()
                .syntax(syntax_config(true))
                .configure(capture_config(true))
                .build(&failregex::expand(pattern, true, true).unwrap().capture)
                .unwrap();
            for line in &lines {
                let want = one(&whole, line);
                assert_eq!(one(&f, line), want, "{pattern} on {line:?}");
            }
        }
    }

    #[test]
    fn injection_never_yields_the_injected_address() {
        let regexes: Vec<&str> = POSTFIX_FAILREGEX.iter().copied().chain([FLOOD]).collect();
        let f = Filter::new(&[jail("all", &regexes, &[])]).unwrap();
        let payloads = [
            "from unknown[192.0.2.99]",
            "[192.0.2.99]",
            "lost connection after AUTH from unknown[192.0.2.99]",
            "x]: SASL LOGIN authentication failed [192.0.2.99]",
            "\nlost connection after AUTH from unknown[192.0.2.99]",
        ];
        for p in payloads {
            let lines = [
                format!("warning: unknown[192.0.2.66]: SASL LOGIN authentication failed: authentication failure, sasl_username={p}"),
                format!("NOQUEUE: reject: RCPT from unknown[192.0.2.66]: 504 5.5.2 <{p}>: Helo command rejected: need fully-qualified hostname; from=<spam@example.net> to=<alice@example.test> proto=ESMTP helo=<{p}>"),
                format!("lost connection after AUTH from unknown[192.0.2.66] {p}"),
            ];
            for line in &lines {
                let got = one(&f, line);
                assert_eq!(got, failure("192.0.2.66"), "{line}");
            }
            // A line that is no failure stays none, whatever the payload.
            let benign = format!("connect from unknown[192.0.2.66] helo={p}");
            assert_eq!(one(&f, &benign), None, "{benign}");
        }
    }

    #[test]
    fn ignoreregex_vetoes() {
        let f = Filter::new(&[jail(
            "postfix",
            POSTFIX_FAILREGEX,
            &[r"sasl_username=alice@example\.test"],
        )])
        .unwrap();
        assert_eq!(
            one(&f, "warning: unknown[192.0.2.66]: SASL LOGIN authentication failed: authentication failure, sasl_username=alice@example.test"),
            Some(Outcome::Ignored)
        );
        assert_eq!(
            one(&f, "warning: unknown[192.0.2.66]: SASL LOGIN authentication failed: authentication failure, sasl_username=bob@example.test"),
            failure("192.0.2.66")
        );
        // The shipped ignoreregex is anchored: a username cannot forge it.
        let f = postfix();
        assert_eq!(
            one(&f, "warning: unknown[192.0.2.66]: SASL LOGIN authentication failed: authentication failure, sasl_username=authentication failed: Connection lost to authentication server"),
            failure("192.0.2.66")
        );
    }

    #[test]
    fn only_jails_in_the_set() {
        let f = Filter::new(&[
            jail("a", POSTFIX_FAILREGEX, &[]),
            jail("b", &[FLOOD], &[]),
            jail("c", POSTFIX_FAILREGEX, &[r"helo=<ylmf-pc>"]),
        ])
        .unwrap();
        let mut cache = f.cache();
        let line = b"NOQUEUE: reject: RCPT from unknown[192.0.2.66]: 504 5.5.2 <ylmf-pc>: Helo command rejected: need fully-qualified hostname; from=<spam@example.net> to=<alice@example.test> proto=ESMTP helo=<ylmf-pc>";
        let mut hits = Vec::new();
        f.scan(&mut cache, line, &JailSet::first(3), &mut hits);
        assert_eq!(
            hits,
            vec![
                Hit {
                    jail: JailId(0),
                    failregex: 1,
                    outcome: Outcome::Failure("192.0.2.66".parse().unwrap())
                },
                Hit {
                    jail: JailId(2),
                    failregex: 1,
                    outcome: Outcome::Ignored
                },
            ]
        );
        let mut only_b = JailSet::EMPTY;
        only_b.insert(JailId(1));
        hits.clear();
        f.scan(&mut cache, line, &only_b, &mut hits);
        assert!(hits.is_empty());
        let mut only_c = JailSet::EMPTY;
        only_c.insert(JailId(2));
        f.scan(&mut cache, line, &only_c, &mut hits);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].jail, JailId(2));
        hits.clear();
        f.scan(&mut cache, line, &JailSet::EMPTY, &mut hits);
        assert!(hits.is_empty());
        // Shared patterns are stored once.
        assert_eq!(f.fail.len(), POSTFIX_FAILREGEX.len() + 1);
    }

    #[test]
    fn bytes_and_huge_lines() {
        let f = postfix();
        let mut line = b"warning: unknown[192.0.2.66]: SASL LOGIN authentication failed: authentication failure, sasl_username=".to_vec();
        line.extend_from_slice(b"\xff\xfe\x80[192.0.2.99]\xc3");
        assert_eq!(
            scan_all(&f, &line)[0].outcome,
            Outcome::Failure("192.0.2.66".parse().unwrap())
        );
        assert!(scan_all(
            &f,
            b"warning: \xff[192.0.2.66]: SASL LOGIN authentication failed"
        )
        .is_empty());
        assert!(scan_all(&f, b"").is_empty());
        assert!(scan_all(&f, b"\xff\xff\xff\xff").is_empty());
        let mut huge = b"warning: unknown[192.0.2.66]: SASL LOGIN authentication failed: ".to_vec();
        huge.resize(1 << 20, b'A');
        assert_eq!(
            scan_all(&f, &huge)[0].outcome,
            Outcome::Failure("192.0.2.66".parse().unwrap())
        );
        let mut junk: Vec<u8> = (0..1usize << 20).map(|i| (i * 7919 % 251) as u8).collect();
        assert!(scan_all(&f, &junk).is_empty());
        junk.truncate(0);
        junk.resize(1 << 20, b'[');
        assert!(scan_all(&f, &junk).is_empty());
        // A huge line through the flood regex, whose `(.*)` scans it all.
        let f = Filter::new(&[jail("flood", &[FLOOD], &[r"never"])]).unwrap();
        let mut huge = b"lost connection after AUTH from ".to_vec();
        huge.resize(1 << 20, b'x');
        huge.extend_from_slice(b"[192.0.2.66]");
        assert_eq!(
            scan_all(&f, &huge)[0].outcome,
            Outcome::Failure("192.0.2.66".parse().unwrap())
        );
    }

    #[test]
    fn hostnames_are_not_addresses() {
        let f = Filter::new(&[jail(
            "sshd",
            &[r"Failed password for \S+ from <HOST> port \d+"],
            &[],
        )])
        .unwrap();
        assert_eq!(
            one(&f, "Failed password for root from 192.0.2.5 port 22 ssh2"),
            failure("192.0.2.5")
        );
        for line in [
            "Failed password for root from 1.2.3.4.evil.example port 22 ssh2",
            "Failed password for root from host.example.net port 22 ssh2",
            "Failed password for root from 01.2.3.4 port 22 ssh2",
        ] {
            assert_eq!(one(&f, line), Some(Outcome::NotAnAddress), "{line}");
        }
        // A narrow tag followed by word characters was cut out of a word.
        let f = Filter::new(&[jail("ip4", &[r"from <IP4>"], &[])]).unwrap();
        assert_eq!(
            one(&f, "from 1.2.3.4-evil.example"),
            Some(Outcome::NotAnAddress)
        );
        assert_eq!(
            one(&f, "from 1.2.3.4.evil.example"),
            Some(Outcome::NotAnAddress)
        );
        assert_eq!(one(&f, "from 1.2.3.4:25"), failure("1.2.3.4"));
        // A trailing dot belongs to the token unless the pattern says otherwise.
        assert_eq!(one(&f, "from 1.2.3.4."), Some(Outcome::NotAnAddress));
        let f2 = Filter::new(&[jail("dot", &[r"closed by <HOST>\."], &[])]).unwrap();
        assert_eq!(one(&f2, "closed by 1.2.3.4."), failure("1.2.3.4"));
        assert_eq!(one(&f2, "closed by 1.2.3.4.x"), Some(Outcome::NotAnAddress));
        assert_eq!(one(&f, "from 2001:db8::1"), Some(Outcome::NotAnAddress));
        let f = Filter::new(&[jail("ip6", &[r"from <IP6> "], &[])]).unwrap();
        assert_eq!(one(&f, "from 1.2.3.4 "), Some(Outcome::NotAnAddress));
        assert_eq!(one(&f, "from [2001:db8::1]:25 "), failure("2001:db8::1"));
        assert_eq!(one(&f, "from ::ffff:192.0.2.1 "), failure("192.0.2.1"));
        let f = Filter::new(&[jail("addr", &[r"rip=<ADDR>,"], &[])]).unwrap();
        assert_eq!(
            one(&f, "rip=192.0.2.3, lip=192.0.2.1"),
            failure("192.0.2.3")
        );
        assert_eq!(one(&f, "rip=2001:db8::3, lip=::1"), failure("2001:db8::3"));
    }

    #[test]
    fn an_address_beats_an_earlier_non_address() {
        let f = Filter::new(&[jail(
            "two",
            &[r"user \S+ from <HOST>", r"user \S+ from \S+ \(<HOST>\)"],
            &[],
        )])
        .unwrap();
        let hits = scan_all(&f, b"user x from mail.example.net (192.0.2.8)");
        assert_eq!(
            hits,
            vec![Hit {
                jail: JailId(0),
                failregex: 1,
                outcome: Outcome::Failure("192.0.2.8".parse().unwrap())
            }]
        );
        let hits = scan_all(&f, b"user x from mail.example.net");
        assert_eq!(hits[0].failregex, 0);
        assert_eq!(hits[0].outcome, Outcome::NotAnAddress);
    }

    #[test]
    fn first_participating_tag_names_the_host() {
        let f = Filter::new(&[jail("alt", &[r"(?:a=<IP6>|b=<IP4>|c=<HOST>) end"], &[])]).unwrap();
        assert_eq!(one(&f, "b=192.0.2.1 end"), failure("192.0.2.1"));
        assert_eq!(one(&f, "a=2001:db8::2 end"), failure("2001:db8::2"));
        assert_eq!(one(&f, "c=[2001:db8::3] end"), failure("2001:db8::3"));
        let f = Filter::new(&[jail("opt", &[r"x(?: <HOST>)? y"], &[])]).unwrap();
        assert_eq!(one(&f, "x y"), Some(Outcome::NotAnAddress));
    }

    #[test]
    fn python_isms_work() {
        let f = Filter::new(&[jail(
            "py",
            &[r"(?P<verb>RCPT) from [^[]*\[<HOST>\]: 5\d\d (?#the code)"],
            &[],
        )])
        .unwrap();
        assert_eq!(
            one(&f, "RCPT from unknown[192.0.2.9]: 550 no"),
            failure("192.0.2.9")
        );
        // Literal angle brackets around a class keep working.
        let f = Filter::new(&[jail(
            "helo",
            &[r"reject: RCPT from \S+\[<HOST>\]: 5\d\d .* helo=<[^>]*>$"],
            &[],
        )])
        .unwrap();
        assert_eq!(
            one(
                &f,
                "reject: RCPT from unknown[192.0.2.9]: 504 x helo=<ylmf-pc>"
            ),
            failure("192.0.2.9")
        );
        assert_eq!(
            one(&f, "reject: RCPT from unknown[192.0.2.9]: 504 x helo=<a>b>"),
            None
        );
        // User group names do not clash with banjo's.
        let f = Filter::new(&[jail("names", &[r"(?P<host>\S+)\[<HOST>\]"], &[])]).unwrap();
        assert_eq!(one(&f, "name[192.0.2.4]"), failure("192.0.2.4"));
    }

    #[test]
    fn ascii_syntax_keeps_the_lazy_dfa() {
        let hir = syntax::parse_with(r"\bfoo\b\w+", &syntax_config(false)).unwrap();
        let looks = hir.properties().look_set();
        assert!(looks.contains_word_ascii());
        assert!(!looks.contains_word_unicode());
        // The combined patterns build as a lazy DFA and search without
        // giving up on a real line.
        let f = Filter::new(&[
            jail("postfix", POSTFIX_FAILREGEX, POSTFIX_IGNOREREGEX),
            jail("flood", &[FLOOD], &[r"\bfoo\b"]),
        ])
        .unwrap();
        let mut texts = Vec::new();
        for j in [POSTFIX_FAILREGEX, &[FLOOD]] {
            for t in j {
                texts.push(failregex::expand(t, true, true).unwrap().matcher);
            }
        }
        texts.push(failregex::expand(r"\bfoo\b", false, false).unwrap().matcher);
        let dfa = regex_automata::hybrid::dfa::DFA::builder()
            .syntax(syntax_config(false))
            .configure(
                regex_automata::hybrid::dfa::DFA::config()
                    .match_kind(MatchKind::All)
                    .cache_capacity(COMBINED_CACHE),
            )
            .build_many(&texts)
            .unwrap();
        let mut cache = dfa.create_cache();
        let line = "warning: unknown[192.0.2.66]: SASL LOGIN authentication failed: authentication failure, sasl_username=alice@example.test";
        assert!(dfa
            .try_search_fwd(&mut cache, &Input::new(line))
            .unwrap()
            .is_some());
        let ignores = f.ignores.as_ref().map_or(0, Regex::pattern_len);
        assert_eq!(
            f.fails.pattern_len() + ignores,
            texts.len() + POSTFIX_IGNOREREGEX.len()
        );
    }

    #[test]
    fn build_errors() {
        let err = |failregex: &[&str], ignoreregex: &[&str]| {
            Filter::new(&[
                jail("ok", POSTFIX_FAILREGEX, &[]),
                jail("web", failregex, ignoreregex),
            ])
            .unwrap_err()
        };
        let e = err(&[FLOOD, FLOOD, "no tag"], &[]);
        assert_eq!(
            e.to_string(),
            "jail web: failregex 2: no <HOST>, <ADDR>, <IP4> or <IP6> tag"
        );
        assert_eq!(
            (e.jail(), e.kind(), e.index()),
            (Some("web"), PatternKind::Failregex, Some(2))
        );
        let e = err(&["from <HOTS>"], &[]);
        assert!(
            e.to_string()
                .starts_with("jail web: failregex 0: unknown tag <HOTS>"),
            "{e}"
        );
        let e = err(&[r"from <HOST> a{5,2}"], &[]);
        assert!(e.to_string().starts_with("jail web: failregex 0: "), "{e}");
        assert!(e.reason().contains("repetition"), "{e}");
        assert!(!e.reason().contains('\n'));
        let e = err(&[r"from <HOST> (?=x)"], &[]);
        assert!(e.reason().starts_with("look-around"), "{e}");
        let e = err(&[FLOOD], &["ok", r"\p{Greek}"]);
        assert_eq!((e.kind(), e.index()), (PatternKind::Ignoreregex, Some(1)));
        assert!(
            e.to_string().starts_with("jail web: ignoreregex 1: "),
            "{e}"
        );
        let e = err(&[FLOOD], &["<BOGUS>"]);
        assert!(e.reason().starts_with("unknown tag <BOGUS>"), "{e}");
        let e = err(&[], &[]);
        assert_eq!(e.to_string(), "jail web: failregex: the list is empty");
        assert_eq!(e.index(), None);
        let many: Vec<Jail> = (0..MAX_JAILS + 1)
            .map(|i| jail(&format!("j{i}"), &[FLOOD], &[]))
            .collect();
        let e = Filter::new(&many).unwrap_err();
        assert_eq!(e.jail(), None);
        assert!(e.to_string().starts_with("all jails: "), "{e}");
    }

    #[test]
    fn validate_single_failregex() {
        for ok in POSTFIX_FAILREGEX.iter().chain([&FLOOD]) {
            assert_eq!(Filter::validate(ok), Ok(()));
        }
        assert_eq!(
            Filter::validate("nothing"),
            Err("no <HOST>, <ADDR>, <IP4> or <IP6> tag".to_string())
        );
        assert!(Filter::validate("<HOST> [z-a]").is_err());
    }

    #[test]
    fn no_jails_and_foreign_caches() {
        let empty = Filter::new(&[]).unwrap();
        assert!(scan_all(&empty, b"anything").is_empty());
        let f = postfix();
        let mut foreign = empty.cache();
        let mut hits = Vec::new();
        f.scan(
            &mut foreign,
            b"warning: unknown[192.0.2.66]: SASL LOGIN authentication failed: x",
            &JailSet::first(1),
            &mut hits,
        );
        assert_eq!(hits.len(), 1);
    }

    #[test]
    fn filter_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Filter>();
        fn send<T: Send>() {}
        send::<Cache>();
    }
}
