//! Finding the time in a log file's line, as fail2ban's date detector
//! does: for `banjo check` on files and for fail2ban's sample logs (the
//! journal gives banjo each entry's time directly).
//!
//! fail2ban cuts the date out of the line before matching (its filters'
//! `__prefix_line` is written for the rest), so where the date is matters
//! as much as its value. A template is a pattern with strftime-like
//! fields (`%b %d %H:%M:%S`, fail2ban's `%ExY`, `%k`, ...), `{^LN-BEG}`
//! (at the line's start, after at most two non-word characters),
//! `{DATE}` (every default template in its place), `EPOCH`, `LEPOCH`,
//! `TAI64N`, `{NONE}`. Without `datepattern` the default templates are
//! tried, each first anchored at the line's start: the first anchored one
//! that matches wins, else the unanchored match nearest to the start.
//!
//! The common syslog form (`Dec 14 09:58:37 host ...`) is read by hand,
//! without a regex: it is most of what `banjo check` reads.

use std::fmt::Write as _;
use std::sync::OnceLock;

/// A date found in a line.
#[derive(Clone, Debug, PartialEq)]
pub struct Found {
    /// Byte range to cut out of the line (fail2ban keeps the text before
    /// and after it).
    pub start: usize,
    /// End of that range.
    pub end: usize,
    /// The time as written.
    pub stamp: Stamp,
}

/// A time read from a line.
#[derive(Clone, Debug, PartialEq)]
pub enum Stamp {
    /// Calendar fields; `None` where the line does not say (year, or the
    /// date of a time-only stamp).
    Civil {
        /// Year.
        year: Option<i32>,
        /// Month and day.
        date: Option<(u32, u32)>,
        /// Hour, minute, second.
        time: (u32, u32, u32),
        /// Microseconds.
        micros: u32,
        /// Offset east of UTC in minutes, when the line gives a zone.
        offset: Option<i32>,
    },
    /// Seconds since the epoch (EPOCH, TAI64N).
    Epoch(f64),
}

/// Local civil time: year, month, day, hour, minute, second.
pub type Civil = (i32, u32, u32, u32, u32, u32);

impl Stamp {
    /// The local civil time, completing a missing year or date from `now`
    /// as fail2ban does (last year if the date would be more than a day
    /// ahead; yesterday if a time-only stamp would be in the future).
    /// `None` for epoch stamps and stamps with a zone.
    pub fn civil(&self, now: Civil) -> Option<Civil> {
        let Stamp::Civil {
            year,
            date,
            time,
            offset: None,
            ..
        } = self
        else {
            return None;
        };
        let (h, mi, s) = *time;
        match (year, date) {
            (Some(y), Some((m, d))) => Some((*y, *m, *d, h, mi, s)),
            (None, Some((m, d))) => {
                let this = (now.0, *m, *d, h, mi, s);
                let limit = add_days(now, 1);
                Some(if this > limit {
                    (now.0 - 1, *m, *d, h, mi, s)
                } else {
                    this
                })
            }
            (y, None) => {
                let today = (y.unwrap_or(now.0), now.1, now.2, h, mi, s);
                Some(if today > now {
                    add_days(today, -1)
                } else {
                    today
                })
            }
        }
    }

