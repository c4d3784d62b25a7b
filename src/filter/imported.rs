//! Jails whose filter comes from fail2ban ([`FilterInput::Fail2banLine`]):
//! fail2ban's matching, reproduced.
//!
//! For each journal entry fail2ban's systemd backend builds the line
//! `HOSTNAME IDENT[PID]: MESSAGE` and searches the buffer `line + "\n"`
//! (not anchored): first the `prefregex`, whose `<F-CONTENT>` group (when
//! not empty) becomes the buffer the failregexes see; then each failregex
//! in order. The first that matches decides: vetoed if an ignoreregex
//! matches the same buffer, "not a failure" with `<F-NOFAIL>`, otherwise
//! a failure of the address in `ip4`/`ip6` (a host name in `dns`, or a
//! failure id that is not an address, is never banned: banjo does not
//! resolve names). With `<F-MLFID>` the groups of successive lines with
//! the same id are merged, as fail2ban's multi-line failure id cache does
//! (a connection's address, seen once, names its later failures). A
//! filter with at most `len(failregex) - 3` ignoreregexes also checks them
//! against the whole line first, as fail2ban does.
//!
//! # Cost
//!
//! One combined lazy DFA over all imported failregexes (each a superset,
//! see `python.rs`), prefixed with its jail's prefregex where that keeps
//! it a superset, rejects most lines in one pass whatever the number of
//! jails. Only the failregexes it reports run exactly: regex-automata with
//! captures on ASCII lines, fancy-regex for look-around and friends and
//! for lines that are not pure ASCII (where Python's Unicode classes
//! differ from ASCII ones).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use regex_automata::meta::{self, Regex};
use regex_automata::util::captures::Captures;
use regex_automata::{Anchored, Input, MatchKind, PatternID, PatternSet};

use super::lead::{self, Lead, Search, Slot};
use super::python::{self, Mode, Pattern};
use super::{
    capture_config, combined_config, regex_reason, syntax_config, BuildError, Outcome, PatternKind,
};

/// fail2ban's multi-line failure-id cache: at most this many ids...
const MLFID_MAX: usize = 100;
/// ...each kept this long.
const MLFID_TTL: Duration = Duration::from_secs(5 * 60);

/// The groups fail2ban gives meaning to.
const FAILURE_ID_GROUPS: &[&str] = &["fid", "ip4", "ip6", "dns", "mlfid"];

/// A pattern with look-arounds, matched by regex-automata with each
/// look-around as an empty marker group: the best relaxed match is
/// Python's match when every look-around on its path holds (any better
/// path of the real pattern would be a better relaxed one), so only
/// when one fails does fancy-regex decide.
#[derive(Debug)]
struct Relaxed {
    regex: Regex,
    /// Per look-around: its marker group, the look-around, its body.
    looks: Vec<(usize, python::Look, Regex)>,
}

/// One pattern, compiled for both engines.
#[derive(Debug)]
pub(crate) struct Compiled {
    /// regex-automata (ASCII, bytes), when the pattern is regular.
    exact: Option<Regex>,
    /// `exact` searched by the backtracker alone, for an anchored
    /// failregex tried where it most likely matches ([`Tries`]).
    likely: Option<Regex>,
    /// The literal every match of the unanchored pattern starts with, if
    /// any: `exact` is then the pattern without it, searched anchored past
    /// its occurrences.
    lead: Option<Lead>,
    /// regex-automata with look-around markers, when that works.
    relaxed: Option<Relaxed>,
    /// fancy-regex (Unicode), always exact: compiled at once when ASCII
    /// lines need it, else (non-ASCII lines only) on first use; its
    /// syntax is checked at once either way.
    fancy: OnceLock<Option<fancy_regex::Regex>>,
    fancy_text: String,
    /// Capture group names, in order.
    names: Vec<String>,
    /// Each name's group index in `exact` or `relaxed`'s regex.
    indexes: Vec<Option<usize>>,
    /// Index of [`Compiled`] in the filter's list (for per-thread state).
    id: usize,
}

/// Named groups of a failure kept across lines (`<F-MLFID>`): name to
/// text (absent: did not take part).
type OwnedGroups = BTreeMap<String, String>;

/// Named groups of one line's matches, borrowed from the patterns and the
/// searched text: no allocation per line. Like fail2ban's dict updates, a
/// later entry of a name overrides an earlier one (the failregex's groups
/// come after the prefregex's); a group that did not take part is absent.
#[derive(Debug, Default)]
struct Groups<'a>(Vec<Group<'a>>);

#[derive(Clone, Copy, Debug)]
struct Group<'a> {
    name: &'a str,
    /// The text searched and the group's range in it.
    hay: &'a str,
    start: usize,
    end: usize,
}

impl<'a> Groups<'a> {
    fn push(&mut self, name: &'a str, hay: &'a str, start: usize, end: usize) {
        if hay.get(start..end).is_some() {
            self.0.push(Group {
                name,
                hay,
                start,
                end,
            });
        }
    }

    fn find(&self, name: &str) -> Option<&Group<'a>> {
        self.0.iter().rev().find(|g| g.name == name)
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        self.find(name).and_then(|g| g.hay.get(g.start..g.end))
    }

    fn to_owned(&self) -> OwnedGroups {
        let mut out = OwnedGroups::new();
        for g in &self.0 {
            if let Some(v) = g.hay.get(g.start..g.end) {
                out.insert(g.name.to_string(), v.to_string());
            }
        }
        out
    }
}

/// How a line's failregexes are tried, and whether they are likely to
/// match it (which picks the search: see [`Compiled::new`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tries {
    /// Only those the combined pass ([`Imported::prefilter`]) listed, which
    /// nearly always match.
    Listed,
    /// All, in order, on a line the caller expects to match (see
    /// `Cache::skip_combined_pass`).
    Expected,
    /// All, in order, most of them failing.
    Blind,
}

