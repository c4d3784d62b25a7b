//! Tag expansion: a failregex template, written in fail2ban's (Python's)
//! dialect with `<HOST>`-style tags, becomes regex-automata pattern text.
//!
//! The template is walked once, token by token (escapes, character classes,
//! group openers, quantifiers, tags), which is what lets the translation
//! tell a tag from a `<` inside a class or a `(?P<name>` group name. Two
//! texts come out:
//!
//! - the *matcher* text, for the combined multi-pattern matchers, where only
//!   whether it matches counts;
//! - the *capture* text, compiled with greed swapped (every repetition lazy),
//!   so the capture regex picks the earliest host. A lazy marker the user
//!   wrote (`.*?`) is dropped there, since under swapped greed `.*` already
//!   is lazy and `.*?` would turn greedy.
//!
//! A tag expands to a named group `__hostN` (N counts the tags of the
//! pattern) inside `(?-U:...)`, so the token stays greedy, that is maximal,
//! in both texts.
//!
//! Python-isms translated, each safe and local:
//! - inside a class, a bare `[` becomes `\[` (`[^[]`), and `&`, `~` and a
//!   second `-` of `--` are escaped (Rust would read set operators);
//! - `\Z` becomes `\z`; `\<` and `\>` are literal `<`, `>` (in Rust they are
//!   word boundaries);
//! - a `{` that does not start a valid counted repetition is literal, and
//!   `{,n}` means `{0,n}`;
//! - `(?#comment)` is dropped; the flags `a` and `u` are dropped (banjo's
//!   classes are always ASCII, its matching always on bytes).
//!
//! Refused with a clear reason: look-around, conditionals, backreferences
//! (no DFA can do them), the flags `U` (banjo decides greediness), `x` (its
//! comments would defeat this walk) and `L`, unbalanced parentheses, a
//! trailing backslash, unknown tags.

use super::host::HostKind;

/// A template translated to regex-automata syntax.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Expanded {
    /// Text for the combined matchers (normal greed).
    pub(crate) matcher: String,
    /// Text for the capture regex; compile it with `swap_greed(true)`.
    pub(crate) capture: String,
    /// The host tags, in order: tag `i` is the group named [`host_group`]`(i)`.
    pub(crate) hosts: Vec<HostKind>,
}

/// The group name of the `i`-th host tag of a pattern.
pub(crate) fn host_group(i: usize) -> String {
    format!("__host{i}")
}

/// Token class of each tag (without the optional brackets and port).
fn tag_body(kind: HostKind) -> &'static str {
    match kind {
        // A host name or an address: maximal so that `1.2.3.4.evil.example`
        // stays one token. `[v6]` and `[v6]:port` as fail2ban allows.
        HostKind::Host => r"\[?[0-9A-Za-z._:%-]+(?:\](?::[0-9]+)?)?",
        HostKind::Addr | HostKind::Ip6 => r"\[?[0-9A-Fa-f:.]+(?:\](?::[0-9]+)?)?",
        HostKind::Ip4 => r"[0-9.]+",
    }
}

fn tag_kind(name: &str) -> Option<HostKind> {
    match name {
        "HOST" => Some(HostKind::Host),
        "ADDR" => Some(HostKind::Addr),
        "IP4" => Some(HostKind::Ip4),
        "IP6" => Some(HostKind::Ip6),
        _ => None,
    }
}

/// The two output texts, written in step.
struct Out {
    matcher: String,
    capture: String,
}

impl Out {
    fn both(&mut self, s: &str) {
        self.matcher.push_str(s);
        self.capture.push_str(s);
    }

    fn both_char(&mut self, c: char) {
        self.matcher.push(c);
        self.capture.push(c);
    }
}

