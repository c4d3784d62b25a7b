//! fail2ban's regex dialect, for filters imported from fail2ban: Python's
//! `re` syntax plus fail2ban's tags, translated so that banjo matches
//! exactly what fail2ban matches.
//!
//! # Tags
//!
//! [`expand_tags`] replaces fail2ban's tags as fail2ban does: `<HOST>` by
//! alternatives capturing `ip4`, `ip6` or `dns`; `<ADDR>`, `<IP4>`, `<IP6>`,
//! `<DNS>`, `<F-ID/>`, `<F-PORT/>`; `<F-NAME>...</F-NAME>` by a group named
//! `name` (`id` is `fid`, `port` is `fport`). fail2ban's IPv6 pattern ends
//! with the look-behind `(?<=:):`; every alternative before it ends with a
//! `:`, so the look-behind always holds and banjo writes a plain `:`.
//! `<SKIPLINES>` (multi-line), `<CIDR>` and `<SUBNET>` (banjo bans single
//! addresses) are refused.
//!
//! # Three translations of one pattern
//!
//! The Python pattern is parsed once, then written out three ways:
//!
//! - [`Mode::Dfa`]: a *superset* for the combined lazy DFA (ASCII, bytes).
//!   Look-around is dropped, a conditional becomes an alternation of its
//!   branches, a backreference matches anything, atomic groups and
//!   possessive quantifiers become ordinary ones. Each of these only lets
//!   more lines through; the exact pattern then decides.
//! - [`Mode::Exact`]: the same meaning for regex-automata (ASCII, bytes),
//!   used with captures on candidate lines that are pure ASCII. On ASCII
//!   text Python's Unicode classes and ASCII ones agree, once `\s` is
//!   given Python's extra `\x1c`-`\x1f`. Not available when the pattern
//!   needs look-around, a conditional, a backreference or atomic
//!   grouping.
//! - [`Mode::Fancy`]: the same meaning for fancy-regex (Unicode, `&str`),
//!   for those patterns and for lines that are not pure ASCII.
//!
//! The line is searched as fail2ban searches its buffer: the text with a
//! `\n` appended, so Python's `$` (end, or before a final newline) is
//! written `(?m:$)` and `\Z` is `\z`.
//!
//! Refused: the flags `a`, `L` and `x`, `\N{...}`, unbalanced groups, and
//! whatever Python itself would reject that this parser notices.

use std::fmt::Write as _;

/// fail2ban's IPv4 pattern.
const IP4: &str = r"(?:\d{1,3}\.){3}\d{1,3}";
/// fail2ban's IPv6 pattern, with its always-true look-behind removed.
const IP6: &str = r"(?:[0-9a-fA-F]{1,4}::?|::){1,7}(?:[0-9a-fA-F]{1,4}|:)";
/// fail2ban's host-name pattern.
const DNS: &str = r"[\w\-.^_]*\w";

fn ip4_group() -> String {
    format!("(?:::f{{4,6}}:)?(?P<ip4>{IP4})")
}

fn addr_pattern() -> String {
    format!(r"\[?(?:{}|(?P<ip6>{IP6}))\]?", ip4_group())
}

/// Replaces fail2ban's tags in `regex` (fail2ban's `_resolveHostTag`).
pub(crate) fn expand_tags(regex: &str) -> Result<String, String> {
    let mut out = String::with_capacity(regex.len() + 128);
    let mut open: Vec<String> = Vec::new();
    let mut rest = regex;
    while let Some(lt) = rest.find('<') {
        out.push_str(&rest[..lt]);
        let after = &rest[lt..];
        let Some(len) = tag_len(after) else {
            out.push('<');
            rest = &after[1..];
            continue;
        };
        let tag = &after[..len];
        let name = &tag[1..len - 1];
        rest = &after[len..];
        let replacement = match name {
            "HOST" => format!("(?:{}|(?P<dns>{DNS}))", addr_pattern()),
            "ADDR" | "F-ADDR/" => addr_pattern(),
            "IP4" | "F-IP4/" => ip4_group(),
            "IP6" | "F-IP6/" => format!("(?P<ip6>{IP6})"),
            "DNS" | "F-DNS/" => format!("(?P<dns>{DNS})"),
            "F-ID/" => r"(?P<fid>\S+)".to_string(),
            "F-PORT/" => r"(?P<fport>\w+)".to_string(),
            "SKIPLINES" => {
                return Err(
                    "<SKIPLINES> (a multi-line failregex) is not supported: a journal entry is one line"
                        .into(),
                )
            }
            "CIDR" | "F-CIDR/" | "SUBNET" | "F-SUBNET/" => {
                return Err(format!(
                    "<{name}> is not supported: banjo bans single addresses, not networks"
                ))
            }
            _ => {
                let (close, custom) = match name.strip_prefix('/') {
                    Some(n) => (true, n),
                    None => (false, name),
                };
                match custom.strip_prefix("F-").filter(|n| is_custom_name(n)) {
                    Some(n) if close => {
                        if let Some(pos) = open.iter().rposition(|o| o == n) {
                            open.remove(pos);
                            ")".to_string()
                        } else {
                            tag.to_string()
                        }
                    }
                    Some(n) => {
                        open.push(n.to_string());
                        format!("(?P<{}>", group_name(n))
                    }
                    None => tag.to_string(),
                }
            }
        };
        out.push_str(&replacement);
    }
    out.push_str(rest);
    Ok(out)
}

/// Length of a fail2ban tag `</?[\w\-]+/?>` at the start of `s`.
fn tag_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 1;
    if b.get(i) == Some(&b'/') {
        i += 1;
    }
    let start = i;
    while b
        .get(i)
        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
    {
        i += 1;
    }
    if i == start {
        return None;
    }
    if b.get(i) == Some(&b'/') {
        i += 1;
    }
    (b.get(i) == Some(&b'>')).then_some(i + 1)
}