/// Whether a pattern mostly matches the lines it is searched in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Odds {
    /// The prefregex: the lines it sees are candidates, nearly all of
    /// which carry the prefix every failregex needs.
    Likely,
    /// Failregexes (tried in order until one matches; without the
    /// combined pass's candidates most tries fail) and ignoreregexes.
    Unlikely,
}

impl Compiled {
    fn new(template: &str, id: usize, odds: Odds) -> Result<(Compiled, Pattern), String> {
        let expanded = python::expand_tags(template)?;
        let pattern = Pattern::parse(&expanded)?;
        // A search for groups first finds the match with a lazy DFA, then
        // runs the backtracker over it. When the pattern is anchored at the
        // start and the line most likely matches, the backtracker alone
        // finds the same match sooner (regex-automata falls back to its
        // PikeVM on lines too long for the backtracker). On a line it does
        // not match, the DFA is the faster to say so, by 5x for postfix's
        // failregexes.
        let anchored = pattern.starts_anchored();
        let exact_text = pattern
            .is_regular()
            .then(|| pattern.emit(Mode::Exact))
            .transpose()?;
        let backtrack_only = odds == Odds::Likely && anchored;
        let (exact, lead) = match exact_text.as_deref() {
            Some(text) => match (!anchored).then(|| Lead::compile(text)).transpose()? {
                Some(Some((lead, rest))) => (Some(rest), Some(lead)),
                _ => (Some(exact_regex(text, backtrack_only)?), None),
            },
            None => (None, None),
        };
        // A failregex mostly fails where it is tried blind, but nearly
        // always matches where the combined pass listed it or the caller
        // expects matches: there the DFA's pass to find the match first
        // is wasted.
        let likely = match (exact_text.as_deref(), &exact, &lead) {
            (Some(text), Some(_), None) if anchored && !backtrack_only => {
                Some(exact_regex(text, true)?)
            }
            _ => None,
        };
        let relaxed = match (&exact, pattern.lookarounds()) {
            (None, Some(looks)) => Some(relaxed(&pattern, looks, backtrack_only)?),
            _ => None,
        };
        let fancy_text = pattern.emit(Mode::Fancy)?;
        let fancy = OnceLock::new();
        if exact.is_none() && relaxed.is_none() {
            let _ = fancy.set(Some(build_fancy(&fancy_text)?));
        } else {
            fancy_regex::Expr::parse_tree(&fancy_text).map_err(|e| format!("{e}"))?;
        }
        let names = pattern.group_names();
        let regex = exact.as_ref().or(relaxed.as_ref().map(|r| &r.regex));
        let indexes = names
            .iter()
            .map(|n| regex.and_then(|r| r.group_info().to_index(PatternID::ZERO, n)))
            .collect();
        Ok((
            Compiled {
                exact,
                likely,
                lead,
                relaxed,
                fancy,
                fancy_text,
                names,
                indexes,
                id,
            },
            pattern,
        ))
    }

    /// The fancy-regex form (`None`: it failed to compile on first use,
    /// which its checked syntax makes all but impossible).
    fn fancy(&self) -> Option<&fancy_regex::Regex> {
        self.fancy
            .get_or_init(|| build_fancy(&self.fancy_text).ok())
            .as_ref()
    }

    fn has_group(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }
}

fn build_fancy(text: &str) -> Result<fancy_regex::Regex, String> {
    fancy_regex::RegexBuilder::new(text)
        .backtrack_limit(1_000_000)
        .build()
        .map_err(|e| format!("{e}"))
}

fn exact_regex(text: &str, backtrack_only: bool) -> Result<Regex, String> {
    Regex::builder()
        .syntax(syntax_config(false))
        .configure(capture_config(backtrack_only))
        .build(text)
        .map_err(|e| regex_reason(&e))
}

fn relaxed(
    pattern: &Pattern,
    looks: Vec<python::Look>,
    backtrack_only: bool,
) -> Result<Relaxed, String> {
    let regex = exact_regex(&pattern.emit(Mode::Relaxed)?, backtrack_only)?;
    let mut out = Vec::with_capacity(looks.len());
    for (n, look) in looks.into_iter().enumerate() {
        let group = regex
            .group_info()
            .to_index(PatternID::ZERO, &python::look_marker(n))
            .ok_or("internal error: look-around marker missing")?;
        let body = exact_regex(&look.body, false)?;
        out.push((group, look, body));
    }
    Ok(Relaxed { regex, looks: out })
}

/// The text a line is matched as: bytes (ASCII lines) or a string.
pub(crate) struct Text<'a> {
    /// The buffer, ending with `\n`.
    pub(crate) bytes: &'a [u8],
    /// The same as a string, when the buffer is valid UTF-8.
    pub(crate) str: &'a str,
    /// Whether the buffer is pure ASCII (regex-automata may run).
    pub(crate) ascii: bool,
}

impl<'a> Text<'a> {
    /// The buffer from `start` on (its `\n` included).
    fn tail(&self, start: usize) -> Option<Text<'a>> {
        self.str.get(start..).map(|str| Text {
            bytes: str.as_bytes(),
            str,
            ascii: self.ascii,
        })
    }
}

/// Per-thread search state of the imported jails.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Per [`Compiled`]: the cache and groups of its regex, of its lead's
    /// tail (see `lead.rs`) and of its `likely` regex.
    captures: Vec<[Slot; 3]>,
    /// Per imported jail: the multi-line failure-id cache.
    mlfid: Vec<HashMap<String, (Instant, Fail)>>,
    all: Option<meta::Cache>,
    set: Option<PatternSet>,
    /// Per imported jail: the cache of its `content_end`.
    ends: Vec<Option<meta::Cache>>,
}

