//! Searching an unanchored fail2ban failregex that starts with a literal.
//!
//! An unanchored search for groups costs regex-automata a forward and a
//! reverse lazy DFA to find the match, then the backtracker over it. When
//! every match starts with a literal, the leftmost match is the first
//! anchored match at one of the literal's occurrences, in order; the
//! literal holds no group, so the rest of the pattern, anchored right after
//! the literal, finds the same groups. The backtracker alone does that,
//! without walking the literal. For the tutorial's `lost connection after
//! AUTH from (.*)\[<HOST>\]` it was a third less CPU for the whole check.
//!
//! When the literal is followed by a greedy `.*` and then by a literal
//! byte (the tutorial's `(.*)\[`), the backtracker walks the `.*` to the end
//! of the line and then tries the rest at every position back from there.
//! Only the positions of that byte can start the rest, so they are tried
//! directly, the last first, with the rest alone: the same order, hence
//! the same match and groups, for 2.5x less time per matching line. Past
//! a few such positions (a hostile line full of brackets), trying each
//! would cost more than the backtracker's single pass, which then runs.
//!
//! banjo's own failregexes are anchored at the start of MESSAGE and
//! searched with every repetition lazy (the earliest host, see `mod.rs`).
//! There the literal can only be at the start, and a lazy `.*` prefers the
//! fewest bytes: the tail's positions are tried the first first. For the
//! tutorial's pattern on a flood line that took the capture step from
//! about 520 to about 170 ns.

use memchr::memmem::Finder;
use regex_automata::meta::{self, Regex};
use regex_automata::util::captures::Captures;
use regex_automata::{Anchored, Input, PatternID};
use regex_syntax::hir::{Class, Hir, HirKind, Look};

use super::{capture_config, regex_reason, syntax_config};

/// A shorter leading literal occurs too often to narrow anything.
const MIN_LEAD: usize = 4;

/// More positions than this for the rest after a `.*`, and the `.*` is
/// searched as it is (see the module's doc).
pub(super) const MAX_TAIL_TRIES: usize = 4;

/// The literal every match starts with, and how to search past it.
#[derive(Debug)]
pub(super) struct Lead {
    literal: Finder<'static>,
    /// The pattern is anchored: the literal counts only at the start.
    at_start: bool,
    tail: Option<Tail>,
}

/// One anchored search of [`Lead::searches`].
pub(super) struct Search<'h> {
    pub(super) regex: &'h Regex,
    /// Whether `regex` is the tail's (a cache and groups of its own).
    pub(super) tail: bool,
    pub(super) input: Input<'h>,
}

/// The pattern after `literal.*`, when it starts with a literal byte.
#[derive(Debug)]
struct Tail {
    /// The byte the tail starts with.
    byte: u8,
    /// `.` also matches `\n` (`(?s)`).
    dot_all: bool,
    /// The `.*` is lazy (`.*?`): its positions are tried the first first.
    lazy: bool,
    regex: Regex,
}

impl Lead {
    /// Splits the regular pattern `text` (the exact dialect) into its
    /// leading literal and the regex for the rest of it, which the caller
    /// searches with [`Lead::searches`]. `Ok(None)`: no literal long
    /// enough, search the pattern whole.
    pub(super) fn compile(text: &str) -> Result<Option<(Lead, Regex)>, String> {
        let Ok(hir) = regex_automata::util::syntax::parse_with(text, &syntax_config(false)) else {
            return Ok(None);
        };
        let HirKind::Concat(parts) = hir.kind() else {
            return Ok(None);
        };
        match parts.split_first() {
            Some((first, rest)) => Lead::split(first, rest, false, MIN_LEAD),
            None => Ok(None),
        }
    }

    /// [`Lead::compile`] for one of banjo's own failregexes: `text` is its
    /// capture text (`^(?:...)`, compiled with greed swapped), and only a
    /// literal followed by a `.*` and a tail is worth splitting off (with
    /// the literal alone, the backtracker would just walk it the same).
    pub(super) fn compile_anchored(text: &str) -> Result<Option<(Lead, Regex)>, String> {
        let Ok(hir) = regex_automata::util::syntax::parse_with(text, &syntax_config(true)) else {
            return Ok(None);
        };
        let HirKind::Concat(parts) = hir.kind() else {
            return Ok(None);
        };
        let [start, first, rest @ ..] = &parts[..] else {
            return Ok(None);
        };
        if !matches!(start.kind(), HirKind::Look(Look::Start)) {
            return Ok(None);
        }
        let split = Lead::split(first, rest, true, 1)?;
        Ok(split.filter(|(lead, _)| lead.tail.is_some()))
    }

    fn split(
        first: &Hir,
        rest: &[Hir],
        at_start: bool,
        min_len: usize,
    ) -> Result<Option<(Lead, Regex)>, String> {
        let literal = match first.kind() {
            HirKind::Literal(l) if l.0.len() >= min_len => Finder::new(&l.0).into_owned(),
            _ => return Ok(None),
        };
        let exact = build(&Hir::concat(rest.to_vec()))?;
        let tail = Tail::new(rest).filter(|t| same_groups(&t.regex, &exact));
        Ok(Some((
            Lead {
                literal,
                at_start,
                tail,
            },
            exact,
        )))
    }