fn is_custom_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// fail2ban's group name for `<F-NAME>`.
fn group_name(n: &str) -> String {
    match n.to_ascii_lowercase().as_str() {
        "id" => "fid".into(),
        "port" => "fport".into(),
        other => other.to_string(),
    }
}

/// How to write a parsed pattern out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A superset for the combined DFA. `in_content`: the pattern is a
    /// failregex placed right after its prefregex's prefix, so `^`, `\A`,
    /// `\b` and `\B` (whose truth depends on text before the content) are
    /// dropped too.
    Dfa { in_content: bool },
    /// Exact, for regex-automata on ASCII bytes.
    Exact,
    /// [`Mode::Exact`] with each look-around replaced by an empty marker
    /// group `__lkN` (N in [`Pattern::lookarounds`] order): the matcher
    /// then checks each look-around the match went through.
    Relaxed,
    /// Exact, for fancy-regex on any text.
    Fancy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ClassItem {
    Char(char),
    Range(char, char),
    /// `\d`, `\D`, `\w`, `\W`, `\s`, `\S`.
    Perl(char),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum GroupKind {
    /// A capture group: its name, and its number (Python's numbering).
    Capture(Option<String>, u32),
    NonCapture,
    /// `(?flags-flags:...)`, flags as written (without `u`).
    Flags(String),
    Atomic,
    Look {
        behind: bool,
        negative: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Empty,
    Literal(char),
    Dot,
    Class {
        negated: bool,
        items: Vec<ClassItem>,
    },
    /// `\d \D \w \W \s \S \b \B \A \Z`.
    Escape(char),
    Start,
    End,
    Group(GroupKind, Box<Node>),
    Cond {
        cond: String,
        yes: Box<Node>,
        no: Option<Box<Node>>,
    },
    Backref(String),
    Repeat {
        node: Box<Node>,
        min: u32,
        max: Option<u32>,
        greedy: bool,
        possessive: bool,
    },
    Concat(Vec<Node>),
    Alt(Vec<Node>),
    /// `(?i)` and friends in the middle of the pattern.
    SetFlags(String),
}

/// A parsed pattern.
#[derive(Clone, Debug)]
pub(crate) struct Pattern {
    root: Node,
}

impl Pattern {
    /// Parses Python `re` syntax (tags already expanded).
    pub(crate) fn parse(text: &str) -> Result<Pattern, String> {
        let chars: Vec<char> = text.chars().collect();
        let mut p = Parser {
            chars,
            pos: 0,
            groups: 0,
        };
        let root = p.alternation(0)?;
        if p.pos < p.chars.len() {
            return Err("unbalanced parenthesis: `)` without `(`".into());
        }
        Ok(Pattern { root })
    }

    /// Whether [`Mode::Exact`] can express it (no look-around,
    /// conditional, backreference, atomic group or possessive repeat).
    pub(crate) fn is_regular(&self) -> bool {
        regular(&self.root)
    }

    /// The look-arounds, in the order [`Mode::Relaxed`] numbers them, when
    /// the pattern can be matched relaxed: every look-around outside any
    /// repetition or conditional, with a regular body (a look-behind also
    /// of fixed width), and nothing else irregular. `None` otherwise.
    pub(crate) fn lookarounds(&self) -> Option<Vec<Look>> {
        fn walk(n: &Node, in_repeat: bool, out: &mut Vec<Look>) -> bool {
            match n {
                Node::Group(GroupKind::Look { behind, negative }, inner) => {
                    if in_repeat || !regular(inner) {
                        return false;
                    }
                    let width = if *behind {
                        match fixed_width(inner) {
                            Some(w) => Some(w),
                            None => return false,
                        }
                    } else {
                        None
                    };
                    let mut body = String::new();
                    let ctx = Ctx {
                        mode: Mode::Exact,
                        name_all: false,
                        numbers: Vec::new(),
                        looks: std::cell::Cell::new(0),
                    };
                    if emit(inner, &ctx, &mut body).is_err() {
                        return false;
                    }
                    out.push(Look {
                        negative: *negative,
                        behind: width,
                        body,
                    });
                    true
                }
                Node::Group(GroupKind::Atomic, _) | Node::Cond { .. } | Node::Backref(_) => false,
                Node::Repeat {
                    possessive: true, ..
                } => false,
                Node::Group(_, inner) => walk(inner, in_repeat, out),
                Node::Repeat { node, .. } => walk(node, true, out),
                Node::Concat(v) | Node::Alt(v) => v.iter().all(|n| walk(n, in_repeat, out)),
                _ => true,
            }
        }
        let mut out = Vec::new();
        walk(&self.root, false, &mut out).then_some(out)
    }

    /// For each positive look-ahead outside repetitions and conditionals:
    /// a DFA superset of "the pattern matches up to that look-ahead and
    /// its body matches there" (the pattern cut right after the
    /// look-ahead, which becomes its body). Every match of the pattern
    /// matches each of them, so a line must match all of them: a DFA can
    /// check a look-ahead that way, though not inside the pattern itself.
    pub(crate) fn witnesses(&self) -> Vec<String> {
        let mut out = Vec::new();
        for target in 0.. {
            let mut counter = 0;
            let (node, found) = witness(&self.root, target, &mut counter, false);
            if !found {
                break;
            }
            let ctx = Ctx {
                mode: Mode::Dfa { in_content: false },
                name_all: false,
                numbers: Vec::new(),
                looks: std::cell::Cell::new(0),
            };
            let mut text = String::new();
            if emit(&node, &ctx, &mut text).is_ok() {
                out.push(text);
            }
        }
        out
    }

    /// Whether the pattern can only match at the start of the text: every
    /// top-level alternative begins with `^` or `\A` (flags aside).
    pub(crate) fn starts_anchored(&self) -> bool {
        fn first_anchored(n: &Node) -> bool {
            match n {
                Node::Start | Node::Escape('A') => true,
                Node::Concat(v) => v
                    .iter()
                    .find(|n| !matches!(n, Node::SetFlags(_) | Node::Empty))
                    .is_some_and(first_anchored),
                Node::Alt(v) => !v.is_empty() && v.iter().all(first_anchored),
                Node::Group(
                    GroupKind::Capture(..) | GroupKind::NonCapture | GroupKind::Flags(_),
                    inner,
                ) => first_anchored(inner),
                _ => false,
            }
        }
        first_anchored(&self.root)
    }

    /// The names of the capture groups, in order.
    pub(crate) fn group_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for_each_capture(&self.root, &mut |name, _| {
            if let Some(name) = name {
                out.push(name.clone());
            }
        });
        out
    }

    /// Writes the pattern for `mode`. [`Mode::Exact`] fails when the
    /// pattern is not [`Pattern::is_regular`].
    pub(crate) fn emit(&self, mode: Mode) -> Result<String, String> {
        let mut out = String::new();
        // fancy-regex refuses numbered references next to named groups
        // (Python allows them): then every group gets a name.
        let mut numbers = Vec::new();
        numbered(&self.root, &mut numbers);
        let ctx = Ctx {
            mode,
            name_all: mode == Mode::Fancy && !self.group_names().is_empty(),
            numbers,
            looks: std::cell::Cell::new(0),
        };
        emit(&self.root, &ctx, &mut out)?;
        Ok(out)
    }
}

/// `n` cut right after positive look-ahead number `target` (numbered in
/// pre-order, outside repetitions and conditionals), which becomes its
/// body; whether it was found.
fn witness(n: &Node, target: usize, counter: &mut usize, nested: bool) -> (Node, bool) {
    match n {
        Node::Group(
            GroupKind::Look {
                behind: false,
                negative: false,
            },
            body,
        ) if !nested => {
            let id = *counter;
            *counter += 1;
            if id == target {
                (Node::Group(GroupKind::NonCapture, body.clone()), true)
            } else {
                (Node::Empty, false)
            }
        }
        Node::Concat(v) => {
            let mut items = Vec::with_capacity(v.len());
            for item in v {
                let (w, found) = witness(item, target, counter, nested);
                items.push(w);
                if found {
                    return (Node::Concat(items), true);
                }
            }
            (Node::Concat(items), false)
        }
        Node::Alt(v) => {
            let mut any = false;
            let items = v
                .iter()
                .map(|b| {
                    let (w, found) = witness(b, target, counter, nested);
                    any |= found;
                    w
                })
                .collect();
            (Node::Alt(items), any)
        }
        Node::Group(k, inner) => {
            let (w, found) = witness(inner, target, counter, nested);
            (Node::Group(k.clone(), Box::new(w)), found)
        }
        Node::Repeat {
            node,
            min,
            max,
            greedy,
            possessive,
        } => {
            let (w, _) = witness(node, target, counter, true);
            (
                Node::Repeat {
                    node: Box::new(w),
                    min: *min,
                    max: *max,
                    greedy: *greedy,
                    possessive: *possessive,
                },
                false,
            )
        }
        other => (other.clone(), false),
    }
}

/// A look-around, for [`Mode::Relaxed`] matching.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Look {
    /// `(?!...)` or `(?<!...)`.
    pub(crate) negative: bool,
    /// For a look-behind, its width (Python's are fixed).
    pub(crate) behind: Option<usize>,
    /// The body, in [`Mode::Exact`] syntax.
    pub(crate) body: String,
}

