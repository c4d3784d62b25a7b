//! Required literals: byte strings one of which is in every line that a
//! set of patterns can match.
//!
//! Most lines of a mail log are benign, and a line without any of a
//! filter's required literals cannot match it. Searching a whole read
//! buffer for those literals at once (Aho-Corasick, vectorised for small
//! sets) and running the matcher only on the lines around a hit turns
//! per-line work into per-hit work; `banjo check` is where that pays.
//!
//! The literals are found in regex-syntax's HIR: a concatenation needs
//! whatever any of its parts needs (or the literal prefixes of any of its
//! suffixes), an alternation needs one of its branches' needs, a
//! repetition at least once needs what its body needs. Being *necessary*
//! is all that matters for correctness; which necessary set is searched
//! decides the speed. Length is a poor guide (`disconnect from ` is in a
//! quarter of a mail log, ` auth=0/` in a few lines), so candidates are
//! ranked by how often they occur in a sample of the input itself, then
//! by length.

use std::cell::RefCell;
use std::collections::HashMap;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex_automata::util::syntax;
use regex_syntax::hir::literal::{ExtractKind, Extractor};
use regex_syntax::hir::{Hir, HirKind};

/// More literals than this, and the set is not worth searching for.
const MAX_LITERALS: usize = 512;
/// A set whose shortest literal is shorter than this finds nearly every
/// line: matching each line is cheaper.
const MIN_LEN: usize = 3;
/// How much of the sample candidates are counted in.
const SAMPLE_BYTES: usize = 1 << 16;

/// A search for lines that may match: any line without a hit cannot.
#[derive(Debug)]
pub struct LinePrefilter {
    searcher: AhoCorasick,
    literals: Vec<Vec<u8>>,
}

impl LinePrefilter {
    /// The prefilter for lines that one of `jails` may match. A jail is
    /// a list of conditions a line must all meet, each a list of
    /// patterns (regex-automata syntax, compiled with `config`) one of
    /// which must match; its literals are those of its most selective
    /// condition. `sample`: some of the input, to rank candidates by
    /// (may be empty). `None` when some jail has no usable set. The
    /// promise covers pure-ASCII lines (fail2ban's patterns are compiled
    /// as ASCII supersets of Unicode ones).
    pub(crate) fn new(
        jails: &[Vec<Vec<&str>>],
        config: &syntax::Config,
        sample: &[u8],
    ) -> Option<LinePrefilter> {
        let chooser = Chooser {
            sample: &sample[..sample.len().min(SAMPLE_BYTES)],
            counts: RefCell::new(HashMap::new()),
        };
        let mut literals = Vec::new();
        for conditions in jails {
            let mut best = None;
            for any_of in conditions {
                chooser.keep_better(&mut best, chooser.any_of(any_of, config));
            }
            literals.extend(best?.literals);
        }
        literals.sort();
        literals.dedup();
        // A literal that contains another is redundant.
        let all = literals.clone();
        literals.retain(|l| {
            !all.iter()
                .any(|s| s.len() < l.len() && memchr::memmem::find(l, s).is_some())
        });
        if literals.is_empty() || literals.len() > MAX_LITERALS {
            return None;
        }
        // Case-sensitive: a case-insensitive Aho-Corasick cannot use the
        // vectorised (Teddy) search, which is most of the point.
        let searcher = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostFirst)
            .build(&literals)
            .ok()?;
        Some(LinePrefilter { searcher, literals })
    }

    /// Where the next literal starts in `haystack[from..]`.
    pub fn find(&self, haystack: &[u8], from: usize) -> Option<usize> {
        let input = aho_corasick::Input::new(haystack).span(from..haystack.len());
        self.searcher.find(input).map(|m| m.start())
    }

    /// The literals searched for.
    pub fn literals(&self) -> &[Vec<u8>] {
        &self.literals
    }
}

/// A set of literals, one of which every match contains.
#[derive(Clone, Debug)]
struct Need {
    literals: Vec<Vec<u8>>,
    /// Occurrences of its literals in the sample.
    hits: usize,
}

impl Need {
    fn shortest(&self) -> usize {
        self.literals.iter().map(Vec::len).min().unwrap_or(0)
    }