    /// Whether the literal is followed by a `.*` and a tail tried at its
    /// first byte's places.
    #[cfg(test)]
    pub(super) fn has_tail(&self) -> bool {
        self.tail.is_some()
    }

    /// The anchored searches that find what an unanchored search of the
    /// whole pattern finds, in order until one matches: `exact` right
    /// after each occurrence of the literal (overlapping ones included),
    /// or with a tail, the tail at each of its positions.
    pub(super) fn searches<'h>(
        &'h self,
        exact: &'h Regex,
        hay: &'h [u8],
    ) -> impl Iterator<Item = Search<'h>> + 'h {
        let anchored = move |regex, tail, at: usize| Search {
            regex,
            tail,
            input: Input::new(hay).range(at..).anchored(Anchored::Yes),
        };
        let mut from = 0;
        // The end of the `.*`'s reach from the last occurrence searched:
        // a later occurrence before it can only find the same match.
        let mut covered = 0;
        // Where the tail's positions remain to be tried (from the right
        // for a greedy `.*`, from the left for a lazy one).
        let mut pending: Option<(usize, usize)> = None;
        std::iter::from_fn(move || loop {
            if let (Some(t), Some((lo, hi))) = (&self.tail, pending) {
                let h = hay.get(lo..hi).unwrap_or_default();
                if t.lazy {
                    if let Some(p) = memchr::memchr(t.byte, h) {
                        pending = Some((lo + p + 1, hi));
                        return Some(anchored(&t.regex, true, lo + p));
                    }
                } else if let Some(p) = memchr::memrchr(t.byte, h) {
                    pending = Some((lo, lo + p));
                    return Some(anchored(&t.regex, true, lo + p));
                }
                pending = None;
            }
            let at = match self.at_start {
                true if from == 0 && hay.starts_with(self.literal.needle()) => 0,
                true => return None,
                false => from + self.literal.find(hay.get(from..)?)?,
            };
            from = at + 1;
            let start = at + self.literal.needle().len();
            let Some(t) = &self.tail else {
                return Some(anchored(exact, false, start));
            };
            if start < covered {
                continue;
            }
            // `.` stops before a `\n`; the tail may start on it.
            covered = match t.dot_all {
                true => hay.len(),
                false => memchr::memchr(b'\n', &hay[start..]).map_or(hay.len(), |n| start + n + 1),
            };
            let reach = &hay[start..covered];
            if memchr::memrchr_iter(t.byte, reach)
                .nth(MAX_TAIL_TRIES)
                .is_some()
            {
                return Some(anchored(exact, false, start));
            }
            pending = Some((start, covered));
        })
    }
}

impl Tail {
    /// The tail of `literal` + `rest`, if `rest` is a `.*` (greedy or
    /// lazy) and then a pattern starting with a literal byte.
    fn new(rest: &[Hir]) -> Option<Tail> {
        let (star, after) = rest.split_first()?;
        let HirKind::Repetition(r) = star.kind() else {
            return None;
        };
        if r.min != 0 || r.max.is_some() {
            return None;
        }
        let HirKind::Class(Class::Bytes(class)) = r.sub.kind() else {
            return None;
        };
        let ranges: Vec<(u8, u8)> = class
            .ranges()
            .iter()
            .map(|r| (r.start(), r.end()))
            .collect();
        let dot_all = match ranges[..] {
            [(0, 255)] => true,
            [(0, 9), (11, 255)] => false,
            _ => return None,
        };
        let first = after.first()?;
        let byte = match first.kind() {
            HirKind::Literal(l) => *l.0.first()?,
            _ => return None,
        };
        let regex = build(&Hir::concat(after.to_vec())).ok()?;
        Some(Tail {
            byte,
            dot_all,
            lazy: !r.greedy,
            regex,
        })
    }
}

/// The search state of one regex: its cache and its groups, created on
/// first use.
pub(super) type Slot = Option<(meta::Cache, Captures)>;

/// Runs `searches` in order until one matches, each in its regex's slot
/// (`slots[0]` for the regex past the literal, or the whole pattern;
/// `slots[1]` for the tail's); which slot holds the match's groups.
pub(super) fn first_match<'h>(
    mut searches: impl Iterator<Item = Search<'h>>,
    slots: &mut [Slot],
) -> Option<usize> {
    searches.find_map(|search| {
        let k = usize::from(search.tail);
        let (cache, caps) = slots
            .get_mut(k)?
            .get_or_insert_with(|| (search.regex.create_cache(), search.regex.create_captures()));
        search
            .regex
            .search_captures_with(cache, &search.input, caps);
        caps.is_match().then_some(k)
    })
}