/// The name of the marker group of look-around `n` in [`Mode::Relaxed`].
pub(crate) fn look_marker(n: usize) -> String {
    format!("__lk{n}")
}

/// The width in characters every match of `n` has, if fixed.
fn fixed_width(n: &Node) -> Option<usize> {
    match n {
        Node::Literal(_) | Node::Dot | Node::Class { .. } => Some(1),
        Node::Escape(c) => Some(usize::from(matches!(c, 'd' | 'D' | 'w' | 'W' | 's' | 'S'))),
        Node::Empty | Node::Start | Node::End | Node::SetFlags(_) => Some(0),
        Node::Group(GroupKind::Look { .. }, _) => Some(0),
        Node::Group(_, inner) => fixed_width(inner),
        Node::Concat(v) => v.iter().map(fixed_width).sum(),
        Node::Alt(v) => {
            let w = fixed_width(v.first()?)?;
            v.iter().all(|n| fixed_width(n) == Some(w)).then_some(w)
        }
        Node::Repeat { node, min, max, .. } if Some(*min) == *max => {
            Some(fixed_width(node)? * *min as usize)
        }
        _ => None,
    }
}

fn regular(n: &Node) -> bool {
    match n {
        Node::Group(GroupKind::Atomic | GroupKind::Look { .. }, _) => false,
        Node::Cond { .. } | Node::Backref(_) => false,
        Node::Repeat {
            possessive: true, ..
        } => false,
        Node::Group(_, inner) => regular(inner),
        Node::Repeat { node, .. } => regular(node),
        Node::Concat(v) | Node::Alt(v) => v.iter().all(regular),
        _ => true,
    }
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    groups: u32,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, k: usize) -> Option<char> {
        self.chars.get(self.pos + k).copied()
    }

    fn starts_with(&self, s: &str) -> bool {
        s.chars()
            .enumerate()
            .all(|(k, c)| self.peek_at(k) == Some(c))
    }

    fn alternation(&mut self, depth: usize) -> Result<Node, String> {
        if depth > 200 {
            return Err("pattern nested too deeply".into());
        }
        let mut alts = vec![self.concat(depth)?];
        while self.peek() == Some('|') {
            self.pos += 1;
            alts.push(self.concat(depth)?);
        }
        Ok(if alts.len() == 1 {
            alts.pop().unwrap_or(Node::Empty)
        } else {
            Node::Alt(alts)
        })
    }

    fn concat(&mut self, depth: usize) -> Result<Node, String> {
        let mut items = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let atom = self.atom(depth)?;
            let atom = self.quantifier(atom)?;
            items.push(atom);
        }
        Ok(match items.len() {
            0 => Node::Empty,
            1 => items.pop().unwrap_or(Node::Empty),
            _ => Node::Concat(items),
        })
    }

    fn quantifier(&mut self, atom: Node) -> Result<Node, String> {
        let mut atom = atom;
        loop {
            let (min, max, len) = match self.peek() {
                Some('*') => (0, None, 1),
                Some('+') => (1, None, 1),
                Some('?') => (0, Some(1), 1),
                Some('{') => match self.counted() {
                    Some(q) => q,
                    None => return Ok(atom),
                },
                _ => return Ok(atom),
            };
            if matches!(
                atom,
                Node::Repeat { .. } | Node::Start | Node::End | Node::Empty | Node::SetFlags(_)
            ) && !matches!(atom, Node::Repeat { .. })
            {
                // Python: "nothing to repeat" for anchors-only atoms is
                // accepted for ^/$; keep them as they are.
            }
            if let Node::Repeat { .. } = atom {
                return Err("multiple repeat (a quantifier after a quantifier)".into());
            }
            self.pos += len;
            let mut greedy = true;
            let mut possessive = false;
            match self.peek() {
                Some('?') => {
                    greedy = false;
                    self.pos += 1;
                }
                Some('+') => {
                    possessive = true;
                    self.pos += 1;
                }
                _ => {}
            }
            if let Some(m) = max {
                if m < min {
                    return Err(format!("bad repetition {{{min},{m}}}"));
                }
            }
            atom = Node::Repeat {
                node: Box::new(atom),
                min,
                max,
                greedy,
                possessive,
            };
            if !matches!(self.peek(), Some('*' | '+' | '?' | '{')) {
                return Ok(atom);
            }
            if self.peek() == Some('{') && self.counted().is_none() {
                return Ok(atom);
            }
        }
    }

    /// `{n}`, `{n,}`, `{n,m}`, `{,m}` at the current position: (min, max,
    /// length); `None` if Python reads the `{` as a literal.
    fn counted(&self) -> Option<(u32, Option<u32>, usize)> {
        let mut k = 1;
        let mut lo = String::new();
        while let Some(c) = self.peek_at(k).filter(char::is_ascii_digit) {
            lo.push(c);
            k += 1;
        }
        let (hi, comma) = if self.peek_at(k) == Some(',') {
            k += 1;
            let mut hi = String::new();
            while let Some(c) = self.peek_at(k).filter(char::is_ascii_digit) {
                hi.push(c);
                k += 1;
            }
            (hi, true)
        } else {
            (String::new(), false)
        };
        if self.peek_at(k) != Some('}') {
            return None;
        }
        if lo.is_empty() && (!comma || hi.is_empty()) {
            return None;
        }
        let min = if lo.is_empty() { 0 } else { lo.parse().ok()? };
        let max = if comma {
            if hi.is_empty() {
                None
            } else {
                Some(hi.parse().ok()?)
            }
        } else {
            Some(min)
        };
        Some((min, max, k + 1))
    }

    fn atom(&mut self, depth: usize) -> Result<Node, String> {
        let Some(c) = self.peek() else {
            return Ok(Node::Empty);
        };
        match c {
            '(' => self.group(depth),
            '[' => self.class(),
            '\\' => self.escape(),
            '.' => {
                self.pos += 1;
                Ok(Node::Dot)
            }
            '^' => {
                self.pos += 1;
                Ok(Node::Start)
            }
            '$' => {
                self.pos += 1;
                Ok(Node::End)
            }
            '*' | '+' | '?' => Err(format!("nothing to repeat before {c:?}")),
            '{' if self.counted().is_some() => Err("nothing to repeat before '{'".into()),
            _ => {
                self.pos += 1;
                Ok(Node::Literal(c))
            }
        }
    }

    fn group(&mut self, depth: usize) -> Result<Node, String> {
        self.pos += 1; // '('
        let kind = if self.peek() != Some('?') {
            self.groups += 1;
            GroupKind::Capture(None, self.groups)
        } else if self.starts_with("?:") {
            self.pos += 2;
            GroupKind::NonCapture
        } else if self.starts_with("?P<")
            || (self.starts_with("?<") && !matches!(self.peek_at(2), Some('=' | '!')))
        {
            self.pos += if self.starts_with("?P<") { 3 } else { 2 };
            let name = self.name('>')?;
            self.groups += 1;
            GroupKind::Capture(Some(name), self.groups)
        } else if self.starts_with("?P=") {
            self.pos += 3;
            let name = self.name(')')?;
            return Ok(Node::Backref(name));
        } else if self.starts_with("?=") || self.starts_with("?!") {
            let negative = self.peek_at(1) == Some('!');
            self.pos += 2;
            GroupKind::Look {
                behind: false,
                negative,
            }
        } else if self.starts_with("?<=") || self.starts_with("?<!") {
            let negative = self.peek_at(2) == Some('!');
            self.pos += 3;
            GroupKind::Look {
                behind: true,
                negative,
            }
        } else if self.starts_with("?>") {
            self.pos += 2;
            GroupKind::Atomic
        } else if self.starts_with("?#") {
            while let Some(c) = self.peek() {
                self.pos += 1;
                if c == ')' {
                    return Ok(Node::Empty);
                }
            }
            return Err("unclosed comment (?#".into());
        } else if self.starts_with("?(") {
            self.pos += 2;
            let cond = self.name(')')?;
            let body = self.alternation(depth + 1)?;
            if self.peek() != Some(')') {
                return Err("unclosed conditional group".into());
            }
            self.pos += 1;
            let (yes, no) = match body {
                Node::Alt(mut v) if v.len() == 2 => {
                    let no = v.pop().unwrap_or(Node::Empty);
                    let yes = v.pop().unwrap_or(Node::Empty);
                    (yes, Some(Box::new(no)))
                }
                Node::Alt(_) => return Err("conditional group with more than two branches".into()),
                other => (other, None),
            };
            return Ok(Node::Cond {
                cond,
                yes: Box::new(yes),
                no,
            });
        } else {
            self.pos += 1; // '?'
            let mut flags = String::new();
            loop {
                let Some(c) = self.peek() else {
                    return Err("unclosed group `(?`".into());
                };
                self.pos += 1;
                match c {
                    ':' => break,
                    ')' => return Ok(Node::SetFlags(flags)),
                    'i' | 'm' | 's' | '-' => flags.push(c),
                    'u' => {}
                    'a' | 'L' | 'x' => {
                        return Err(format!("the regex flag {c:?} is not supported"));
                    }
                    other => return Err(format!("unknown regex flag {other:?}")),
                }
            }
            GroupKind::Flags(flags)
        };
        let inner = self.alternation(depth + 1)?;
        if self.peek() != Some(')') {
            return Err("unbalanced parenthesis: `(` not closed".into());
        }
        self.pos += 1;
        Ok(Node::Group(kind, Box::new(inner)))
    }

    fn name(&mut self, end: char) -> Result<String, String> {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            self.pos += 1;
            if c == end {
                let ok = !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !name.starts_with(|c: char| c.is_ascii_digit())
                    || name.chars().all(|c| c.is_ascii_digit()) && !name.is_empty();
                if !ok {
                    return Err(format!("bad group name {name:?}"));
                }
                return Ok(name);
            }
            name.push(c);
        }
        Err(format!("unterminated group name {name:?}"))
    }

    fn escape(&mut self) -> Result<Node, String> {
        self.pos += 1; // '\\'
        let Some(c) = self.peek() else {
            return Err("trailing backslash".into());
        };
        self.pos += 1;
        Ok(match c {
            'd' | 'D' | 'w' | 'W' | 's' | 'S' | 'b' | 'B' | 'A' | 'Z' => Node::Escape(c),
            '1'..='9' => {
                // Up to two digits: a group number, unless three octal digits.
                let mut n = c.to_string();
                if let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    let octal3 = c <= '7'
                        && d <= '7'
                        && self.peek_at(1).is_some_and(|e| ('0'..='7').contains(&e));
                    if octal3 {
                        let e = self.peek_at(1).unwrap_or('0');
                        self.pos += 2;
                        let v = u32::from_str_radix(&format!("{c}{d}{e}"), 8)
                            .map_err(|e| e.to_string())?;
                        return char::from_u32(v)
                            .map(Node::Literal)
                            .ok_or_else(|| "bad octal escape".to_string());
                    }
                    n.push(d);
                    self.pos += 1;
                }
                Node::Backref(n)
            }
            _ => Node::Literal(self.char_escape(c)?),
        })
    }

    /// The character an escape other than a class or backreference stands
    /// for (`c` is the character after the backslash, already consumed).
    fn char_escape(&mut self, c: char) -> Result<char, String> {
        Ok(match c {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'f' => '\x0c',
            'v' => '\x0b',
            'a' => '\x07',
            '0' => {
                let mut v = 0u32;
                for _ in 0..2 {
                    match self.peek().filter(|d| ('0'..='7').contains(d)) {
                        Some(d) => {
                            v = v * 8 + d.to_digit(8).unwrap_or(0);
                            self.pos += 1;
                        }
                        None => break,
                    }
                }
                char::from_u32(v).ok_or("bad octal escape")?
            }
            'x' | 'u' | 'U' => {
                let n = match c {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                let mut hex = String::new();
                for _ in 0..n {
                    match self.peek().filter(char::is_ascii_hexdigit) {
                        Some(d) => {
                            hex.push(d);
                            self.pos += 1;
                        }
                        None => return Err(format!("incomplete escape \\{c}{hex}")),
                    }
                }
                let v = u32::from_str_radix(&hex, 16).map_err(|e| e.to_string())?;
                char::from_u32(v).ok_or_else(|| format!("bad escape \\{c}{hex}"))?
            }
            'N' => return Err("\\N{...} escapes are not supported".into()),
            c if c.is_ascii_alphanumeric() => return Err(format!("bad escape \\{c}")),
            c => c,
        })
    }

    fn class(&mut self) -> Result<Node, String> {
        self.pos += 1; // '['
        let mut negated = false;
        if self.peek() == Some('^') {
            negated = true;
            self.pos += 1;
        }
        let mut items = Vec::new();
        let mut first = true;
        loop {
            let Some(c) = self.peek() else {
                return Err("unclosed character class `[`".into());
            };
            if c == ']' && !first {
                self.pos += 1;
                break;
            }
            first = false;
            let lo = self.class_atom()?;
            // A range `a-b` (a `-` before `]` is a literal).
            if self.peek() == Some('-') && self.peek_at(1).is_some_and(|c| c != ']') {
                if let ClassItem::Char(a) = lo {
                    self.pos += 1;
                    match self.class_atom()? {
                        ClassItem::Char(b) => {
                            if b < a {
                                return Err(format!("bad character range {a}-{b}"));
                            }
                            items.push(ClassItem::Range(a, b));
                        }
                        ClassItem::Perl(_) | ClassItem::Range(..) => {
                            return Err("bad character range".into())
                        }
                    }
                    continue;
                }
            }
            items.push(lo);
        }
        Ok(Node::Class { negated, items })
    }

    fn class_atom(&mut self) -> Result<ClassItem, String> {
        let Some(c) = self.peek() else {
            return Err("unclosed character class `[`".into());
        };
        self.pos += 1;
        if c != '\\' {
            return Ok(ClassItem::Char(c));
        }
        let Some(e) = self.peek() else {
            return Err("trailing backslash".into());
        };
        self.pos += 1;
        Ok(match e {
            'd' | 'D' | 'w' | 'W' | 's' | 'S' => ClassItem::Perl(e),
            'b' => ClassItem::Char('\x08'),
            '1'..='7' => {
                // Octal in a class.
                let mut v = e.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    match self.peek().filter(|d| ('0'..='7').contains(d)) {
                        Some(d) => {
                            v = v * 8 + d.to_digit(8).unwrap_or(0);
                            self.pos += 1;
                        }
                        None => break,
                    }
                }
                ClassItem::Char(char::from_u32(v).ok_or("bad octal escape")?)
            }
            _ => ClassItem::Char(self.char_escape(e)?),
        })
    }
}