/// A failure being assembled (fail2ban's `fail` dict).
#[derive(Clone, Debug, Default)]
struct Fail {
    groups: OwnedGroups,
    users: BTreeSet<String>,
    pending: bool,
}

/// What one imported jail decided about one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Found {
    /// Index in the jail's failregex list (the prefregex entry included).
    pub(crate) failregex: usize,
    pub(crate) outcome: Outcome,
    /// The failure id as fail2ban reports it (address, host name, id).
    pub(crate) host: Option<String>,
}

/// One imported jail, compiled.
#[derive(Debug)]
pub(crate) struct ImportedJail {
    prefregex: Option<Compiled>,
    /// The prefregex ends `<F-CONTENT>.+</F-CONTENT>$` and is compiled
    /// with a content of one character instead: the content runs from
    /// there to the end of the line, and the search stops at its start.
    content_to_end: bool,
    /// With `content_to_end`, when the prefregex is regular and has no
    /// other group: the same pattern, searched without groups. The end of
    /// its leftmost-first match, found by a lazy DFA, is one past the
    /// content's start, since that is where a backtracker's match ends.
    content_end: Option<Regex>,
    /// (index in the jail's failregex list, pattern).
    fail: Vec<(usize, Compiled)>,
    ignore: Vec<Compiled>,
    early_ignore: bool,
    /// Combined-matcher pattern of each failregex.
    pids: Vec<PatternID>,
    /// Combined-matcher patterns every candidate line must also match
    /// (the prefregex's look-aheads, see `Pattern::witnesses`).
    witnesses: Vec<PatternID>,
}

/// What [`Imported::new`] compiles for one jail.
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    /// The jail's name (for errors).
    pub(crate) name: String,
    /// The prefregex, if any.
    pub(crate) prefregex: Option<String>,
    /// The failregexes, each with its index in the jail's list.
    pub(crate) failregex: Vec<(usize, String)>,
    /// The ignoreregexes.
    pub(crate) ignoreregex: Vec<String>,
}

/// All imported jails and their combined matchers.
#[derive(Debug)]
pub(crate) struct Imported {
    pub(crate) jails: Vec<ImportedJail>,
    all: Option<Regex>,
    /// The patterns of `all`.
    texts: Vec<String>,
    compiled_count: usize,
    /// One jail with one failregex, no prefregex: its own search rejects
    /// a line as fast as `all` would, so `all` would only search twice.
    single: bool,
}

impl Imported {
    /// Compiles the imported jails.
    pub(crate) fn new(jails: &[Spec]) -> Result<Imported, BuildError> {
        let mut out = Vec::with_capacity(jails.len());
        let mut texts: Vec<String> = Vec::new();
        let mut text_ids: HashMap<String, usize> = HashMap::new();
        let mut next_id = 0usize;
        for Spec {
            name,
            prefregex,
            failregex,
            ignoreregex,
        } in jails
        {
            let err = |kind, index, reason: String| BuildError {
                jail: Some(name.clone()),
                kind,
                index,
                reason,
            };
            // `.+$` after the content's start holds exactly when one
            // character other than `\n` does: the buffer's only `\n` ends it.
            let to_end = prefregex
                .as_deref()
                .and_then(python::split_content)
                .filter(|(_, body, post)| *body == ".+" && *post == "$")
                .map(|(pre, _, _)| format!("{pre}<F-CONTENT>[^\n]</F-CONTENT>"));
            let mut content_end = None;
            let pref = match to_end.as_ref().or(prefregex.as_ref()) {
                Some(p) => {
                    let prefregex_err =
                        |r| err(PatternKind::Failregex, Some(0), format!("prefregex: {r}"));
                    let (c, pattern) =
                        Compiled::new(p, next_id, Odds::Likely).map_err(prefregex_err)?;
                    if to_end.is_some() && c.exact.is_some() && c.names == ["content"] {
                        let text = pattern.emit(Mode::Exact).map_err(prefregex_err)?;
                        content_end = Some(exact_regex(&text, false).map_err(prefregex_err)?);
                    }
                    next_id += 1;
                    Some(c)
                }
                None => None,
            };
            // The superset texts: prefregex prefix + failregex, when the
            // content runs to the end of the line; else the failregex
            // alone (no content) or the prefregex alone.
            let composed_prefix = prefregex.as_deref().and_then(composable_prefix);
            let mut witness_pids = Vec::new();
            if let Some(p) = prefregex {
                let part = python::split_content(p).map_or(p.as_str(), |(pre, _, _)| pre);
                let texts_w = python::expand_tags(part)
                    .and_then(|e| Pattern::parse(&e))
                    .map(|p| p.witnesses())
                    .unwrap_or_default();
                for text in texts_w {
                    let id = *text_ids.entry(text.clone()).or_insert_with(|| {
                        texts.push(text);
                        texts.len() - 1
                    });
                    witness_pids.push(PatternID::new(id).map_err(|_| {
                        err(PatternKind::Failregex, None, "too many patterns".into())
                    })?);
                }
            }
            let pref_alone = match prefregex {
                Some(p) if composed_prefix.is_none() && python::split_content(p).is_some() => {
                    let pat = python::expand_tags(p)
                        .and_then(|e| Pattern::parse(&e))
                        .and_then(|p| p.emit(Mode::Dfa { in_content: false }))
                        .map_err(|r| {
                            err(PatternKind::Failregex, Some(0), format!("prefregex: {r}"))
                        })?;
                    Some(pat)
                }
                _ => None,
            };
            let mut fail = Vec::with_capacity(failregex.len());
            let mut pids = Vec::with_capacity(failregex.len());
            for (index, template) in failregex {
                let (c, pattern) = Compiled::new(template, next_id, Odds::Unlikely)
                    .map_err(|r| err(PatternKind::Failregex, Some(*index), r))?;
                next_id += 1;
                let has_id = FAILURE_ID_GROUPS
                    .iter()
                    .any(|g| c.has_group(g) || pref.as_ref().is_some_and(|p| p.has_group(g)));
                if !has_id {
                    return Err(err(
                        PatternKind::Failregex,
                        Some(*index),
                        "no failure-id group (<HOST>, <ADDR>, <IP4>, <IP6>, <F-ID>...) in it or the prefregex".into(),
                    ));
                }
                let text = match (&composed_prefix, &pref_alone) {
                    (Some(prefix), _) => {
                        let body = pattern
                            .emit(Mode::Dfa { in_content: true })
                            .map_err(|r| err(PatternKind::Failregex, Some(*index), r))?;
                        let lead = if pattern.starts_anchored() {
                            ""
                        } else {
                            "[^\n]*?"
                        };
                        format!("{prefix}{lead}(?:{body})")
                    }
                    (None, Some(alone)) => alone.clone(),
                    (None, None) => pattern
                        .emit(Mode::Dfa { in_content: false })
                        .map_err(|r| err(PatternKind::Failregex, Some(*index), r))?,
                };
                let id = *text_ids.entry(text.clone()).or_insert_with(|| {
                    texts.push(text);
                    texts.len() - 1
                });
                pids.push(
                    PatternID::new(id).map_err(|_| {
                        err(PatternKind::Failregex, None, "too many patterns".into())
                    })?,
                );
                fail.push((*index, c));
            }
            let mut ignore = Vec::with_capacity(ignoreregex.len());
            for (i, template) in ignoreregex.iter().enumerate() {
                let (c, _) = Compiled::new(template, next_id, Odds::Unlikely)
                    .map_err(|r| err(PatternKind::Ignoreregex, Some(i), r))?;
                next_id += 1;
                ignore.push(c);
            }
            let early_ignore = !ignore.is_empty() && ignore.len() + 2 < fail.len();
            out.push(ImportedJail {
                prefregex: pref,
                content_to_end: to_end.is_some(),
                content_end,
                fail,
                ignore,
                early_ignore,
                pids,
                witnesses: witness_pids,
            });
        }
        let whole = |e: meta::BuildError| BuildError {
            jail: None,
            kind: PatternKind::Failregex,
            index: None,
            reason: format!("combined matcher (fail2ban filters): {}", regex_reason(&e)),
        };
        let all = if texts.is_empty() {
            None
        } else {
            Some(
                Regex::builder()
                    .syntax(syntax_config(false))
                    .configure(combined_config(MatchKind::All))
                    .build_many(&texts)
                    .map_err(whole)?,
            )
        };
        let single = matches!(&out[..], [j] if j.fail.len() == 1 && j.prefregex.is_none() && j.witnesses.is_empty());
        Ok(Imported {
            jails: out,
            all,
            texts,
            compiled_count: next_id,
            single,
        })
    }