/// A regex searched for groups, anchored, by the backtracker alone.
fn build(hir: &Hir) -> Result<Regex, String> {
    Regex::builder()
        .configure(capture_config(true))
        .build_from_hir(hir)
        .map_err(|e| regex_reason(&e))
}

/// Whether `a` and `b` number their groups alike (the `.*` left out of
/// the tail must not have been a group).
pub(super) fn same_groups(a: &Regex, b: &Regex) -> bool {
    a.group_info()
        .pattern_names(PatternID::ZERO)
        .eq(b.group_info().pattern_names(PatternID::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lead(pattern: &str) -> Lead {
        Lead::compile(pattern)
            .expect("compiles")
            .expect("has a leading literal")
            .0
    }

    /// Each search of a split pattern as (tail?, where it starts).
    fn starts(split: Result<Option<(Lead, Regex)>, String>, hay: &str) -> Vec<(bool, usize)> {
        let (lead, exact) = split.expect("compiles").expect("splits");
        lead.searches(&exact, hay.as_bytes())
            .map(|s| (s.tail, s.input.start()))
            .collect()
    }

    fn searches(pattern: &str, hay: &str) -> Vec<(bool, usize)> {
        starts(Lead::compile(pattern), hay)
    }

    #[test]
    fn the_tail_is_tried_at_its_bytes_the_last_first() {
        let p = r"from (?:.*)\[(?P<ip4>[0-9.]+)\]";
        assert!(lead(p).has_tail());
        //            0123456789012345678
        let hay = "from a[b] c[1.2.3.4]\n";
        assert_eq!(searches(p, hay), vec![(true, 11), (true, 6)]);
        // No bracket: nothing to try.
        assert_eq!(searches(p, "from abc\n"), vec![]);
    }

    #[test]
    fn a_lazy_dot_star_tries_its_tail_the_first_first() {
        let p = r"from .*?\[(?P<ip4>[0-9.]+)\]";
        assert!(lead(p).has_tail());
        //            0123456789012345678
        let hay = "from a[b] c[1.2.3.4]\n";
        assert_eq!(searches(p, hay), vec![(true, 6), (true, 11)]);
    }

    fn anchored_searches(pattern: &str, hay: &str) -> Vec<(bool, usize)> {
        starts(Lead::compile_anchored(pattern), hay)
    }

    #[test]
    fn an_anchored_pattern_searches_past_its_literal_at_the_start_only() {
        // As banjo compiles its own failregexes' capture text: with greed
        // swapped, the `.*` is lazy.
        let p = r"^(?:from (?:.*)\[(?P<h>[0-9.]+)\])";
        //                                0123456789012345678
        assert_eq!(
            anchored_searches(p, "from a[b] c[1.2.3.4]"),
            vec![(true, 6), (true, 11)]
        );
        assert_eq!(anchored_searches(p, "x from a[b]"), vec![]);
        // Without a `.*` and a tail there is nothing to gain.
        for p in [
            r"^(?:from \[(?P<h>[0-9.]+)\])",
            r"^(?:from (?:.*)(?P<h>[0-9.]+))",
            r"(?:from (?:.*)\[)",
        ] {
            assert!(
                Lead::compile_anchored(p).expect("compiles").is_none(),
                "{p}"
            );
        }
    }

    #[test]
    fn many_candidates_fall_back_to_one_search_past_the_literal() {
        let p = r"from .*\[x";
        let hay = format!("from {}\n", "[".repeat(MAX_TAIL_TRIES + 1));
        assert_eq!(searches(p, &hay), vec![(false, 5)]);
        let hay = format!("from {}\n", "[".repeat(MAX_TAIL_TRIES));
        assert_eq!(searches(p, &hay).len(), MAX_TAIL_TRIES);
    }

    #[test]
    fn later_occurrences_in_reach_of_the_dot_star_are_skipped() {
        let p = r"abab.*\[";
        // The second `abab` (overlapping) is within the first's reach.
        assert_eq!(searches(p, "ababab [\n"), vec![(true, 7)]);
        // Past a newline, `.` does not reach: the next line's occurrence
        // is searched too.
        assert_eq!(
            searches(p, "abab x\nabab [\n"),
            vec![(true, 12)],
            "the first line has no bracket"
        );
        assert_eq!(searches(p, "abab [\nabab [\n"), vec![(true, 5), (true, 12)]);
        // `(?s)`: `.` reaches everything.
        assert_eq!(
            searches(r"(?s)abab.*\[", "abab [\nabab [\n"),
            vec![(true, 12), (true, 5)]
        );
    }

    #[test]
    fn no_tail_where_the_dot_star_is_not_plain() {
        for p in [
            r"from (?P<x>.*)\[",
            r"from .+\[",
            r"from [^\]]*\[",
            r"from .*\w",
        ] {
            assert!(!lead(p).has_tail(), "{p}");
        }
        assert!(Lead::compile(r"abc.*\[").expect("compiles").is_none());
    }
}