/// Python's `\s` on ASCII: Rust's plus the separators `\x1c`-`\x1f`.
const SPACE: &str = r"\s\x1C-\x1F";

fn push_char(c: char, mode: Mode, out: &mut String) {
    if c.is_ascii() {
        if c.is_ascii_alphanumeric() || c == '_' {
            out.push(c);
        } else {
            let _ = write!(out, r"\x{:02X}", c as u32);
        }
    } else if mode == Mode::Fancy {
        let _ = write!(out, r"\x{{{:X}}}", c as u32);
    } else {
        // Never on an ASCII line: its UTF-8 bytes keep it that way.
        let mut buf = [0u8; 4];
        out.push_str("(?:");
        for b in c.encode_utf8(&mut buf).bytes() {
            let _ = write!(out, r"\x{b:02X}");
        }
        out.push(')');
    }
}

fn emit_class(negated: bool, items: &[ClassItem], mode: Mode, out: &mut String) {
    let ascii_only = mode != Mode::Fancy;
    let mut body = String::new();
    for item in items {
        match *item {
            ClassItem::Char(c) => {
                if c.is_ascii() || !ascii_only {
                    push_class_char(c, &mut body);
                }
            }
            ClassItem::Range(a, b) => {
                if !ascii_only {
                    push_class_char(a, &mut body);
                    body.push('-');
                    push_class_char(b, &mut body);
                } else if a.is_ascii() {
                    push_class_char(a, &mut body);
                    body.push('-');
                    push_class_char(if b.is_ascii() { b } else { '\x7f' }, &mut body);
                }
            }
            ClassItem::Perl('s') => body.push_str(SPACE),
            ClassItem::Perl('S') => body.push_str(r"[\S&&[^\x1C-\x1F]]"),
            ClassItem::Perl(p) => {
                body.push('\\');
                body.push(p);
            }
        }
    }
    if body.is_empty() {
        // Nothing of it can match (ASCII text) / anything can.
        out.push_str(if negated {
            if ascii_only {
                r"[\x00-\xFF]"
            } else {
                r"(?s:.)"
            }
        } else if ascii_only {
            r"[\x80]"
        } else {
            r"[^\x00-\x{10FFFF}]"
        });
        return;
    }
    out.push('[');
    if negated {
        out.push('^');
    }
    out.push_str(&body);
    out.push(']');
}