/// Translates `template`. `anchored` wraps it as `^(?:...)` (a failregex),
/// otherwise as `(?:...)` (an ignoreregex). `need_host` refuses a template
/// without a host tag.
pub(crate) fn expand(template: &str, anchored: bool, need_host: bool) -> Result<Expanded, String> {
    let chars: Vec<char> = template.chars().collect();
    let mut out = Out {
        matcher: String::with_capacity(template.len() + 64),
        capture: String::with_capacity(template.len() + 64),
    };
    out.both(if anchored { "^(?:" } else { "(?:" });
    let mut hosts = Vec::new();
    let mut depth = 0usize;
    let mut after_quantifier = false;
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let quantified = std::mem::take(&mut after_quantifier);
        match c {
            '\\' => i = escape(&chars, i, &mut out)?,
            '[' => i = class(&chars, i, &mut out)?,
            '(' => i = group(&chars, i, &mut out, &mut depth)?,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| "unbalanced parenthesis: `)` without `(`".to_string())?;
                out.both_char(')');
                i += 1;
            }
            '*' | '+' => {
                out.both_char(c);
                after_quantifier = true;
                i += 1;
            }
            '?' if quantified => {
                // Lazy marker: kept for matching, dropped for capturing.
                out.matcher.push('?');
                i += 1;
            }
            '?' => {
                out.both_char('?');
                after_quantifier = true;
                i += 1;
            }
            '{' => match counted(&chars, i) {
                Some((text, next)) => {
                    out.both(&text);
                    after_quantifier = true;
                    i = next;
                }
                None => {
                    out.both(r"\{");
                    i += 1;
                }
            },
            '}' | ']' => {
                out.both_char('\\');
                out.both_char(c);
                i += 1;
            }
            '<' => match tag(&chars, i) {
                Some((name, next)) => {
                    let kind = tag_kind(&name).ok_or_else(|| {
                        format!(
                            "unknown tag <{name}> (known: <HOST>, <ADDR>, <IP4>, <IP6>; \
                             write \\<{name}> for a literal)"
                        )
                    })?;
                    let n = hosts.len();
                    hosts.push(kind);
                    out.both(&format!("(?-U:(?P<{}>{}))", host_group(n), tag_body(kind)));
                    i = next;
                }
                None => {
                    out.both_char('<');
                    i += 1;
                }
            },
            _ => {
                out.both_char(c);
                i += 1;
            }
        }
    }
    if depth != 0 {
        return Err("unbalanced parenthesis: `(` not closed".to_string());
    }
    if need_host && hosts.is_empty() {
        return Err("no <HOST>, <ADDR>, <IP4> or <IP6> tag".to_string());
    }
    out.both(")");
    Ok(Expanded {
        matcher: out.matcher,
        capture: out.capture,
        hosts,
    })
}

/// `<NAME>` with NAME an uppercase letter followed by uppercase letters,
/// digits, `_` or `-`: the name and the index after `>`.
fn tag(chars: &[char], at: usize) -> Option<(String, usize)> {
    let first = *chars.get(at + 1)?;
    if !first.is_ascii_uppercase() {
        return None;
    }
    let mut j = at + 2;
    while let Some(&c) = chars.get(j) {
        match c {
            '>' => return Some((chars[at + 1..j].iter().collect(), j + 1)),
            c if c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || c == '-' => j += 1,
            _ => return None,
        }
    }
    None
}

/// A counted repetition at `{`: `{n}`, `{n,}`, `{n,m}` or Python's `{,m}`.
/// Returns its Rust text and the index after `}`; `None` if Python would
/// read the `{` as a literal.
fn counted(chars: &[char], at: usize) -> Option<(String, usize)> {
    let close = at + chars.get(at..)?.iter().position(|&c| c == '}')?;
    let inner: String = chars[at + 1..close].iter().collect();
    let (lo, hi) = match inner.split_once(',') {
        Some((lo, hi)) => (lo, Some(hi)),
        None => (inner.as_str(), None),
    };
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if !digits(lo) || hi.is_some_and(|h| !digits(h)) {
        return None;
    }
    let text = match hi {
        None if !lo.is_empty() => format!("{{{lo}}}"),
        Some(hi) if !lo.is_empty() => format!("{{{lo},{hi}}}"),
        Some(hi) if !hi.is_empty() => format!("{{0,{hi}}}"),
        _ => return None,
    };
    Some((text, close + 1))
}