    /// Per jail, what an ASCII line must meet to be a candidate: one of
    /// its failregexes' combined patterns matches, and so does each of
    /// its witnesses (see [`Imported::eval`]).
    pub(crate) fn conditions(&self) -> Vec<Vec<Vec<&str>>> {
        let text = |p: &PatternID| self.texts.get(p.as_usize()).map(String::as_str);
        self.jails
            .iter()
            .map(|j| {
                // A pattern left out would make its condition a lie.
                let mut conditions: Vec<Vec<&str>> = j
                    .pids
                    .iter()
                    .map(text)
                    .collect::<Option<_>>()
                    .into_iter()
                    .collect();
                conditions.extend(j.witnesses.iter().filter_map(text).map(|t| vec![t]));
                conditions
            })
            .collect()
    }

    /// Whether no jail carries state from line to line (`<F-MLFID>`).
    pub(crate) fn is_stateless(&self) -> bool {
        self.jails.iter().all(|j| {
            !j.prefregex.as_ref().is_some_and(|p| p.has_group("mlfid"))
                && !j.fail.iter().any(|(_, c)| c.has_group("mlfid"))
        })
    }

    /// Fresh per-thread state.
    pub(crate) fn state(&self) -> State {
        State {
            captures: (0..self.compiled_count)
                .map(|_| [None, None, None])
                .collect(),
            mlfid: (0..self.jails.len()).map(|_| HashMap::new()).collect(),
            all: self.all.as_ref().map(Regex::create_cache),
            set: self.all.as_ref().map(|a| PatternSet::new(a.pattern_len())),
            ends: (0..self.jails.len()).map(|_| None).collect(),
        }
    }

    /// Whether [`Imported::prefilter`] is worth running on ASCII lines.
    pub(crate) fn wants_prefilter(&self) -> bool {
        !self.single
    }

    /// Runs the combined matcher on an ASCII buffer. `false`: no imported
    /// failregex can match; otherwise the candidates are in the state.
    pub(crate) fn prefilter(&self, state: &mut State, text: &Text<'_>) -> bool {
        let (Some(all), Some(ac), Some(set)) = (&self.all, state.all.as_mut(), state.set.as_mut())
        else {
            return false;
        };
        // One pass: the overlapping search stops as early as a plain
        // one on lines nothing can match, and candidates need no second.
        let input = Input::new(text.bytes);
        set.clear();
        all.which_overlapping_matches_with(ac, &input, set);
        !set.is_empty()
    }