fn push_class_char(c: char, out: &mut String) {
    if c.is_ascii_alphanumeric() {
        out.push(c);
    } else if c.is_ascii() {
        let _ = write!(out, r"\x{:02X}", c as u32);
    } else {
        let _ = write!(out, r"\x{{{:X}}}", c as u32);
    }
}

/// How to emit: the mode, and whether unnamed groups get names.
struct Ctx {
    mode: Mode,
    name_all: bool,
    /// Each capture group's number and name (a synthetic one if unnamed).
    numbers: Vec<(u32, String)>,
    /// Look-arounds written so far ([`Mode::Relaxed`] markers).
    looks: std::cell::Cell<usize>,
}

impl Ctx {
    /// The name of group number `n` (written as digits).
    fn name_of(&self, n: &str) -> String {
        let n: u32 = n.parse().unwrap_or(0);
        self.numbers
            .iter()
            .find(|(k, _)| *k == n)
            .map_or_else(|| synthetic(n), |(_, name)| name.clone())
    }
}

/// The name given to unnamed group `n` when every group needs one.
fn synthetic(n: u32) -> String {
    format!("__g{n}")
}

fn numbered(n: &Node, out: &mut Vec<(u32, String)>) {
    for_each_capture(n, &mut |name, number| {
        out.push((number, name.cloned().unwrap_or_else(|| synthetic(number))));
    });
}