    /// Seconds since the epoch, reading a stamp without zone as UTC
    /// shifted by `local_offset` seconds, and completing it from `now`.
    pub fn epoch(&self, now: Civil, local_offset: i64) -> Option<f64> {
        match self {
            Stamp::Epoch(e) => Some(*e),
            Stamp::Civil {
                year,
                date,
                time,
                micros,
                offset: Some(off),
            } => {
                let (y, (m, d)) = (year.unwrap_or(now.0), date.unwrap_or((now.1, now.2)));
                let days = days_from_civil(y, m, d);
                let secs = days * 86400
                    + i64::from(time.0) * 3600
                    + i64::from(time.1) * 60
                    + i64::from(time.2)
                    - i64::from(*off) * 60;
                Some(secs as f64 + f64::from(*micros) / 1e6)
            }
            Stamp::Civil { micros, .. } => {
                let c = self.civil(now)?;
                let days = days_from_civil(c.0, c.1, c.2);
                let secs =
                    days * 86400 + i64::from(c.3) * 3600 + i64::from(c.4) * 60 + i64::from(c.5)
                        - local_offset;
                Some(secs as f64 + f64::from(*micros) / 1e6)
            }
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    ((y + i64::from(m <= 2)) as i32, m, d)
}

fn add_days(c: Civil, n: i64) -> Civil {
    let (y, m, d) = civil_from_days(days_from_civil(c.0, c.1, c.2) + n);
    (y, m, d, c.3, c.4, c.5)
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const MONTHS_FULL: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const DAYS_FULL: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// The regex of one `%` field.
fn field(name: &str) -> Option<String> {
    let alt = |g: &str, words: &[&str]| format!("(?P<{g}>{})", words.join("|"));
    Some(match name {
        "a" => alt("a", &DAYS),
        "A" => alt("A", &DAYS_FULL),
        "b" => alt("b", &MONTHS),
        "B" => alt("B", &MONTHS_FULL),
        "d" => r"(?P<d>[1-2]\d|[0 ]?[1-9]|3[0-1])".into(),
        "Exd" => r"(?P<d>[1-2]\d|0[1-9]|3[0-1])".into(),
        "f" => r"(?P<f>[0-9]{1,6})".into(),
        "H" => r"(?P<H>[0-1]?\d|2[0-3])".into(),
        "ExH" => r"(?P<H>[0-1]\d|2[0-3])".into(),
        "k" => r" ?(?P<H>[0-2]?\d)".into(),
        "Exk" => r" ?(?P<H>[0-1]?\d|2[0-3])".into(),
        "I" => r"(?P<I>1[0-2]|0[1-9]|[1-9])".into(),
        "l" => r" ?(?P<I>1?\d)".into(),
        "Exl" => r" ?(?P<I>1[0-2]|\d)".into(),
        "j" => r"(?P<j>36[0-6]|3[0-5]\d|[12]\d\d|0[1-9]\d|00[1-9]|[1-9]\d|0[1-9]|[1-9])".into(),
        "m" => r"(?P<m>0?[1-9]|1[0-2])".into(),
        "Exm" => r"(?P<m>0[1-9]|1[0-2])".into(),
        "M" => r"(?P<M>[0-5]?\d)".into(),
        "ExM" => r"(?P<M>[0-5]\d)".into(),
        "p" => r"(?P<p>am|pm)".into(),
        "S" => r"(?P<S>[0-5]?\d|6[0-1])".into(),
        "ExS" => r"(?P<S>[0-5]\d|6[0-1])".into(),
        "U" => r"(?P<U>5[0-3]|[0-4]\d|\d)".into(),
        "W" => r"(?P<W>5[0-3]|[0-4]\d|\d)".into(),
        "w" => r"(?P<w>[0-6])".into(),
        "y" | "Exy" => r"(?P<y>\d\d)".into(),
        "Y" => r"(?P<Y>\d\d\d\d)".into(),
        // The years fail2ban accepts in unanchored patterns: this century.
        "ExY" => r"(?P<Y>20\d\d)".into(),
        "z" => r"(?P<z>Z|UTC|GMT|[+-][01]\d(?::?\d{2})?)".into(),
        "Z" => r"(?P<Z>Z|[A-Z]{3,5})".into(),
        "Exz" => {
            r"(?P<z>(?:[A-Z](?:[A-Z]{2,4})?)?[+-][01]\d(?::?\d{2})?|[A-Z](?:[A-Z]{2,4})?)".into()
        }
        "ExZ" => r"(?P<Z>[A-Z](?:[A-Z]{2,4})?)".into(),
        _ => return None,
    })
}

/// The field names `%` may introduce, longest first.
const FIELD_NAMES: &[&str] = &[
    "Exd", "ExH", "Exk", "Exl", "Exm", "ExM", "ExS", "Exy", "ExY", "Exz", "ExZ", "a", "A", "b",
    "B", "d", "f", "H", "I", "j", "k", "l", "m", "M", "p", "S", "U", "w", "W", "y", "Y", "z", "Z",
];

/// fail2ban's default templates, in its order.
const DEFAULTS: &[&str] = &[
    r"%ExY(?P<_sep>[-/.])%m(?P=_sep)%d(?:T|  ?)%H:%M:%S(?:[.,]%f)?(?:\s*%z)?",
    r"(?:%a )?%b %d %k:%M:%S(?:\.%f)?(?: %ExY)?",
    r"(?:%a )?%b %d %ExY %k:%M:%S(?:\.%f)?",
    r"%d(?P<_sep>[-/])%m(?P=_sep)(?:%ExY|%Exy) %k:%M:%S",
    r"%d(?P<_sep>[-/])%b(?P=_sep)%ExY[ :]?%H:%M:%S(?:\.%f)?(?: %z)?",
    r"%m/%d/%ExY:%H:%M:%S",
    r"%m-%d-%ExY %k:%M:%S(?:\.%f)?",
    "EPOCH",
    r"{^LN-BEG}%H:%M:%S",
    r"^<%m/%d/%Exy@%H:%M:%S>",
    r"%Exy%Exm%Exd  ?%H:%M:%S",
    r"%b %d, %ExY %I:%M:%S %p",
    r"^%b-%d-%Exy %k:%M:%S",
    r"%ExY%Exm%Exd(?:T|  ?)%ExH%ExM%ExS(?:[.,]%f)?(?:\s*%z)?",
    r"(?:%Z )?(?:%a )?%b %d %k:%M:%S(?:\.%f)?(?: %ExY)?",
    r"(?:%z )?(?:%a )?%b %d %k:%M:%S(?:\.%f)?(?: %ExY)?",
    "TAI64N",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Fields,
    Epoch { long: bool },
    Tai64n,
}

/// One template. fail2ban's defaults are some fifty regexes with
/// look-arounds, and most logs only ever need the first (or the
/// hand-written syslog reader): each is compiled when a line first
/// needs it, which takes tens of milliseconds off every start.
#[derive(Debug)]
struct Template {
    text: String,
    regex: OnceLock<Option<fancy_regex::Regex>>,
    kind: Kind,
    /// Anchored at the line's start (or end): a match wins at once.
    anchored: bool,
    /// Group holding the epoch value.
    value_group: usize,
}

/// Expands `%` fields and returns the regex text (without boundaries).
fn expand_fields(pattern: &str) -> Result<(String, bool), String> {
    let mut out = String::new();
    let mut alpha = false;
    let mut rest = pattern;
    while let Some(p) = rest.find('%') {
        out.push_str(&rest[..p]);
        rest = &rest[p + 1..];
        if let Some(r) = rest.strip_prefix('%') {
            out.push('%');
            rest = r;
            continue;
        }
        let Some(name) = FIELD_NAMES.iter().find(|n| rest.starts_with(**n)) else {
            return Err(format!(
                "unknown date field %{}",
                rest.chars().next().unwrap_or(' ')
            ));
        };
        if matches!(*name, "a" | "A" | "b" | "B" | "p") {
            alpha = true;
        }
        out.push_str(&field(name).unwrap_or_default());
        rest = &rest[name.len()..];
    }
    out.push_str(rest);
    Ok((out, alpha))
}

/// Builds a template the way fail2ban's `DateTemplate.setRegex` does:
/// a group around the date unless the pattern has one, word boundaries
/// around it unless it is anchored or says `**`/`{UNB}`.
fn build(pattern: &str) -> Result<Template, String> {
    let mut p = pattern.trim();
    let mut word_begin = true;
    let mut word_end = true;
    let mut start = false;
    if let Some(r) = p.strip_prefix("{UNB}") {
        p = r;
        word_begin = false;
        word_end = false;
    }
    if let Some(r) = p.strip_prefix("{^LN-BEG}") {
        p = r;
        start = true;
    }
    let upper = p.to_ascii_uppercase();
    if upper == "EPOCH" || upper == "LEPOCH" {
        let long = upper == "LEPOCH";
        let value = if long {
            r"\d{10,11}(?:\d{3}(?:\.\d{1,6}|\d{3})?)?"
        } else {
            r"\d{10,11}\b(?:\.\d{3,6})?"
        };
        let text = if start {
            format!(r"^(?:\W{{0,2}})?((?P<square>(?<=^\[))?{value})(?(<square>)(?=\]))(?=\b|\W|$)")
        } else {
            format!(
                r"((?:^|(?P<square>(?<=^\[))|(?P<selinux>(?<=\baudit\()))({value}))(?:(?(<selinux>)(?=:\d+\)))|(?(<square>)(?=\])))(?=\b|\W|$)"
            )
        };
        return Ok(Template {
            text,
            regex: OnceLock::new(),
            kind: Kind::Epoch { long },
            anchored: start,
            value_group: 1,
        });
    }
    if upper == "TAI64N" {
        let text = if start {
            r"^(?:\W{0,2})?(@[0-9a-f]{24})(?=\b|\W|$)"
        } else {
            r"(?=^|\b|\W)(@[0-9a-f]{24})(?=\b|\W|$)"
        };
        return Ok(Template {
            text: text.to_string(),
            regex: OnceLock::new(),
            kind: Kind::Tai64n,
            anchored: start,
            value_group: 1,
        });
    }
    let (mut regex, alpha) = expand_fields(p)?;
    let begins_anchored =
        regex.starts_with('^') || regex.starts_with("(?:^") || regex.starts_with("**");
    let ends_bounded = regex.ends_with('$')
        || regex.ends_with("$)")
        || regex.ends_with(r"\b")
        || regex.ends_with(r"\s")
        || regex.ends_with("**");
    let bound_begin = word_begin && !begins_anchored;
    let bound_end = word_end && !ends_bounded;
    if !has_plain_group(&regex) {
        // Group the body, leaving a leading `^` and a trailing `$` out.
        let (lead, body) = match regex.strip_prefix('^') {
            Some(b) => ("^", b.to_string()),
            None => ("", regex.clone()),
        };
        let (body, tail) = match body.strip_suffix('$') {
            Some(b) => (b.to_string(), "$"),
            None => (body, ""),
        };
        regex = format!("{lead}({body}){tail}");
    }
    let mut anchored = false;
    if bound_begin {
        if start {
            regex = format!(r"^(?:\W{{0,2}})?{regex}");
            anchored = true;
        } else {
            regex = format!(r"(?=^|\b|\W){regex}");
        }
    }
    if bound_end {
        regex.push_str(r"(?=\b|\W|$)");
    }
    if regex.starts_with('^') || regex.starts_with("(?:^") || regex.ends_with('$') {
        anchored = true;
    }
    let regex = regex.replace("**", "");
    let mut text = String::new();
    if alpha {
        text.push_str("(?i)");
    }
    let _ = write!(text, "{regex}");
    Ok(Template {
        text,
        regex: OnceLock::new(),
        kind: Kind::Fields,
        anchored,
        value_group: 1,
    })
}

/// [`build`], compiled at once: for a `datepattern` a user wrote, whose
/// errors belong at load time.
fn build_checked(pattern: &str) -> Result<Template, String> {
    let t = build(pattern)?;
    let regex = fancy_regex::Regex::new(&t.text).map_err(|e| format!("{pattern:?}: {e}"))?;
    let _ = t.regex.set(Some(regex));
    Ok(t)
}

impl Template {
    /// The compiled regex (`None`: it does not compile, which the tests
    /// rule out for the built-in templates).
    fn regex(&self) -> Option<&fancy_regex::Regex> {
        self.regex
            .get_or_init(|| fancy_regex::Regex::new(&self.text).ok())
            .as_ref()
    }
}

/// Whether the regex has a capturing group of its own (not `(?`, not
/// escaped).
fn has_plain_group(re: &str) -> bool {
    let b = re.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'(' if b.get(i + 1) != Some(&b'?') => return true,
            _ => i += 1,
        }
    }
    false
}

/// Finds dates in lines: fail2ban's `DateDetector`.
#[derive(Debug)]
pub struct DateDetector {
    templates: Vec<Template>,
    /// Whether the hand-written syslog reader may answer first.
    syslog_fast: bool,
    none: bool,
}

impl DateDetector {
    /// The detector for a filter's `datepattern` (`None`: the defaults).
    pub fn new(datepattern: Option<&str>) -> Result<DateDetector, String> {
        let mut templates = Vec::new();
        let mut syslog_fast = false;
        let mut none = false;
        let lines: Vec<&str> = match datepattern {
            Some(p) => p
                .split('\n')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect(),
            None => vec!["{DEFAULT}"],
        };
        for line in lines {
            let upper = line.to_ascii_uppercase();
            if upper == "{DEFAULT}" || upper == "{^LN-BEG}" {
                syslog_fast |= templates.is_empty();
                // Anchored variants first, then (for DEFAULT) the rest.
                for d in DEFAULTS {
                    if d.starts_with('^') || d.starts_with("{^LN-BEG}") {
                        continue;
                    }
                    templates.push(build(&format!("{{^LN-BEG}}{d}"))?);
                }
                for d in DEFAULTS {
                    let t = build(d)?;
                    if upper == "{DEFAULT}" || t.anchored {
                        templates.push(t);
                    }
                }
            } else if upper == "{NONE}" {
                none = true;
            } else if line.contains("{DATE}") {
                for d in DEFAULTS {
                    if matches!(*d, "EPOCH" | "TAI64N") {
                        continue;
                    }
                    let inner = d.trim_start_matches("{^LN-BEG}").trim_start_matches('^');
                    templates.push(build_checked(&line.replace("{DATE}", inner))?);
                }
            } else {
                templates.push(build_checked(line)?);
            }
        }
        Ok(DateDetector {
            templates,
            syslog_fast,
            none,
        })
    }