/// An escape at `\`; returns the index after it.
fn escape(chars: &[char], at: usize, out: &mut Out) -> Result<usize, String> {
    let c = *chars
        .get(at + 1)
        .ok_or_else(|| "trailing backslash".to_string())?;
    match c {
        'Z' => out.both(r"\z"),
        '<' | '>' => out.both_char(c),
        'x' | 'p' | 'P' | 'u' | 'U' if chars.get(at + 2) == Some(&'{') => {
            // Rust's braced forms: copy through the closing brace.
            let end = chars[at..]
                .iter()
                .position(|&c| c == '}')
                .map_or(chars.len(), |p| at + p + 1);
            let text: String = chars[at..end].iter().collect();
            out.both(&text);
            return Ok(end);
        }
        _ => {
            out.both_char('\\');
            out.both_char(c);
        }
    }
    Ok(at + 2)
}

/// A character class at `[`; returns the index after its `]`.
fn class(chars: &[char], at: usize, out: &mut Out) -> Result<usize, String> {
    out.both_char('[');
    let mut j = at + 1;
    if chars.get(j) == Some(&'^') {
        out.both_char('^');
        j += 1;
    }
    if chars.get(j) == Some(&']') {
        out.both(r"\]");
        j += 1;
    }
    loop {
        let Some(&c) = chars.get(j) else {
            return Err("unclosed character class `[`".to_string());
        };
        match c {
            '\\' => j = escape(chars, j, out)?,
            ']' => {
                out.both_char(']');
                return Ok(j + 1);
            }
            '[' | '&' | '~' => {
                out.both_char('\\');
                out.both_char(c);
                j += 1;
            }
            '-' if chars.get(j + 1) == Some(&'-') => {
                out.both(r"-\-");
                j += 2;
            }
            _ => {
                out.both_char(c);
                j += 1;
            }
        }
    }
}

/// A group opener at `(`; returns the index after it.
fn group(chars: &[char], at: usize, out: &mut Out, depth: &mut usize) -> Result<usize, String> {
    const LOOK: &str = "look-around ((?=, (?!, (?<=, (?<!) is not supported: a DFA cannot do it";
    if chars.get(at + 1) != Some(&'?') {
        // Nothing reads an unnamed group, and one that captured would cost
        // the capture search a slot write on every step through it.
        out.both("(?:");
        *depth += 1;
        return Ok(at + 1);
    }
    let next = chars.get(at + 2).copied();
    let after = chars.get(at + 3).copied();
    match (next, after) {
        (Some(':'), _) => {
            out.both("(?:");
            *depth += 1;
            Ok(at + 3)
        }
        (Some('='), _) | (Some('!'), _) | (Some('<'), Some('=')) | (Some('<'), Some('!')) => {
            Err(LOOK.to_string())
        }
        (Some('P'), Some('=')) => Err("backreferences ((?P=name)) are not supported".to_string()),
        (Some('('), _) => Err("conditionals ((?(name)...)) are not supported".to_string()),
        (Some('P'), Some('<')) | (Some('<'), _) => {
            // A named group: copy the name verbatim, it is not a tag.
            let end = chars[at..]
                .iter()
                .position(|&c| c == '>')
                .map(|p| at + p + 1)
                .ok_or_else(|| "unclosed group name".to_string())?;
            let text: String = chars[at..end].iter().collect();
            out.both(&text);
            *depth += 1;
            Ok(end)
        }
        (Some('#'), _) => {
            let end = chars[at..]
                .iter()
                .position(|&c| c == ')')
                .ok_or_else(|| "unclosed comment (?#".to_string())?;
            Ok(at + end + 1)
        }
        _ => flags(chars, at, out, depth),
    }
}