/// Calls `f` with the name (if any) and number of every capture group of
/// `n`, in pattern order.
fn for_each_capture(n: &Node, f: &mut dyn FnMut(Option<&String>, u32)) {
    match n {
        Node::Group(k, inner) => {
            if let GroupKind::Capture(name, number) = k {
                f(name.as_ref(), *number);
            }
            for_each_capture(inner, f);
        }
        Node::Cond { yes, no, .. } => {
            for_each_capture(yes, f);
            if let Some(no) = no {
                for_each_capture(no, f);
            }
        }
        Node::Repeat { node, .. } => for_each_capture(node, f),
        Node::Concat(v) | Node::Alt(v) => v.iter().for_each(|n| for_each_capture(n, f)),
        _ => {}
    }
}

fn emit(n: &Node, ctx: &Ctx, out: &mut String) -> Result<(), String> {
    let mode = ctx.mode;
    let dfa = matches!(mode, Mode::Dfa { .. });
    let in_content = matches!(mode, Mode::Dfa { in_content: true });
    let irregular =
        |what: &str| -> Result<(), String> { Err(format!("{what} needs the verifying engine")) };
    match n {
        Node::Empty => {}
        Node::Literal(c) => push_char(*c, mode, out),
        Node::Dot => out.push('.'),
        Node::Class { negated, items } => emit_class(*negated, items, mode, out),
        Node::Escape(c) => match c {
            's' => {
                out.push('[');
                out.push_str(SPACE);
                out.push(']');
            }
            'S' => out.push_str(r"[^\s\x1C-\x1F]"),
            'Z' => out.push_str(r"\z"),
            'A' | 'b' | 'B' if in_content => {}
            c => {
                out.push('\\');
                out.push(*c);
            }
        },
        Node::Start => {
            if !in_content {
                out.push('^');
            }
        }
        Node::End => out.push_str("(?m:$)"),
        Node::SetFlags(f) => {
            if !f.is_empty() && f != "-" {
                let _ = write!(out, "(?{f})");
            }
        }
        Node::Group(kind, inner) => {
            match kind {
                GroupKind::Capture(name, number) => {
                    if dfa {
                        out.push_str("(?:");
                    } else if let Some(name) = name {
                        let _ = write!(out, "(?P<{name}>");
                    } else if ctx.name_all {
                        let _ = write!(out, "(?P<{}>", synthetic(*number));
                    } else if mode == Mode::Fancy {
                        out.push('(');
                    } else {
                        // Only named groups carry what fail2ban reports,
                        // and regex-automata's engines cannot refer to a
                        // group by number; a group that captures costs
                        // the backtracker a slot write on every step
                        // through it (`(.*)`: one per byte).
                        out.push_str("(?:");
                    }
                }
                GroupKind::NonCapture => out.push_str("(?:"),
                GroupKind::Flags(f) => {
                    let f = f.trim_end_matches('-');
                    let _ = write!(out, "(?{f}:");
                }
                GroupKind::Atomic => match mode {
                    Mode::Fancy => out.push_str("(?>"),
                    Mode::Dfa { .. } => out.push_str("(?:"),
                    Mode::Exact | Mode::Relaxed => return irregular("an atomic group"),
                },
                GroupKind::Look { behind, negative } => match mode {
                    Mode::Fancy => {
                        out.push_str(match (behind, negative) {
                            (false, false) => "(?=",
                            (false, true) => "(?!",
                            (true, false) => "(?<=",
                            (true, true) => "(?<!",
                        });
                    }
                    // Dropped: the superset does not check it.
                    Mode::Dfa { .. } => return Ok(()),
                    Mode::Relaxed => {
                        let n = ctx.looks.get();
                        ctx.looks.set(n + 1);
                        let _ = write!(out, "(?P<{}>)", look_marker(n));
                        return Ok(());
                    }
                    Mode::Exact => return irregular("look-around"),
                },
            }
            emit(inner, ctx, out)?;
            out.push(')');
        }
        Node::Cond { cond, yes, no } => match mode {
            Mode::Fancy => {
                if cond.chars().all(|c| c.is_ascii_digit()) && ctx.name_all {
                    let _ = write!(out, "(?(<{}>)", ctx.name_of(cond));
                } else if cond.chars().all(|c| c.is_ascii_digit()) {
                    let _ = write!(out, "(?({cond})");
                } else {
                    let _ = write!(out, "(?(<{cond}>)");
                }
                emit(yes, ctx, out)?;
                out.push('|');
                if let Some(no) = no {
                    emit(no, ctx, out)?;
                }
                out.push(')');
            }
            Mode::Dfa { .. } => {
                out.push_str("(?:");
                emit(yes, ctx, out)?;
                out.push('|');
                if let Some(no) = no {
                    emit(no, ctx, out)?;
                }
                out.push(')');
            }
            Mode::Exact | Mode::Relaxed => return irregular("a conditional group"),
        },
        Node::Backref(name) => match mode {
            Mode::Fancy => {
                if name.chars().all(|c| c.is_ascii_digit()) && ctx.name_all {
                    let _ = write!(out, r"\k<{}>", ctx.name_of(name));
                } else if name.chars().all(|c| c.is_ascii_digit()) {
                    let _ = write!(out, r"\{name}");
                } else {
                    let _ = write!(out, r"\k<{name}>");
                }
            }
            Mode::Dfa { .. } => out.push_str("(?s:.*)"),
            Mode::Exact | Mode::Relaxed => return irregular("a backreference"),
        },
        Node::Repeat {
            node,
            min,
            max,
            greedy,
            possessive,
        } => {
            if *possessive && matches!(mode, Mode::Exact | Mode::Relaxed) {
                return irregular("a possessive quantifier");
            }
            out.push_str("(?:");
            emit(node, ctx, out)?;
            out.push(')');
            match (min, max) {
                (0, None) => out.push('*'),
                (1, None) => out.push('+'),
                (0, Some(1)) => out.push('?'),
                (m, None) => {
                    let _ = write!(out, "{{{m},}}");
                }
                (m, Some(x)) if m == x => {
                    let _ = write!(out, "{{{m}}}");
                }
                (m, Some(x)) => {
                    let _ = write!(out, "{{{m},{x}}}");
                }
            }
            if !greedy {
                out.push('?');
            } else if *possessive && mode == Mode::Fancy {
                out.push('+');
            }
        }
        Node::Concat(v) => {
            for n in v {
                emit(n, ctx, out)?;
            }
        }
        Node::Alt(v) => {
            out.push_str("(?:");
            for (i, n) in v.iter().enumerate() {
                if i > 0 {
                    out.push('|');
                }
                emit(n, ctx, out)?;
            }
            out.push(')');
        }
    }
    Ok(())
}