    /// fail2ban's `findFailure` for imported jail `j` on `text`, trying
    /// its failregexes as `tries` says.
    pub(crate) fn eval(
        &self,
        j: usize,
        state: &mut State,
        text: &Text<'_>,
        tries: Tries,
    ) -> Option<Found> {
        let jail = self.jails.get(j)?;
        let use_candidates = tries == Tries::Listed;
        if use_candidates {
            let set = state.set.as_ref()?;
            if !jail.pids.iter().any(|p| set.contains(*p))
                || !jail.witnesses.iter().all(|p| set.contains(*p))
            {
                return None;
            }
        }
        if jail.early_ignore && jail.ignore.iter().any(|c| is_match(c, state, text)) {
            return None;
        }
        let mut pre = Groups::default();
        let mut copied = String::new();
        let mut content: Option<Text<'_>> = None;
        if let (Some(end), true) = (&jail.content_end, text.ascii) {
            let cache = state.ends.get_mut(j)?;
            let cache = cache.get_or_insert_with(|| end.create_cache());
            let half = end.search_half_with(cache, &Input::new(text.bytes))?;
            content = text.tail(half.offset().checked_sub(1)?);
        } else if let Some(p) = &jail.prefregex {
            if !captures(p, state, text, false, &mut pre) {
                return None;
            }
            if let Some(i) = pre.0.iter().rposition(|g| g.name == "content") {
                let g = pre.0.remove(i);
                if jail.content_to_end {
                    // The group is the content's first character; the
                    // content runs from there to the buffer's `\n`.
                    content = text.tail(g.start);
                } else if let Some(c) = g.hay.get(g.start..g.end).filter(|c| !c.is_empty()) {
                    copied.reserve(c.len() + 1);
                    copied.push_str(c);
                    copied.push('\n');
                }
            }
        }
        if !copied.is_empty() {
            content = Some(Text {
                bytes: copied.as_bytes(),
                str: &copied,
                ascii: text.ascii,
            });
        }
        let buf = content.as_ref().unwrap_or(text);
        // Each failregex's groups go after the prefregex's, in one buffer.
        let mut groups = pre;
        let pre_len = groups.0.len();
        for (k, (index, c)) in jail.fail.iter().enumerate() {
            if use_candidates {
                let listed = jail
                    .pids
                    .get(k)
                    .zip(state.set.as_ref())
                    .is_some_and(|(p, set)| set.contains(*p));
                if !listed {
                    continue;
                }
            }
            groups.0.truncate(pre_len);
            if !captures(c, state, buf, tries != Tries::Blind, &mut groups) {
                continue;
            }
            if jail.ignore.iter().any(|c| is_match(c, state, buf)) {
                return Some(Found {
                    failregex: *index,
                    outcome: Outcome::Ignored,
                    host: None,
                });
            }
            let failure = if groups.get("mlfid").is_some() {
                let fail = Fail {
                    groups: groups.to_owned(),
                    ..Fail::default()
                };
                let id = groups.get("mlfid").unwrap_or_default();
                let cache = state.mlfid.get_mut(j)?;
                let merged = merge(cache, id, fail);
                let g = &merged.groups;
                failure_of(|name| g.get(name).map(String::as_str))
            } else {
                failure_of(|name| groups.get(name))
            };
            return match failure {
                Failure::Host(host, address) => Some(Found {
                    failregex: *index,
                    outcome: address.map_or(Outcome::NotAnAddress, Outcome::Failure),
                    host: Some(host),
                }),
                Failure::NoFail => None,
                Failure::Pending => {
                    // An mlfid line without an address yet: pending.
                    if let (Some(id), Some(cache)) = (groups.get("mlfid"), state.mlfid.get_mut(j)) {
                        if let Some((_, cached)) = cache.get_mut(id) {
                            cached.pending = true;
                        }
                    }
                    None
                }
            };
        }
        None
    }
}

/// What a matching line's groups say.
enum Failure {
    /// `<F-NOFAIL>`: a hit that is not a failure.
    NoFail,
    /// No failure id yet (an `<F-MLFID>` connection's address comes later).
    Pending,
    /// The failure id as fail2ban reports it, and the address to count.
    Host(String, Option<IpAddr>),
}

/// fail2ban's reading of a failure's groups: the address in `ip4`/`ip6`,
/// else a host name in `dns`, else the `fid`; `host` names it when set.
fn failure_of<'g>(get: impl Fn(&str) -> Option<&'g str>) -> Failure {
    let truthy = |name| get(name).filter(|v: &&str| !v.is_empty());
    if truthy("nofail").is_some() {
        return Failure::NoFail;
    }
    let fid = get("fid");
    let (ip, address) = if let Some(ip) = get("ip4").or_else(|| get("ip6")) {
        (ip, ip.parse::<IpAddr>().ok())
    } else if let Some(dns) = get("dns") {
        (dns, None)
    } else if let Some(fid) = fid {
        (fid, fid.parse::<IpAddr>().ok())
    } else {
        return Failure::Pending;
    };
    let host = match get("host") {
        Some(h) => h,
        None => match fid {
            Some(f) if f != ip => f,
            _ => ip,
        },
    };
    let address = address.map(|a| match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    });
    Failure::Host(host.to_string(), address)
}

/// The prefregex text before its content group, as a DFA superset,
/// when the content group runs to the end of the line (what follows it is
/// `$`): a failregex can then be written right after it.
fn composable_prefix(prefregex: &str) -> Option<String> {
    let (pre, body, post) = python::split_content(prefregex)?;
    if post.trim() != "$" || body.contains("<F-") {
        return None;
    }
    let expanded = python::expand_tags(pre).ok()?;
    let pattern = Pattern::parse(&expanded).ok()?;
    pattern.emit(Mode::Dfa { in_content: false }).ok()
}