/// `(?flags)` or `(?flags:` at `(`; returns the index after it.
fn flags(chars: &[char], at: usize, out: &mut Out, depth: &mut usize) -> Result<usize, String> {
    let mut kept = String::new();
    let mut j = at + 2;
    loop {
        let Some(&c) = chars.get(j) else {
            return Err("unclosed group `(?`".to_string());
        };
        match c {
            ':' | ')' => break,
            '-' => kept.push('-'),
            'a' | 'u' => {}
            'U' => return Err("the flag U is not supported: banjo decides greediness".to_string()),
            'x' => return Err("the flag x is not supported".to_string()),
            'L' => return Err("the flag L is not supported".to_string()),
            'i' | 'm' | 's' | 'R' => kept.push(c),
            _ => return Err(format!("unknown flag `{c}` in group")),
        }
        j += 1;
    }
    let kept = kept.trim_end_matches('-');
    let opens = chars[j] == ':';
    if opens {
        *depth += 1;
        out.both(&format!("(?{kept}:"));
    } else if !kept.is_empty() {
        out.both(&format!("(?{kept})"));
    }
    Ok(j + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(t: &str) -> String {
        expand(t, true, true).unwrap().matcher
    }

    #[test]
    fn host_tag_expands_to_named_greedy_group() {
        let e = expand(r"from (.*)\[<HOST>\]", true, true).unwrap();
        assert_eq!(e.hosts, vec![HostKind::Host]);
        assert!(e.matcher.starts_with("^(?:from (?:.*)\\[(?-U:(?P<__host0>"));
        assert_eq!(e.matcher, e.capture);
    }

    #[test]
    fn several_tags_get_distinct_names() {
        let e = expand("a <IP4> b <IP6> c <ADDR>", false, true).unwrap();
        assert_eq!(e.hosts, vec![HostKind::Ip4, HostKind::Ip6, HostKind::Addr]);
        assert!(e.matcher.contains("__host0") && e.matcher.contains("__host2"));
        assert!(e.matcher.starts_with("(?:a "));
    }

    #[test]
    fn lazy_markers_dropped_for_capture_only() {
        let e = expand(r"a.*?b+?c??d{2,3}?<HOST>", true, true).unwrap();
        assert!(e.matcher.contains(".*?b+?c??d{2,3}?"));
        assert!(e.capture.contains(".*b+c?d{2,3}("));
    }

    #[test]
    fn literal_angles_and_named_groups_survive() {
        assert!(m(r"helo=<[^>]*> <HOST>").contains("helo=<[^>]*>"));
        assert!(m(r"(?P<user>\S+) <HOST>").contains("(?P<user>"));
        assert!(m(r"(?<HOSTNAME>\S+) <HOST>").contains("(?<HOSTNAME>"));
        assert!(m(r"\<EOF> <HOST>").contains("<EOF>"));
        assert!(m(r"[<HOST>] <HOST>").contains("[<HOST>]"));
    }

    #[test]
    fn python_isms() {
        assert!(m(r"from [^[]*\[<HOST>\]").contains(r"from [^\[]*\["));
        assert!(m(r"<HOST>\Z").ends_with(r"\z)"));
        assert!(m(r"<HOST> x{,3} {a} y{2}").contains(r"x{0,3} \{a\} y{2}"));
        assert!(m(r"(?#note)<HOST>").starts_with("^(?:(?-U:"));
        assert!(m(r"(?iu)x <HOST>").starts_with("^(?:(?i)x"));
        assert!(m(r"(?a:x) <HOST>").starts_with("^(?:(?:x)"));
        assert!(m(r"[]a] [&&~] [+--] <HOST>").contains(r"[\]a] [\&\&\~] [+-\-]"));
    }

    #[test]
    fn refusals() {
        let err = |t: &str| expand(t, true, true).unwrap_err();
        assert_eq!(err("no tag here"), "no <HOST>, <ADDR>, <IP4> or <IP6> tag");
        assert!(err("from <HOTS>").starts_with("unknown tag <HOTS>"));
        assert!(err("from <F-USER>x</F-USER> <HOST>").starts_with("unknown tag <F-USER>"));
        assert!(err("(?!x)<HOST>").starts_with("look-around"));
        assert!(err("(?<=x)<HOST>").starts_with("look-around"));
        assert!(err("(?P=a)<HOST>").starts_with("backreferences"));
        assert!(err("(?(a)b|c)<HOST>").starts_with("conditionals"));
        assert!(err("(?U)<HOST>").contains("flag U"));
        assert!(err("(?x)<HOST>").contains("flag x"));
        assert!(err("<HOST>)|(x").starts_with("unbalanced"));
        assert!(err("(<HOST>").starts_with("unbalanced"));
        assert!(err("<HOST>\\").starts_with("trailing backslash"));
        assert!(err("[<HOST>").starts_with("unclosed character class"));
        // An ignoreregex needs no tag.
        assert!(expand("whatever", false, false).is_ok());
    }
}