/// Splits a prefregex at its `<F-CONTENT>...</F-CONTENT>` tags (before tag
/// expansion): the text before, the content pattern, the text after.
pub(crate) fn split_content(prefregex: &str) -> Option<(&str, &str, &str)> {
    let open = prefregex.find("<F-CONTENT>")?;
    let body_start = open + "<F-CONTENT>".len();
    let close = body_start + prefregex[body_start..].find("</F-CONTENT>")?;
    Some((
        &prefregex[..open],
        &prefregex[body_start..close],
        &prefregex[close + "</F-CONTENT>".len()..],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(text: &str) -> (String, Option<String>, String) {
        let p = Pattern::parse(text).unwrap();
        (
            p.emit(Mode::Dfa { in_content: false }).unwrap(),
            p.emit(Mode::Exact).ok(),
            p.emit(Mode::Fancy).unwrap(),
        )
    }

    #[test]
    fn tags_as_fail2ban_expands_them() {
        let e = expand_tags(r"from <HOST> user <F-USER>\S+</F-USER> id <F-ID/> </F-NOPE>").unwrap();
        assert!(e.contains("(?P<ip4>") && e.contains("(?P<ip6>") && e.contains("(?P<dns>"));
        assert!(e.contains(r"(?P<user>\S+)"));
        assert!(e.contains(r"(?P<fid>\S+)"));
        assert!(e.ends_with("</F-NOPE>"));
        assert!(expand_tags("<SKIPLINES>").is_err());
        assert!(expand_tags("<SUBNET>").is_err());
        assert_eq!(expand_tags("a <b> <HOSTX> c").unwrap(), "a <b> <HOSTX> c");
    }

    #[test]
    fn only_named_groups_capture_outside_fancy() {
        let (dfa, exact, fancy) = all(r"a(b)(?P<x>c)(d)");
        assert_eq!(dfa, "a(?:b)(?:c)(?:d)");
        assert_eq!(exact.as_deref(), Some("a(?:b)(?P<x>c)(?:d)"));
        // fancy-regex keeps Python's numbering, which references need.
        assert_eq!(fancy, "a(?P<__g1>b)(?P<x>c)(?P<__g3>d)");
    }

    #[test]
    fn every_mode_parses_back() {
        let patterns = [
            r"^%(x)s [^[]*\[(?P<h>\d+)\]: SASL ((?i)LOGIN|PLAIN) failed:(?! lost| x)",
            r"(?:a|b)+? c{2,} d{,3} e{x} f\Z \bg\B$",
            r"^Failed (?P<cond_inv>invalid user )?(?P<user>(?P<cond_user>\S+)|(?(cond_inv)(?:(?! from ).)*?|[^:]+)) from x(?(cond_user): |(?:(?:(?! from ).)*)$)",
            r"(?P<a>\d+) (?P=a) \1 (?>x+) y*+ [\]\-a-z\s\S\w.^] é [é-ü] (?#c)(?s:.)",
        ];
        for p in patterns {
            let p = p.replace("%(x)s", "x");
            let (dfa, exact, fancy) = all(&p);
            regex_automata::meta::Regex::builder()
                .syntax(
                    regex_automata::util::syntax::Config::new()
                        .unicode(false)
                        .utf8(false),
                )
                .build(&dfa)
                .unwrap_or_else(|e| panic!("{dfa}: {e}"));
            if let Some(exact) = exact {
                regex_automata::meta::Regex::builder()
                    .syntax(
                        regex_automata::util::syntax::Config::new()
                            .unicode(false)
                            .utf8(false),
                    )
                    .build(&exact)
                    .unwrap_or_else(|e| panic!("{exact}: {e}"));
            }
            fancy_regex::Regex::new(&fancy).unwrap_or_else(|e| panic!("{fancy}: {e}"));
        }
    }

    #[test]
    fn refusals_and_regularity() {
        assert!(Pattern::parse("(?x)a").is_err());
        assert!(Pattern::parse("a)").is_err());
        assert!(Pattern::parse("(a").is_err());
        assert!(Pattern::parse("[a").is_err());
        assert!(Pattern::parse(r"\q").is_err());
        assert!(Pattern::parse("a**").is_err());
        assert!(Pattern::parse("a(?=b)").unwrap().emit(Mode::Exact).is_err());
        assert!(Pattern::parse("a(?=b)")
            .unwrap()
            .emit(Mode::Dfa { in_content: false })
            .is_ok());
        assert!(Pattern::parse("^a|^b").unwrap().starts_anchored());
        assert!(!Pattern::parse("^a|b").unwrap().starts_anchored());
        assert!(Pattern::parse("(?:(?i)^a)").unwrap().starts_anchored());
        assert_eq!(
            Pattern::parse("(?P<a>x)(?P<b>y)").unwrap().group_names(),
            vec!["a", "b"]
        );
    }

    #[test]
    fn relaxed_lookarounds() {
        let p = Pattern::parse(r"a(?=bc)(?<!x.)d(?! e)").unwrap();
        let looks = p.lookarounds().unwrap();
        assert_eq!(looks.len(), 3);
        assert_eq!(looks[1].behind, Some(2));
        assert!(looks[2].negative);
        assert_eq!(
            p.emit(Mode::Relaxed).unwrap(),
            "a(?P<__lk0>)(?P<__lk1>)d(?P<__lk2>)"
        );
        assert!(Pattern::parse(r"(?:a(?=b))*")
            .unwrap()
            .lookarounds()
            .is_none());
        assert!(Pattern::parse(r"(?<=a+)b").unwrap().lookarounds().is_none());
        assert!(Pattern::parse(r"(?P<x>a)(?P=x)")
            .unwrap()
            .lookarounds()
            .is_none());
        assert_eq!(Pattern::parse("ab").unwrap().lookarounds(), Some(vec![]));
    }

    #[test]
    fn witnesses_cut_after_lookaheads() {
        let p = Pattern::parse(r"^x (?:lost(?! DATA)|disc(?= from \S+ auth=0)|other) y$").unwrap();
        let w = p.witnesses();
        assert_eq!(w.len(), 1);
        let re = regex_automata::meta::Regex::new(&w[0]).unwrap();
        assert!(re.is_match("x disc from a auth=0 y"));
        assert!(!re.is_match("x disc from a ehlo=1"));
        assert!(re.is_match("x other"));
        assert!(Pattern::parse("(?:a(?=b))*")
            .unwrap()
            .witnesses()
            .is_empty());
    }

    #[test]
    fn content_split() {
        assert_eq!(
            split_content("^<F-MLFID>x</F-MLFID><F-CONTENT>.+</F-CONTENT>$"),
            Some(("^<F-MLFID>x</F-MLFID>", ".+", "$"))
        );
        assert_eq!(split_content("^x$"), None);
    }
}