    /// Finds the date in `line`.
    pub fn find(&self, line: &str) -> Option<Found> {
        if self.none {
            return None;
        }
        if self.syslog_fast {
            if let Some(f) = syslog(line) {
                return Some(f);
            }
        }
        let mut best: Option<Found> = None;
        for t in &self.templates {
            let Some(Ok(Some(caps))) = t.regex().map(|r| r.captures(line).map_err(drop)) else {
                continue;
            };
            let Some(found) = stamp(t, &caps) else {
                continue;
            };
            if t.anchored || found.start <= 1 {
                return Some(found);
            }
            if best.as_ref().map_or(true, |b| found.start < b.start) {
                best = Some(found);
            }
        }
        best
    }
}

fn stamp(t: &Template, caps: &fancy_regex::Captures<'_>) -> Option<Found> {
    let g = caps.get(t.value_group)?;
    let stamp = match t.kind {
        Kind::Epoch { long } => {
            let v = caps
                .iter()
                .skip(1)
                .flatten()
                .map(|m| m.as_str())
                .find(|s| s.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
            let mut e: f64 = v.parse().ok()?;
            if long && v.len() >= 13 {
                e /= if v.len() >= 16 && !v.contains('.') {
                    1e6
                } else {
                    1e3
                };
            }
            Stamp::Epoch(e)
        }
        Kind::Tai64n => {
            let hex = g.as_str().get(2..17)?;
            Stamp::Epoch(i64::from_str_radix(hex, 16).ok()? as f64)
        }
        Kind::Fields => fields_stamp(caps)?,
    };
    Some(Found {
        start: g.start(),
        end: g.end(),
        stamp,
    })
}

fn fields_stamp(caps: &fancy_regex::Captures<'_>) -> Option<Stamp> {
    let get = |n: &str| caps.name(n).map(|m| m.as_str().trim());
    let num = |n: &str| get(n).and_then(|s| s.parse::<u32>().ok());
    let mut year = get("Y").and_then(|s| s.parse::<i32>().ok());
    if year.is_none() {
        year = get("y")
            .and_then(|s| s.parse::<i32>().ok())
            .map(|y| y + 2000);
    }
    let month = num("m").or_else(|| {
        let b = get("b").or_else(|| get("B"))?.to_ascii_lowercase();
        MONTHS
            .iter()
            .position(|m| b.starts_with(m))
            .map(|i| i as u32 + 1)
    });
    let day = num("d");
    let mut hour = num("H").unwrap_or(0);
    if let Some(h12) = num("I") {
        let pm = get("p").is_some_and(|p| p.eq_ignore_ascii_case("pm"));
        hour = match (h12, pm) {
            (12, false) => 0,
            (12, true) => 12,
            (h, true) => h + 12,
            (h, false) => h,
        };
    }
    let micros = get("f")
        .map(|f| {
            let mut s = f.to_string();
            s.truncate(6);
            while s.len() < 6 {
                s.push('0');
            }
            s.parse().unwrap_or(0)
        })
        .unwrap_or(0);
    let offset = get("z").or_else(|| get("Z")).and_then(zone_offset);
    let date = match (month, day) {
        (Some(m), Some(d)) if (1..=12).contains(&m) && (1..=31).contains(&d) => Some((m, d)),
        (None, None) => None,
        _ => return None,
    };
    Some(Stamp::Civil {
        year,
        date,
        time: (hour, num("M").unwrap_or(0), num("S").unwrap_or(0)),
        micros,
        offset,
    })
}

/// A zone as fail2ban reads it: `Z`, `UTC`, `GMT`, an abbreviation,
/// `[ABBR]+hh`, `+hhmm`, `+hh:mm`: minutes east of UTC.
fn zone_offset(z: &str) -> Option<i32> {
    let at = z.find(['+', '-']).unwrap_or(z.len());
    let (abbr, off) = z.split_at(at);
    let base = if abbr.is_empty() {
        0
    } else {
        ZONES.iter().find(|(n, _)| *n == abbr).map(|(_, m)| *m)?
    };
    if off.is_empty() {
        return Some(base);
    }
    let sign = if off.starts_with('-') { -1 } else { 1 };
    let digits: String = off[1..].chars().filter(char::is_ascii_digit).collect();
    let (h, m) = match digits.len() {
        1 | 2 => (digits.parse::<i32>().ok()?, 0),
        4 => (
            digits[..2].parse::<i32>().ok()?,
            digits[2..].parse::<i32>().ok()?,
        ),
        _ => return None,
    };
    Some(base + sign * (h * 60 + m))
}

/// Zone abbreviations and their offsets east of UTC, in minutes (fixed:
/// an abbreviation names standard or summer time itself).
const ZONES: &[(&str, i32)] = &[
    ("Z", 0),
    ("UTC", 0),
    ("GMT", 0),
    ("UT", 0),
    ("WET", 0),
    ("WEST", 60),
    ("BST", 60),
    ("CET", 60),
    ("CEST", 120),
    ("MET", 60),
    ("MEST", 120),
    ("EET", 120),
    ("EEST", 180),
    ("MSK", 180),
    ("MSD", 240),
    ("CAT", 120),
    ("EAT", 180),
    ("SAST", 120),
    ("WAT", 60),
    ("IST", 330),
    ("PKT", 300),
    ("ICT", 420),
    ("WIB", 420),
    ("HKT", 480),
    ("SGT", 480),
    ("AWST", 480),
    ("PHT", 480),
    ("MYT", 480),
    ("JST", 540),
    ("KST", 540),
    ("ACST", 570),
    ("ACDT", 630),
    ("AEST", 600),
    ("AEDT", 660),
    ("NZST", 720),
    ("NZDT", 780),
    ("HST", -600),
    ("AKST", -540),
    ("AKDT", -480),
    ("PST", -480),
    ("PDT", -420),
    ("MST", -420),
    ("MDT", -360),
    ("CST", -360),
    ("CDT", -300),
    ("EST", -300),
    ("EDT", -240),
    ("AST", -240),
    ("ADT", -180),
    ("NST", -210),
    ("NDT", -150),
    ("BRT", -180),
    ("ART", -180),
];

/// The syslog form at the line's start, read by hand:
/// `[Www ]Mmm [d]d HH:MM:SS[.f][ YYYY]`, after at most two non-word
/// characters, followed by a non-word character or the end (fail2ban's
/// second default template, anchored).
fn syslog(line: &str) -> Option<Found> {
    let b = line.as_bytes();
    let mut i = 0;
    while i < 2
        && b.get(i)
            .is_some_and(|c| !c.is_ascii_alphanumeric() && *c != b'_' && c.is_ascii())
    {
        i += 1;
    }
    let start = i;
    let is = |at: usize, name: &str| {
        b.get(at..at + 3)
            .is_some_and(|w| w.eq_ignore_ascii_case(name.as_bytes()))
    };
    // Optional weekday.
    if DAYS.iter().any(|d| is(i, d)) && b.get(i + 3) == Some(&b' ') {
        i += 4;
    }
    let month = MONTHS.iter().position(|m| is(i, m))? as u32 + 1;
    i += 3;
    if b.get(i) != Some(&b' ') {
        return None;
    }
    i += 1;
    // Day: "dd", " d", "d", "0d".
    if b.get(i) == Some(&b' ') {
        i += 1;
    }
    let (day, n) = digits(b, i, 2)?;
    i += n;
    if !(1..=31).contains(&day) || b.get(i) != Some(&b' ') {
        return None;
    }
    i += 1;
    if b.get(i) == Some(&b' ') {
        i += 1;
    }
    let (h, n) = digits(b, i, 2)?;
    i += n;
    let (mi, n) = colon_digits(b, i)?;
    i += n;
    let (s, n) = colon_digits(b, i)?;
    i += n;
    if h > 23 || mi > 59 || s > 61 {
        return None;
    }
    let mut micros = 0;
    if b.get(i) == Some(&b'.') {
        if let Some((f, n)) = digits(b, i + 1, 6) {
            micros = f * 10u32.pow(6 - n as u32);
            i += 1 + n;
        }
    }
    let mut year = None;
    if b.get(i) == Some(&b' ') && b.get(i + 1..i + 3) == Some(b"20") {
        if let Some((y, 4)) = digits(b, i + 1, 4) {
            if !b
                .get(i + 5)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
            {
                year = Some(y as i32);
                i += 5;
            }
        }
    }
    if b.get(i)
        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
    {
        return None;
    }
    Some(Found {
        start,
        end: i,
        stamp: Stamp::Civil {
            year,
            date: Some((month, day)),
            time: (h, mi, s),
            micros,
            offset: None,
        },
    })
}

/// Up to `max` decimal digits at `at`: value and count (at least one).
fn digits(b: &[u8], at: usize, max: usize) -> Option<(u32, usize)> {
    let mut v = 0u32;
    let mut n = 0;
    while n < max {
        match b.get(at + n) {
            Some(c) if c.is_ascii_digit() => {
                v = v * 10 + u32::from(c - b'0');
                n += 1;
            }
            _ => break,
        }
    }
    (n > 0).then_some((v, n))
}

fn colon_digits(b: &[u8], at: usize) -> Option<(u32, usize)> {
    if b.get(at) != Some(&b':') {
        return None;
    }
    let (v, n) = digits(b, at + 1, 2)?;
    Some((v, n + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Civil = (2005, 8, 14, 12, 0, 0);

    fn civil(d: &DateDetector, line: &str) -> (String, Option<Civil>) {
        let f = d
            .find(line)
            .unwrap_or_else(|| panic!("no date in {line:?}"));
        let cut = format!("{}{}", &line[..f.start], &line[f.end..]);
        (cut, f.stamp.civil(NOW))
    }

    #[test]
    fn syslog_and_defaults() {
        let d = DateDetector::new(None).unwrap();
        let (cut, t) = civil(&d, "Dec 14 09:58:37 email postfix/smtpd[22095]: connect");
        assert_eq!(cut, " email postfix/smtpd[22095]: connect");
        assert_eq!(t, Some((2004, 12, 14, 9, 58, 37)));
        let (cut, t) = civil(&d, "2005-08-14 11:22:33 x");
        assert_eq!(cut, " x");
        assert_eq!(t, Some((2005, 8, 14, 11, 22, 33)));
        let (cut, _) = civil(&d, "[Sun Jul 28 21:41:20 2013] [error] [client 1.2.3.4]");
        assert_eq!(cut, "[] [error] [client 1.2.3.4]");
        let (cut, t) = civil(
            &d,
            r#"192.0.2.1 - - [10/Aug/2005:10:59:59 +0000] "GET / HTTP/1.1""#,
        );
        assert_eq!(cut, r#"192.0.2.1 - - [] "GET / HTTP/1.1""#);
        assert_eq!(t, None);
        let f = d.find("1124013600 x").unwrap();
        assert_eq!(f.stamp, Stamp::Epoch(1_124_013_600.0));
        assert_eq!(
            d.find("@400000004fd0bfee11ad5f04 x").map(|f| f.start),
            Some(0)
        );
        assert_eq!(d.find("nothing here"), None);
    }

    #[test]
    fn every_default_template_compiles() {
        let d = DateDetector::new(None).unwrap();
        assert!(d.templates.len() > 20, "{} templates", d.templates.len());
        for t in &d.templates {
            assert!(t.regex().is_some(), "{:?} does not compile", t.text);
        }
    }

    #[test]
    fn custom_patterns() {
        let d = DateDetector::new(Some(r"^%m/%d/%Y %H:%M:%S")).unwrap();
        let (cut, t) = civil(&d, "08/14/2005 11:00:00 x");
        assert_eq!((cut.as_str(), t), (" x", Some((2005, 8, 14, 11, 0, 0))));
        let d = DateDetector::new(Some(r"^[^\[]*\[({DATE})")).unwrap();
        let (cut, _) = civil(&d, "host [14/Aug/2005:11:00:00 +0200] rest");
        assert_eq!(cut, "host [] rest");
        let d = DateDetector::new(Some("{^LN-BEG}")).unwrap();
        assert!(d.find("x Dec 14 09:58:37").is_none());
    }

    #[test]
    fn calendar() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(days_from_civil(2004, 2, 29)), (2004, 2, 29));
        assert_eq!(add_days((2005, 1, 1, 0, 0, 0), -1), (2004, 12, 31, 0, 0, 0));
    }
}