    /// Fewer hits in the sample, then a longer shortest literal, then
    /// fewer literals.
    fn better_than(&self, other: &Need) -> bool {
        let (a, b) = (self.shortest().min(16), other.shortest().min(16));
        (self.hits, std::cmp::Reverse(a), self.literals.len())
            < (other.hits, std::cmp::Reverse(b), other.literals.len())
    }
}

/// Builds [`Need`]s and ranks them by a sample of the input.
struct Chooser<'a> {
    sample: &'a [u8],
    counts: RefCell<HashMap<Vec<u8>, usize>>,
}

impl Chooser<'_> {
    fn need(&self, literals: Vec<Vec<u8>>) -> Option<Need> {
        // A match is searched in a line with its `\n` appended: only the
        // part before a newline is sure to be in the line itself.
        let mut literals: Vec<Vec<u8>> = literals
            .into_iter()
            .map(|mut l| {
                if let Some(p) = l.iter().position(|&b| b == b'\n') {
                    l.truncate(p);
                }
                l
            })
            .collect();
        literals.sort();
        literals.dedup();
        if literals.len() > MAX_LITERALS || literals.iter().any(Vec::is_empty) {
            return None;
        }
        let hits = literals.iter().map(|l| self.hits(l)).sum();
        Some(Need { literals, hits })
    }

    fn hits(&self, literal: &[u8]) -> usize {
        if let Some(n) = self.counts.borrow().get(literal) {
            return *n;
        }
        let n = memchr::memmem::find_iter(self.sample, literal).count();
        self.counts.borrow_mut().insert(literal.to_vec(), n);
        n
    }

    fn keep_better(&self, best: &mut Option<Need>, candidate: Option<Need>) {
        if let Some(c) = candidate {
            if best.as_ref().map_or(true, |b| c.better_than(b)) {
                *best = Some(c);
            }
        }
    }

    /// What every match of one of `patterns` contains.
    fn any_of(&self, patterns: &[&str], config: &syntax::Config) -> Option<Need> {
        let mut literals = Vec::new();
        for p in patterns {
            let hir = syntax::parse_with(p, config).ok()?;
            literals.extend(self.necessary(&hir)?.literals);
        }
        self.need(literals)
    }

    /// What every match of `hir` contains; `None` when nothing useful is.
    fn necessary(&self, hir: &Hir) -> Option<Need> {
        let need = match hir.kind() {
            HirKind::Literal(l) => self.need(vec![l.0.to_vec()]),
            HirKind::Capture(c) => self.necessary(&c.sub),
            HirKind::Repetition(r) if r.min >= 1 => self.necessary(&r.sub),
            HirKind::Alternation(branches) => {
                let mut literals = Vec::new();
                for b in branches {
                    literals.extend(self.necessary(b)?.literals);
                }
                self.need(literals)
            }
            HirKind::Concat(parts) => {
                let mut best = None;
                for i in 0..parts.len() {
                    self.keep_better(&mut best, self.necessary(&parts[i]));
                    let suffix = Hir::concat(parts[i..].to_vec());
                    self.keep_better(&mut best, self.prefixes(&suffix));
                }
                best
            }
            _ => self.prefixes(hir),
        }?;
        (need.shortest() >= MIN_LEN).then_some(need)
    }

    /// The literal prefixes of every match of `hir`, when there are
    /// finitely many.
    fn prefixes(&self, hir: &Hir) -> Option<Need> {
        // Classes of up to two bytes (`[-_]`): `\d` as ten literals is
        // worth less than the literal before it.
        let seq = Extractor::new()
            .kind(ExtractKind::Prefix)
            .limit_class(2)
            .extract(hir);
        let literals = seq.literals()?;
        self.need(literals.iter().map(|l| l.as_bytes().to_vec()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> syntax::Config {
        syntax::Config::new().unicode(false).utf8(false)
    }

    fn set(patterns: &[&str]) -> Option<Vec<String>> {
        LinePrefilter::new(&[vec![patterns.to_vec()]], &config(), b"").map(|p| {
            p.literals()
                .iter()
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect()
        })
    }

    #[test]
    fn a_concatenation_keeps_its_longest_literal() {
        assert_eq!(
            set(&[r"^\S+ postfix/smtpd\[\d+\]: NOQUEUE: reject: RCPT from \S+"]),
            Some(vec!["]: NOQUEUE: reject: RCPT from ".to_string()])
        );
    }

    #[test]
    fn alternations_need_every_branch() {
        assert_eq!(
            set(&[r"(?:lost connection|too many errors) after \w+"]),
            Some(vec![
                "lost connection after ".to_string(),
                "too many errors after ".to_string()
            ])
        );
        assert_eq!(
            set(&[r"x(?:lost connection|too many errors)\d"]),
            Some(vec![
                "xlost connection".to_string(),
                "xtoo many errors".to_string()
            ])
        );
        // One branch needs nothing: no set.
        assert_eq!(set(&[r"(?:lost connection|\d+)\s"]), None);
    }

    #[test]
    fn optional_parts_give_nothing() {
        assert_eq!(set(&[r"(?:authentication failed)?\d+"]), None);
        assert_eq!(set(&[r"(?:abc)*x+"]), None);
        assert_eq!(
            set(&[r"(?:authentication failed)+\d+"]),
            Some(vec!["authentication failed".to_string()])
        );
    }

    #[test]
    fn a_literal_containing_another_is_dropped() {
        assert_eq!(
            set(&[r"SASL LOGIN authentication failed", "authentication failed"]),
            Some(vec!["authentication failed".to_string()])
        );
    }

    #[test]
    fn a_literal_is_cut_at_the_appended_newline() {
        assert_eq!(set(&["rejected\n"]), Some(vec!["rejected".to_string()]));
        assert_eq!(set(&["\nab"]), None);
    }

    #[test]
    fn every_pattern_must_have_a_set() {
        assert_eq!(set(&["refused", r"\d+"]), None);
        assert_eq!(
            set(&["refused", "denied"]),
            Some(vec!["denied".to_string(), "refused".to_string()])
        );
    }

    #[test]
    fn a_jail_uses_its_most_selective_condition() {
        let jail = vec![
            vec!["connect", r"\d+ from"],
            vec!["(?:dis)?connect from .* auth=0/"],
        ];
        let p = LinePrefilter::new(std::slice::from_ref(&jail), &config(), b"");
        let got: Option<Vec<&[u8]>> = p
            .as_ref()
            .map(|p| p.literals().iter().map(Vec::as_slice).collect());
        assert_eq!(got, Some(vec![&b"connect from "[..]]));
        // Another jail adds its own.
        let p = LinePrefilter::new(&[jail, vec![vec!["refused"]]], &config(), b"");
        assert_eq!(p.map(|p| p.literals().len()), Some(2));
    }

    #[test]
    fn the_sample_decides_between_candidates() {
        let pattern = [r"disconnect from \S+ auth=0/\d"];
        let common = b"x disconnect from a ehlo=1\n".repeat(50);
        let p = LinePrefilter::new(&[vec![pattern.to_vec()]], &config(), &common);
        assert_eq!(
            p.map(|p| p.literals().to_vec()),
            Some(vec![b" auth=0/".to_vec()])
        );
        // Without a sample, the longer literal.
        let p = LinePrefilter::new(&[vec![pattern.to_vec()]], &config(), b"");
        assert_eq!(
            p.map(|p| p.literals().to_vec()),
            Some(vec![b"disconnect from ".to_vec()])
        );
    }

    #[test]
    fn the_search_finds_the_next_hit() {
        let p = LinePrefilter::new(&[vec![vec!["NOQUEUE: reject"]]], &config(), b"");
        let Some(p) = p else {
            panic!("no prefilter");
        };
        let hay = b"a connect from x\nb NOQUEUE: reject: RCPT\nc NOQUEUE: reject\n";
        assert_eq!(p.find(hay, 0), Some(19));
        assert_eq!(p.find(hay, 20), Some(43));
        assert_eq!(p.find(hay, 44), None);
    }

    #[test]
    fn a_case_insensitive_pattern_is_found_in_every_spelling() {
        let p = LinePrefilter::new(&[vec![vec!["(?i)auth failed"]]], &config(), b"");
        let Some(p) = p else {
            panic!("no prefilter");
        };
        let hay = b"AUTH FAILED\nAuth Failed\nauth failed\naUtH fAiLeD\n";
        for line in 0..4 {
            assert_eq!(p.find(hay, line * 12), Some(line * 12), "line {line}");
        }
    }
}