fn is_match(c: &Compiled, state: &mut State, text: &Text<'_>) -> bool {
    if text.ascii {
        if let Some(exact) = &c.exact {
            return exact_inputs(c, exact, text.bytes).any(|s| s.regex.is_match(s.input));
        }
        if c.relaxed.is_some() {
            return raw_captures(c, state, text, false, &mut Groups::default());
        }
    }
    c.fancy()
        .is_some_and(|f| f.is_match(text.str).unwrap_or(false))
}

/// The searches of `c.exact` (or of the regex its leading literal
/// leads to) in `hay`, in order until one matches.
fn exact_inputs<'h>(
    c: &'h Compiled,
    exact: &'h Regex,
    hay: &'h [u8],
) -> impl Iterator<Item = Search<'h>> + 'h {
    let whole = c.lead.is_none().then(|| Search {
        regex: exact,
        tail: false,
        input: Input::new(hay),
    });
    let past_lead = c
        .lead
        .iter()
        .flat_map(move |lead| lead.searches(exact, hay));
    whole.into_iter().chain(past_lead)
}

/// Whether every look-around the relaxed match went through holds.
fn looks_hold(r: &Relaxed, caps: &Captures, hay: &[u8]) -> bool {
    r.looks.iter().all(|(group, look, body)| {
        let Some(span) = caps.get_group(*group) else {
            return true;
        };
        let pos = span.start;
        let found = match look.behind {
            None => body.is_match(Input::new(hay).range(pos..).anchored(Anchored::Yes)),
            Some(w) => {
                pos >= w
                    && body.is_match(Input::new(hay).range(pos - w..pos).anchored(Anchored::Yes))
            }
        };
        found != look.negative
    })
}

/// Searches `c` in `text` and appends the named groups that took part to
/// `out`, with fail2ban's alternative names folded in (`alt_user`,
/// `alt_user_2`, ... give `user` when it has no value). `false`: no match.
/// `likely`: `c` most likely matches (see [`Tries`]).
fn captures<'a>(
    c: &'a Compiled,
    state: &mut State,
    text: &Text<'a>,
    likely: bool,
    out: &mut Groups<'a>,
) -> bool {
    let first = out.0.len();
    if !raw_captures(c, state, text, likely, out) {
        return false;
    }
    for i in first..out.0.len() {
        let Some(g) = out.0.get(i).copied() else {
            break;
        };
        let Some(base) = g.name.strip_prefix("alt_") else {
            continue;
        };
        let base = base.trim_end_matches(|c: char| c.is_ascii_digit());
        let base = base.strip_suffix('_').unwrap_or(base);
        let base = match base {
            "id" => "fid",
            "port" => "fport",
            other => other,
        };
        if g.start < g.end && out.get(base).map_or(true, str::is_empty) {
            out.0.push(Group { name: base, ..g });
        }
    }
    true
}

fn raw_captures<'a>(
    c: &'a Compiled,
    state: &mut State,
    text: &Text<'a>,
    likely: bool,
    out: &mut Groups<'a>,
) -> bool {
    if text.ascii {
        if let Some(exact) = &c.exact {
            let Some(slots) = state.captures.get_mut(c.id) else {
                return false;
            };
            if let (true, Some(regex)) = (likely, &c.likely) {
                let (cache, caps) =
                    slots[2].get_or_insert_with(|| (regex.create_cache(), regex.create_captures()));
                regex.search_captures_with(cache, &Input::new(text.bytes), caps);
                if !caps.is_match() {
                    return false;
                }
                push_groups(c, caps, text.str, out);
                return true;
            }
            let found = lead::first_match(exact_inputs(c, exact, text.bytes), slots);
            let Some((_, caps)) = found.and_then(|k| slots[k].as_ref()) else {
                return false;
            };
            push_groups(c, caps, text.str, out);
            return true;
        }
        if let Some(r) = &c.relaxed {
            let Some([slot, ..]) = state.captures.get_mut(c.id) else {
                return false;
            };
            let (cache, caps) =
                slot.get_or_insert_with(|| (r.regex.create_cache(), r.regex.create_captures()));
            r.regex
                .search_captures_with(cache, &Input::new(text.bytes), caps);
            if !caps.is_match() {
                return false;
            }
            if looks_hold(r, caps, text.bytes) {
                push_groups(c, caps, text.str, out);
                return true;
            }
        }
    }
    let Some(caps) = c.fancy().and_then(|f| f.captures(text.str).ok().flatten()) else {
        return false;
    };
    for name in &c.names {
        if let Some(m) = caps.name(name) {
            out.push(name, text.str, m.start(), m.end());
        }
    }
    true
}

fn push_groups<'a>(c: &'a Compiled, caps: &Captures, hay: &'a str, out: &mut Groups<'a>) {
    for (name, index) in c.names.iter().zip(&c.indexes) {
        if let Some(span) = index.and_then(|i| caps.get_group(i)) {
            out.push(name, hay, span.start, span.end);
        }
    }
}

/// A group's text when Python would find it true (present, not empty).
fn truthy<'a>(g: &'a OwnedGroups, key: &str) -> Option<&'a str> {
    g.get(key).map(String::as_str).filter(|v| !v.is_empty())
}

/// fail2ban's `_mergeFailure`: merges `fail` into the cached failure of
/// connection `id` and returns the result (`nofail` in its groups when
/// it is not a failure).
fn merge(cache: &mut HashMap<String, (Instant, Fail)>, id: &str, mut fail: Fail) -> Fail {
    const NOFAIL: u8 = 1;
    const FORGET: u8 = 2;
    const PREV: u8 = 4;
    const GAINED: u8 = 8;
    let now = Instant::now();
    cache.retain(|_, (t, _)| now.duration_since(*t) < MLFID_TTL);
    let mut flags = 0u8;
    if let Some(gained) = truthy(&fail.groups, "mlfgained").map(str::to_string) {
        flags |= GAINED | NOFAIL;
        if truthy(&fail.groups, "nofail").is_none() {
            fail.groups.insert("nofail".into(), gained);
        }
    } else if truthy(&fail.groups, "nofail").is_some() {
        flags |= NOFAIL;
    }
    if fail
        .groups
        .remove("mlfforget")
        .is_some_and(|v| !v.is_empty())
    {
        flags |= FORGET;
    }
    let user = truthy(&fail.groups, "user").map(str::to_string);
    let (mut merged, users_len) = if let Some((_, cached)) = cache.get_mut(id) {
        if let Some(u) = &user {
            cached.users.insert(u.clone());
        }
        let users_len = cached.users.len();
        if cached
            .groups
            .remove("nofail")
            .is_some_and(|v| !v.is_empty())
        {
            flags |= PREV;
        }
        if cached
            .groups
            .remove("mlfgained")
            .is_some_and(|v| !v.is_empty())
        {
            flags |= PREV;
        }
        if flags & GAINED != 0 {
            cached.pending = false;
        }
        for (k, v) in &fail.groups {
            cached.groups.insert(k.clone(), v.clone());
        }
        let merged = cached.clone();
        if flags & FORGET != 0 {
            cache.remove(id);
        }
        (merged, users_len)
    } else if flags & FORGET == 0 {
        if let Some(u) = &user {
            fail.users.insert(u.clone());
        }
        let users_len = fail.users.len();
        if cache.len() >= MLFID_MAX {
            if let Some(oldest) = cache
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, _)| k.clone())
            {
                cache.remove(&oldest);
            }
        }
        cache.insert(id.to_string(), (now, fail.clone()));
        (fail, users_len)
    } else {
        (fail, 0)
    };
    if merged.pending || users_len > 1 {
        merged.pending = false;
        merged.groups.remove("nofail");
        merged.groups.remove("mlfgained");
        if let Some((_, cached)) = cache.get_mut(id) {
            cached.pending = false;
            cached.groups.remove("nofail");
            cached.groups.remove("mlfgained");
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> String {
        format!("{s}\n")
    }

    fn run(imp: &Imported, state: &mut State, line: &str) -> Option<Found> {
        let buf = text(line);
        let t = Text {
            bytes: buf.as_bytes(),
            str: &buf,
            ascii: buf.is_ascii(),
        };
        let cand = t.ascii && imp.prefilter(state, &t);
        if t.ascii && !cand {
            return None;
        }
        let tries = if t.ascii { Tries::Listed } else { Tries::Blind };
        let found = imp.eval(0, state, &t, tries);
        // Each way of trying the failregexes finds the same.
        for other in [Tries::Expected, Tries::Blind] {
            assert_eq!(
                imp.eval(0, state, &t, other),
                found,
                "{other:?} on {line:?}"
            );
        }
        found
    }

    #[test]
    fn expected_and_listed_tries_take_the_backtracker_alone() {
        let imp = Imported::new(&[Spec {
            name: "postfix".into(),
            prefregex: Some(r"^\S+ \S+: <F-CONTENT>.+</F-CONTENT>$".into()),
            failregex: vec![
                (1, r"^RCPT from [^[]*\[<HOST>\]: 5\d\d ".into()),
                (2, r"^from [^[]*\[<HOST>\]:?".into()),
            ],
            ignoreregex: vec![],
        }])
        .expect("compiles");
        let anchored_failregexes = imp.jails[0].fail.iter().map(|(_, c)| c);
        assert!(anchored_failregexes.clone().all(|c| c.likely.is_some()));
        let mut state = imp.state();
        for (line, host) in [
            ("h smtpd: RCPT from x[192.0.2.1]: 554 no", Some("192.0.2.1")),
            ("h smtpd: RCPT from x[192.0.2.1]: 454 later", None),
            ("h smtpd: from y[192.0.2.2]", Some("192.0.2.2")),
            ("h smtpd: connect from z[192.0.2.3]", None),
        ] {
            let found = run(&imp, &mut state, line);
            assert_eq!(found.and_then(|f| f.host).as_deref(), host, "{line}");
        }
    }

    #[test]
    fn prefregex_content_and_lookahead() {
        let imp = Imported::new(&[Spec {
            name: "postfix".into(),
            prefregex: Some(r"^\S+ \S+: (?:warning:) <F-CONTENT>.+</F-CONTENT>$".into()),
            failregex: vec![(1, r"^[^[]*\[<HOST>\](?::\d+)?: SASL ((?i)LOGIN|PLAIN) authentication failed:(?! Connection lost)".into())],
            ignoreregex: vec![],
        }])
        .unwrap();
        let mut st = imp.state();
        let f = run(&imp, &mut st, "mail postfix/smtpd[1]: warning: unknown[192.0.2.1]: SASL login authentication failed: x").unwrap();
        assert_eq!(f.outcome, Outcome::Failure("192.0.2.1".parse().unwrap()));
        assert_eq!(f.failregex, 1);
        assert!(run(&imp, &mut st, "mail postfix/smtpd[1]: warning: unknown[192.0.2.1]: SASL PLAIN authentication failed: Connection lost to x").is_none());
        assert!(run(
            &imp,
            &mut st,
            "mail postfix/smtpd[1]: connect from unknown[192.0.2.1]"
        )
        .is_none());
        // Non-ASCII lines go through fancy-regex.
        let f = run(
            &imp,
            &mut st,
            "mäil postfix/smtpd[1]: warning: ü[192.0.2.2]: SASL LOGIN authentication failed: é",
        )
        .unwrap();
        assert_eq!(f.outcome, Outcome::Failure("192.0.2.2".parse().unwrap()));
        let f = run(&imp, &mut st, "mail postfix/smtpd[1]: warning: host[bad.example]: SASL LOGIN authentication failed: x").unwrap();
        assert_eq!(f.outcome, Outcome::NotAnAddress);
        assert_eq!(f.host.as_deref(), Some("bad.example"));
    }

    #[test]
    fn a_leading_literal_finds_what_the_full_search_finds() {
        let imp = Imported::new(&[Spec {
            name: "x".into(),
            prefregex: None,
            failregex: vec![
                (0, r"abab\s<HOST>".into()),
                (1, r"lost connection after AUTH from (.*)\[<HOST>\]".into()),
            ],
            ignoreregex: vec![],
        }])
        .unwrap();
        assert!(imp.jails[0].fail.iter().all(|(_, c)| c.lead.is_some()));
        let mut st = imp.state();
        let mut host = |line: &str| {
            let ascii = run(&imp, &mut st, line).map(|f| (f.failregex, f.host));
            // The same line with a non-ASCII tail goes through fancy-regex,
            // which searches the whole pattern, the literal included.
            let fancy = run(&imp, &mut st, &format!("{line} é")).map(|f| (f.failregex, f.host));
            assert_eq!(ascii, fancy, "{line}");
            ascii
        };
        let addr = |i: usize, a: &str| Some((i, Some(a.to_string())));
        // The literal is `abab` (`\s` is a class). Of its overlapping
        // occurrences in `ababab`, only the second is followed by a match.
        assert_eq!(host("ababab 192.0.2.1"), addr(0, "192.0.2.1"));
        assert_eq!(host("xabab 192.0.2.2 abab 192.0.2.3"), addr(0, "192.0.2.2"));
        assert_eq!(host("ababa 192.0.2.1"), None);
        // The greedy `(.*)` takes the last bracket the line offers.
        let twice = "lost connection after AUTH from a[192.0.2.4] lost connection after AUTH from b[192.0.2.5]";
        assert_eq!(host(twice), addr(1, "192.0.2.5"));
        assert_eq!(
            host("lost connection after AUTH from unknown[192.0.2.6]"),
            addr(1, "192.0.2.6")
        );
        assert_eq!(host("lost connection after AUTH from unknown"), None);
        // The tail (`\[<HOST>\]`) at each bracket, the last first: the
        // last bracket fails, the one before it holds the address.
        assert!(imp.jails[0].fail[1]
            .1
            .lead
            .as_ref()
            .is_some_and(Lead::has_tail));
        let l = "lost connection after AUTH from";
        assert_eq!(
            host(&format!("{l} a[b][192.0.2.7] [x")),
            addr(1, "192.0.2.7")
        );
        assert_eq!(host(&format!("{l} a[192.0.2.8] [[]")), addr(1, "192.0.2.8"));
        assert_eq!(host(&format!("{l} [192.0.2.9][host-a]")), addr(1, "host-a"));
        // More brackets than are worth trying one by one.
        assert_eq!(
            host(&format!("{l} [[[[[[192.0.2.10]")),
            addr(1, "192.0.2.10")
        );
        assert_eq!(
            host(&format!("{l} [192.0.2.11][[[[[")),
            addr(1, "192.0.2.11")
        );
        assert_eq!(host(&format!("{l} [[[[[[[")), None);
    }

    #[test]
    fn relaxed_lookarounds_fall_back_when_they_fail() {
        let imp = Imported::new(&[Spec {
            name: "x".into(),
            prefregex: None,
            failregex: vec![(0, r"^(?:go(?=x)|go(?P<tail>n)e) <HOST>(?<!9)$".into())],
            ignoreregex: vec![],
        }])
        .unwrap();
        let mut st = imp.state();
        let f = run(&imp, &mut st, "gone 192.0.2.1").unwrap();
        assert_eq!(f.outcome, Outcome::Failure("192.0.2.1".parse().unwrap()));
        assert!(run(&imp, &mut st, "gone 192.0.2.9").is_none());
        assert!(run(&imp, &mut st, "gox 192.0.2.1").is_none());
    }

    #[test]
    fn mlfid_merges_lines_of_one_connection() {
        let imp = Imported::new(&[Spec {
            name: "sshd".into(),
            prefregex: Some(
                r"^<F-MLFID>\S+ sshd\[\d+\]:</F-MLFID> <F-CONTENT>.+</F-CONTENT>$".into(),
            ),
            failregex: vec![
                (1, r"^<F-NOFAIL>Connection from</F-NOFAIL> <HOST>".into()),
                (
                    2,
                    r"^Disconnecting: Too many authentication failures".into(),
                ),
            ],
            ignoreregex: vec![],
        }])
        .unwrap();
        let mut st = imp.state();
        assert!(run(
            &imp,
            &mut st,
            "h sshd[7]: Connection from 192.0.2.9 port 22"
        )
        .is_none());
        let f = run(
            &imp,
            &mut st,
            "h sshd[7]: Disconnecting: Too many authentication failures",
        )
        .unwrap();
        assert_eq!(f.outcome, Outcome::Failure("192.0.2.9".parse().unwrap()));
        // Another connection knows no address: pending, no hit.
        assert!(run(
            &imp,
            &mut st,
            "h sshd[8]: Disconnecting: Too many authentication failures"
        )
        .is_none());
    }

    #[test]
    fn refusals() {
        let e = Imported::new(&[Spec {
            name: "x".into(),
            prefregex: None,
            failregex: vec![(0, "no id here".into())],
            ignoreregex: vec![],
        }])
        .unwrap_err();
        assert!(e.reason().contains("no failure-id group"), "{e}");
        let e = Imported::new(&[Spec {
            name: "x".into(),
            prefregex: None,
            failregex: vec![(0, "<HOST> (?x)".into())],
            ignoreregex: vec![],
        }])
        .unwrap_err();
        assert!(e.reason().contains("flag"), "{e}");
    }
}
