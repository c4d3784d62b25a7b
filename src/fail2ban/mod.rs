//! fail2ban compatibility: reading fail2ban's filter files (and, for
//! `banjo import`, its jail files) the way fail2ban reads them.
//!
//! `filter = "NAME[key=value, ...]"` in banjo.toml resolves here when NAME
//! is not one of banjo's built-in filters. The filter is read as fail2ban's
//! `FilterReader` reads it: `filter.d/NAME.conf`, `NAME.d/*.conf`,
//! `NAME.local`, `NAME.d/*.local`, each with its `[INCLUDES]` (usually
//! `common.conf`, whose `__prefix_line` and friends most filters use); the
//! `[Definition]` options interpolated with the arguments as variables;
//! `[Init]` values as defaults for the arguments; then fail2ban's `<tag>`
//! substitution (`<mode>`, nested `<mdre-<mode>>`,
//! `<lt_<logtype>/__prefix_line>`, ...). `logtype` defaults to `journal`,
//! as for fail2ban's systemd backend: banjo reads the journal.
//!
//! The regex tags (`<HOST>`, `<F-USER>`, ...) are left for the filter
//! module, which expands them as fail2ban does and matches the line
//! fail2ban's journal backend builds ([`crate::jail::FilterInput::Fail2banLine`]).
//!
//! What banjo cannot do is refused here or when the filter is compiled,
//! never silently changed: multi-line buffering (`maxlines` above 1,
//! `<SKIPLINES>`), an unknown tag, a missing include, an interpolation
//! loop. Each error names the file and line.

pub mod date;
mod ini;
pub mod jails;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::jail::FilterInput;

pub use self::ini::{Ini, IniError, Origin};
use self::ini::{Value, Vars};

/// A fail2ban filter resolved to what a jail needs.
#[derive(Debug, Clone)]
pub struct ImportedFilter {
    /// The failregexes, in fail2ban's dialect (Python regex with fail2ban's
    /// `<HOST>`-style tags). When the filter has a `prefregex`, the first
    /// entry carries it, marked with [`crate::filter::PREFREGEX_MARK`], so
    /// that it reaches the filter through `Jail::failregex`.
    pub failregex: Vec<String>,
    /// The ignoreregexes, same dialect.
    pub ignoreregex: Vec<String>,
    /// `journalmatch` (from `[Init]` or `[Definition]`) as words, `+`
    /// between alternatives; `None` if the filter has none.
    pub journalmatch: Option<Vec<String>>,
    /// What the regexes match against.
    pub input: FilterInput,
}

impl ImportedFilter {
    /// The prefregex, if the filter has one.
    pub fn prefregex(&self) -> Option<&str> {
        self.failregex
            .first()
            .and_then(|f| f.strip_prefix(crate::filter::PREFREGEX_MARK))
    }

    /// The failregexes without the prefregex entry.
    pub fn failregexes(&self) -> &[String] {
        let skip = usize::from(self.prefregex().is_some());
        self.failregex.get(skip..).unwrap_or(&[])
    }
}

/// A filter file as read, with what only log files need.
#[derive(Debug, Clone)]
pub struct FilterFile {
    /// What a jail needs.
    pub filter: ImportedFilter,
    /// `datepattern`, to find the time in a log file's lines.
    pub datepattern: Option<String>,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
}

/// Why a fail2ban filter (or jail file) could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(IniError);

impl Error {
    fn plain(reason: impl Into<String>) -> Error {
        Error(IniError {
            origin: None,
            reason: reason.into(),
        })
    }

    /// Where the problem is, when a file is to blame.
    pub fn origin(&self) -> Option<&Origin> {
        self.0.origin.as_ref()
    }

    /// What is wrong, without the place.
    pub fn reason(&self) -> &str {
        &self.0.reason
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Error {}

impl From<IniError> for Error {
    fn from(e: IniError) -> Error {
        Error(e)
    }
}

/// The options fail2ban's `FilterReader` reads from `[Definition]`.
const FILTER_OPTIONS: &[&str] = &[
    "usedns",
    "prefregex",
    "ignoreregex",
    "failregex",
    "maxlines",
    "datepattern",
    "journalmatch",
];

/// fail2ban's limit on replacements of one tag inside one value.
const MAX_TAG_REPLACE: usize = 25;

/// Tags the regex layer (not the configuration) resolves.
fn is_regex_tag(name: &str) -> bool {
    let bare = name.trim_start_matches('/').trim_end_matches('/');
    matches!(
        bare,
        "HOST" | "ADDR" | "IP4" | "IP6" | "DNS" | "CIDR" | "SUBNET" | "SKIPLINES"
    ) || bare.strip_prefix("F-").is_some_and(|n| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || c == '-')
    })
}

/// Builds the line fail2ban's systemd backend matches for a journal entry
/// (its `formatJournalEntry`) into `out`: `_HOSTNAME`, then
/// `SYSLOG_IDENTIFIER` (else `_COMM`) with `[SYSLOG_PID]` (else `[_PID]`)
/// and a colon, then MESSAGE, separated by spaces; each part only if
/// present and not empty. For `kernel:` the monotonic time follows as
/// `[seconds.micros]`. A newline in MESSAGE becomes the two characters
/// `\n`, as fail2ban writes it. `out` is cleared first.
pub fn journal_line(
    out: &mut Vec<u8>,
    hostname: Option<&[u8]>,
    ident: Option<&[u8]>,
    pid: Option<&[u8]>,
    kernel_monotonic_usec: Option<u64>,
    message: &[u8],
) {
    out.clear();
    fn present(v: Option<&[u8]>) -> Option<&[u8]> {
        v.filter(|v| !v.is_empty())
    }
    if let Some(h) = present(hostname) {
        out.extend_from_slice(h);
    }
    if let Some(i) = present(ident) {
        if !out.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(i);
        if let Some(p) = present(pid) {
            out.push(b'[');
            // fail2ban prints a number as a number (`int(v, 0)`).
            match std::str::from_utf8(p)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
            {
                Some(n) => out.extend_from_slice(n.to_string().as_bytes()),
                None => out.extend_from_slice(p),
            }
            out.push(b']');
        }
        out.push(b':');
        if i == b"kernel" && present(pid).is_none() {
            if let Some(us) = kernel_monotonic_usec {
                let text = format!(" [{:12.6}]", us as f64 / 1e6);
                out.extend_from_slice(text.as_bytes());
            }
        }
    }
    if !out.is_empty() {
        out.push(b' ');
    }
    for &b in message {
        if b == b'\n' {
            out.extend_from_slice(b"\\n");
        } else {
            out.push(b);
        }
    }
}

/// Splits `name[key=value, key2="a, b"]` (fail2ban's `extractOptions`).
pub fn parse_spec(spec: &str) -> Result<(String, Vec<(String, String)>), String> {
    let spec = spec.trim();
    let Some(open) = spec.find('[') else {
        if spec.is_empty() {
            return Err("empty name".into());
        }
        return Ok((spec.to_string(), Vec::new()));
    };
    let name = spec[..open].trim().to_string();
    if name.is_empty() {
        return Err(format!("{spec:?}: no name before '['"));
    }
    let body = spec[open + 1..]
        .trim_end()
        .strip_suffix(']')
        .ok_or_else(|| format!("{spec:?}: '[' without closing ']'"))?;
    let mut args = Vec::new();
    let chars: Vec<char> = body.chars().collect();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while chars.get(*i).is_some_and(|c| c.is_whitespace()) {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= chars.len() {
            break;
        }
        let start = i;
        while chars
            .get(i)
            .is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect();
        if key.is_empty() || chars.get(i) != Some(&'=') {
            return Err(format!(
                "{spec:?}: expected key=value at {:?}",
                chars[start..].iter().collect::<String>()
            ));
        }
        i += 1;
        let value: String = match chars.get(i) {
            Some(&q) if q == '"' || q == '\'' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&c| c == q)
                    .map(|p| i + 1 + p)
                    .ok_or_else(|| format!("{spec:?}: unclosed quote after {key}="))?;
                let v = chars[i + 1..end].iter().collect();
                i = end + 1;
                v
            }
            _ => {
                let start = i;
                while chars.get(i).is_some_and(|&c| c != ',' && c != ']') {
                    i += 1;
                }
                chars[start..i].iter().collect()
            }
        };
        skip_ws(&mut i);
        match chars.get(i) {
            None => {
                args.push((key, value.trim().to_string()));
                break;
            }
            Some(',') => i += 1,
            // `name[a=1][b=2]`: fail2ban's multiple option groups.
            Some(']') => {
                i += 1;
                skip_ws(&mut i);
                if chars.get(i) == Some(&'[') {
                    i += 1;
                } else {
                    return Err(format!("{spec:?}: unexpected text after ']'"));
                }
            }
            Some(c) => return Err(format!("{spec:?}: unexpected {c:?} after {key}=...")),
        }
        args.push((key, value.trim().to_string()));
    }
    Ok((name, args))
}

/// Loads `spec` (`name` or `name[key=value, ...]`) from the filter
/// directory `dir` (fail2ban's `filter.d`), for the journal
/// (`logtype = journal` unless the arguments say otherwise).
pub fn load_filter(spec: &str, dir: &Path) -> Result<ImportedFilter, Error> {
    let (name, args) = parse_spec(spec).map_err(Error::plain)?;
    if name.contains('/') || name.starts_with('.') {
        return Err(Error::plain(format!(
            "filter name {name:?}: give a name from {}, not a path",
            dir.display()
        )));
    }
    load_named(&name, &args, dir, "journal").map(|f| f.filter)
}

/// Loads the filter `name` from `dir` with `args`; `logtype` is the
/// default for the `logtype` argument (`journal` or `file`).
pub fn load_named(
    name: &str,
    args: &[(String, String)],
    dir: &Path,
    logtype: &str,
) -> Result<FilterFile, Error> {
    let base = dir.join(name);
    let mut files = vec![base.with_extension("conf")];
    let extra = dir.join(format!("{name}.d"));
    files.extend(sorted_glob(&extra, "conf"));
    files.push(base.with_extension("local"));
    files.extend(sorted_glob(&extra, "local"));
    files.retain(|f| f.is_file());
    if files.is_empty() {
        return Err(Error::plain(format!(
            "unknown filter {name:?}: not built in, and no {name}.conf or {name}.local in {}",
            dir.display()
        )));
    }
    let ini = Ini::read(&files)?;
    resolve(&ini, name, args, logtype)
}

/// Loads a filter from its file (`banjo check --filter PATH[args]`):
/// includes are resolved next to it, as fail2ban-regex does.
pub fn load_filter_file(
    path: &Path,
    args: &[(String, String)],
    logtype: &str,
) -> Result<FilterFile, Error> {
    if !path.is_file() {
        return Err(Error::plain(format!(
            "{}: no such filter file",
            path.display()
        )));
    }
    let ini = Ini::read(&[path.to_path_buf()])?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    resolve(&ini, &name, args, logtype)
}

fn sorted_glob(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

fn arg_value(text: &str) -> Value {
    Value {
        text: text.to_string(),
        origin: Origin {
            file: Arc::new(PathBuf::from("(filter arguments)")),
            line: 0,
        },
    }
}

/// fail2ban's `FilterReader.getOptions` + `getCombined` + `convert`.
fn resolve(
    ini: &Ini,
    name: &str,
    args: &[(String, String)],
    logtype: &str,
) -> Result<FilterFile, Error> {
    let first_file = ini.files().first().cloned().unwrap_or_default();
    let whole = Origin {
        file: Arc::new(first_file),
        line: 0,
    };
    if !ini.has_section("Definition") {
        return Err(IniError::at(&whole, format!("filter {name}: no [Definition] section")).into());
    }
    // The arguments, then `logtype` as fail2ban's journal backend sets it
    // (unless the filter's own [Definition] defines it).
    let mut vars: Vars = Vars::new();
    let mut init: Vec<(String, String)> = Vec::new();
    for (k, v) in args {
        vars.insert(k.to_lowercase(), arg_value(v));
        init.push((k.to_lowercase(), v.clone()));
    }
    let defines_logtype = ini
        .section("Definition")
        .is_some_and(|s| s.get("logtype").is_some());
    if !vars.contains_key("logtype") && !defines_logtype {
        vars.insert("logtype".into(), arg_value(logtype));
        init.push(("logtype".into(), logtype.to_string()));
    }
    // [Definition] options, interpolated with the arguments as variables.
    let mut combined: Vec<(String, String, Option<Origin>)> = Vec::new();
    for key in FILTER_OPTIONS {
        if vars.contains_key(*key) {
            continue;
        }
        if let Some(v) = ini.get("Definition", key, &vars)? {
            let origin = ini.raw("Definition", key, &vars).map(|v| v.origin.clone());
            combined.push((key.to_string(), v, origin));
        }
    }
    // [Init] values: defaults for the arguments, and `known/NAME`.
    if let Some(section) = ini.section("Init") {
        let keys: Vec<String> = section.keys().map(str::to_string).collect();
        for key in keys {
            let none = Vars::new();
            let v = ini.get("Init", &key, &none)?.unwrap_or_default();
            if !key.starts_with("known/") {
                init.push((format!("known/{key}"), v.clone()));
            }
            if !init.iter().any(|(k, _)| *k == key) {
                init.push((key, v));
            }
        }
    }
    for (k, v) in init {
        let origin = ini.raw("Init", &k, &Vars::new()).map(|v| v.origin.clone());
        match combined.iter_mut().find(|(ck, _, _)| *ck == k) {
            Some(entry) => {
                entry.1 = v;
                entry.2 = origin;
            }
            None => combined.push((k, v, origin)),
        }
    }
    // fail2ban's `<tag>` substitution over the combined options.
    let mut cache: HashMap<String, Option<String>> = HashMap::new();
    let mut lookup = |tag: &str| -> Result<Option<String>, IniError> {
        if let Some(v) = cache.get(tag) {
            return Ok(v.clone());
        }
        let v = ini.get_ex("Definition", tag, &vars)?;
        cache.insert(tag.to_string(), v.clone());
        Ok(v)
    };
    for i in 0..combined.len() {
        let (key, value, origin) = combined[i].clone();
        let at = origin.clone().unwrap_or_else(|| whole.clone());
        let current: HashMap<String, String> = combined
            .iter()
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect();
        let done = substitute_tags(&key, &value, &current, &mut lookup, &at)?;
        combined[i].1 = done;
    }
    let get = |key: &str| combined.iter().find(|(k, _, _)| k == key);
    let at_of = |key: &str| {
        get(key)
            .and_then(|(_, _, o)| o.clone())
            .unwrap_or_else(|| whole.clone())
    };
    let lines = |key: &str| -> Vec<String> {
        get(key)
            .map(|(_, v, _)| {
                v.split('\n')
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let prefregex = get("prefregex")
        .map(|(_, v, _)| v.trim().to_string())
        .filter(|v| !v.is_empty());
    let failregex = lines("failregex");
    let ignoreregex = lines("ignoreregex");
    for (key, list) in [
        ("prefregex", prefregex.iter().cloned().collect::<Vec<_>>()),
        ("failregex", failregex.clone()),
        ("ignoreregex", ignoreregex.clone()),
    ] {
        for (i, re) in list.iter().enumerate() {
            check_tags(re).map_err(|reason| {
                let which = if key == "prefregex" {
                    key.to_string()
                } else {
                    format!("{key} {i}")
                };
                IniError::at(&at_of(key), format!("filter {name}: {which}: {reason}"))
            })?;
        }
    }
    if failregex.is_empty() {
        return Err(
            IniError::at(&at_of("failregex"), format!("filter {name}: no failregex")).into(),
        );
    }
    let maxlines = match get("maxlines") {
        Some((_, v, _)) if !v.trim().is_empty() => v.trim().parse::<usize>().map_err(|_| {
            IniError::at(
                &at_of("maxlines"),
                format!("filter {name}: maxlines = {v:?} is not a number"),
            )
        })?,
        _ => 1,
    };
    if maxlines > 1 {
        return Err(IniError::at(
            &at_of("maxlines"),
            format!(
                "filter {name}: maxlines = {maxlines}: multi-line buffering is not supported by banjo (a journal entry is one line)"
            ),
        )
        .into());
    }
    if let Some(v) = get("usedns").map(|(_, v, _)| v.trim().to_string()) {
        if !v.is_empty() && v != "warn" && v != "yes" && v != "no" && v != "raw" {
            return Err(
                IniError::at(&at_of("usedns"), format!("filter {name}: usedns = {v:?}")).into(),
            );
        }
    }
    let journalmatch = get("journalmatch").and_then(|(_, v, _)| {
        let mut words: Vec<String> = Vec::new();
        for line in v.split('\n').filter(|l| !l.trim().is_empty()) {
            if !words.is_empty() {
                words.push("+".into());
            }
            words.extend(shell_words(line));
        }
        (!words.is_empty()).then_some(words)
    });
    let datepattern = get("datepattern")
        .map(|(_, v, _)| v.clone())
        .filter(|v| !v.trim().is_empty());
    if let Err(e) = crate::filter::check_fail2ban(prefregex.as_deref(), &failregex, &ignoreregex) {
        let key = match (e.kind(), e.index()) {
            (crate::filter::PatternKind::Ignoreregex, _) => "ignoreregex",
            (_, None) => "prefregex",
            _ => "failregex",
        };
        let which = match e.index() {
            Some(i) => format!("{key} {i}"),
            None => key.to_string(),
        };
        return Err(IniError::at(
            &at_of(key),
            format!("filter {name}: {which}: {}", e.reason()),
        )
        .into());
    }
    let mut all = Vec::with_capacity(failregex.len() + 1);
    if let Some(p) = &prefregex {
        all.push(format!("{}{p}", crate::filter::PREFREGEX_MARK));
    }
    all.extend(failregex);
    Ok(FilterFile {
        filter: ImportedFilter {
            failregex: all,
            ignoreregex,
            journalmatch,
            input: FilterInput::Fail2banLine,
        },
        datepattern,
        files: ini.files().to_vec(),
    })
}

/// Replaces `<tag>` in `value` (the option `key`) with other options or
/// `[Definition]` values, innermost first, as fail2ban's
/// `substituteRecursiveTags`; tags nobody defines stay as they are.
fn substitute_tags(
    key: &str,
    value: &str,
    tags: &HashMap<String, String>,
    lookup: &mut dyn FnMut(&str) -> Result<Option<String>, IniError>,
    at: &Origin,
) -> Result<String, IniError> {
    let mut value = value.to_string();
    let mut counts: HashMap<String, usize> = HashMap::new();
    // Passes until nothing changes: a replacement may form a new tag
    // around it (`<mdre-<mode>>`), found on the next pass.
    loop {
        let mut changed = false;
        let mut from = 0;
        while let Some((start, end)) = next_tag(&value, from) {
            let tag = value[start + 1..end - 1].to_string();
            if tag == key {
                return Err(IniError::at(at, format!("tag <{tag}> refers to itself")));
            }
            let count = counts.entry(tag.clone()).or_insert(0);
            if *count >= MAX_TAG_REPLACE {
                return Err(IniError::at(
                    at,
                    format!(
                        "{key}: tag <{tag}> substituted more than {MAX_TAG_REPLACE} times: a loop"
                    ),
                ));
            }
            let repl = match tags.get(&tag) {
                Some(v) => Some(v.clone()),
                None => lookup(&tag)?,
            };
            match repl {
                Some(r) => {
                    *count += 1;
                    value = value.replace(&format!("<{tag}>"), &r);
                    changed = true;
                    from = start;
                }
                None => from = end,
            }
        }
        if !changed {
            break;
        }
    }
    Ok(value)
}

/// The next `<name>` (name without space, `<` or `>`) at or after `from`:
/// its start and end byte offsets.
fn next_tag(s: &str, from: usize) -> Option<(usize, usize)> {
    let bytes = s.as_bytes();
    let mut i = from;
    while i < bytes.len() {
        if bytes[i] == b'<' {
            let mut j = i + 1;
            while j < bytes.len() && !matches!(bytes[j], b' ' | b'<' | b'>') {
                j += 1;
            }
            if j < bytes.len() && bytes[j] == b'>' && j > i + 1 {
                return Some((i, j + 1));
            }
            i = if j < bytes.len() && bytes[j] == b'<' {
                j
            } else {
                i + 1
            };
        } else {
            i += 1;
        }
    }
    None
}

/// banjo's check after substitution: a `<name>` left over is fail2ban's
/// literal text unless it looks like a configuration tag (lower case,
/// `_`, `/`: an undefined `<_daemon>` or `<mdre-normal>`) or like a
/// misspelt regex tag (`<HOTS>`, `<IP5>`): those are errors, where
/// fail2ban would silently match the text literally.
fn check_tags(re: &str) -> Result<(), String> {
    let b = re.as_bytes();
    let mut from = 0;
    while let Some((start, end)) = next_tag(re, from) {
        from = start + 1;
        let name = &re[start + 1..end - 1];
        let escaped = start > 0 && b[start - 1] == b'\\';
        let group = re[..start].ends_with("(?P") || re[..start].ends_with("(?");
        let bare = name.trim_start_matches('/').trim_end_matches('/');
        let word = !bare.is_empty()
            && bare
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/'))
            && bare.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
        if escaped || group || !word || is_regex_tag(name) {
            continue;
        }
        let config_like =
            bare.contains(|c: char| c.is_ascii_lowercase() || c == '/') || bare.starts_with('_');
        let misspelt = REGEX_TAGS.iter().any(|t| near(bare, t));
        if config_like || misspelt {
            return Err(format!(
                "unknown tag <{name}> (not defined in the filter, its includes or arguments)"
            ));
        }
    }
    Ok(())
}

const REGEX_TAGS: &[&str] = &[
    "HOST",
    "ADDR",
    "IP4",
    "IP6",
    "DNS",
    "CIDR",
    "SUBNET",
    "SKIPLINES",
];

/// Whether `a` is `b` with one letter changed, added, dropped or two
/// neighbours swapped.
fn near(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a == b {
        return false;
    }
    match a.len() as isize - b.len() as isize {
        0 => {
            let diff: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
            diff.len() == 1
                || (diff.len() == 2
                    && diff[1] == diff[0] + 1
                    && a[diff[0]] == b[diff[1]]
                    && a[diff[1]] == b[diff[0]])
        }
        1 | -1 => {
            let (long, short) = if a.len() > b.len() {
                (&a, &b)
            } else {
                (&b, &a)
            };
            (0..long.len()).any(|skip| {
                long.iter()
                    .enumerate()
                    .filter(|(i, _)| *i != skip)
                    .map(|(_, c)| c)
                    .eq(short.iter())
            })
        }
        _ => false,
    }
}

/// Python's `shlex.split`, enough for journalmatch lines.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                in_word = true;
                for d in chars.by_ref() {
                    if d == c {
                        break;
                    }
                    cur.push(d);
                }
            }
            '\\' => {
                in_word = true;
                if let Some(d) = chars.next() {
                    cur.push(d);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(parse_spec("postfix").unwrap(), ("postfix".into(), vec![]));
        assert_eq!(
            parse_spec("postfix[mode=aggressive]").unwrap(),
            ("postfix".into(), vec![("mode".into(), "aggressive".into())])
        );
        let (n, a) =
            parse_spec(r#"iptables-multiport[name=postfix, port="http,https,smtp", protocol=tcp]"#)
                .unwrap();
        assert_eq!(n, "iptables-multiport");
        assert_eq!(
            a,
            vec![
                ("name".into(), "postfix".into()),
                ("port".into(), "http,https,smtp".into()),
                ("protocol".into(), "tcp".into())
            ]
        );
        assert!(parse_spec("x[mode").is_err());
        assert!(parse_spec("x[=1]").is_err());
        assert_eq!(parse_spec("x[a='1, 2'][b=3]").unwrap().1.len(), 2);
    }

    #[test]
    fn tags() {
        let mut tags = HashMap::new();
        tags.insert("mode".to_string(), "aggressive".to_string());
        let o = Origin {
            file: Arc::new("f".into()),
            line: 1,
        };
        let mut lookup = |t: &str| -> Result<Option<String>, IniError> {
            Ok(match t {
                "mdre-aggressive" => Some("A <x>".into()),
                "x" => Some("X".into()),
                "loop" => Some("<loop2>".into()),
                "loop2" => Some("<loop>".into()),
                _ => None,
            })
        };
        assert_eq!(
            substitute_tags("failregex", "<mdre-<mode>> <HOST>", &tags, &mut lookup, &o).unwrap(),
            "A X <HOST>"
        );
        assert!(substitute_tags("failregex", "<loop>", &tags, &mut lookup, &o).is_err());
        assert!(substitute_tags("failregex", "<failregex>", &tags, &mut lookup, &o).is_err());
        assert!(check_tags(r"from <HOST> user <F-USER>\S+</F-USER> (?P<x>a) <[^>]*> \<y>").is_ok());
        assert!(check_tags("from <HOST> <_daemon>").is_err());
        assert!(check_tags("from <HOTS>").is_err());
        assert!(check_tags("from <HOST> <mdre-normal>").is_err());
        assert!(check_tags("backend <NOSRV> <SECURITY_LOG>").is_ok());
        assert!(check_tags("<F-ID/> <SKIPLINES>").is_ok());
    }

    #[test]
    fn journal_lines() {
        let mut out = Vec::new();
        journal_line(
            &mut out,
            Some(b"mail"),
            Some(b"postfix/smtpd"),
            Some(b"123"),
            None,
            b"connect from x",
        );
        assert_eq!(out, b"mail postfix/smtpd[123]: connect from x");
        journal_line(&mut out, None, Some(b"sshd"), None, None, b"a\nb");
        assert_eq!(out, b"sshd: a\\nb");
        journal_line(
            &mut out,
            Some(b"h"),
            Some(b"kernel"),
            None,
            Some(1_500_000),
            b"x",
        );
        assert_eq!(out, b"h kernel: [    1.500000] x");
        journal_line(&mut out, Some(b"h"), None, Some(b"1"), None, b"m");
        assert_eq!(out, b"h m");
    }

    /// `filter = "NAME[args]"` in banjo.toml, end to end: includes, `[Init]`
    /// journalmatch, nested tags, prefregex, the journal line.
    #[test]
    fn banjo_toml_uses_a_fail2ban_filter() {
        use crate::filter::{Filter, Hit, Outcome};
        use crate::jail::{JailId, JailSet};
        let dir = std::env::temp_dir().join(format!("banjo-f2b-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("common.conf"),
            "[INCLUDES]\nafter = common.local\n[DEFAULT]\nlogtype = file\n_daemon = \\S*\n\
             __prefix_line = <lt_<logtype>/__prefix_line>\n\
             [lt_file]\n__prefix_line = \\S+ <_daemon>\\[\\d+\\]:\\s+\n\
             [lt_journal]\n__prefix_line = (?:\\S+ )?<_daemon>(?:\\[\\d+\\])?:\\s+\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("demo.conf"),
            "[INCLUDES]\nbefore = common.conf\n[Definition]\n_daemon = demo\n\
             prefregex = ^%(__prefix_line)s<F-CONTENT>.+</F-CONTENT>$\n\
             mdre-normal = ^bad login from <HOST>$\n\
             mdre-strict = <mdre-normal>\n              ^probe(?= from) from <HOST>\n\
             failregex = <mdre-<mode>>\nmode = normal\n[Init]\njournalmatch = SYSLOG_IDENTIFIER=demo\n",
        )
        .unwrap();
        let toml = format!(
            "[fail2ban]\nfilter_dir = {:?}\n[jail.demo]\nfilter = \"demo[mode=strict]\"\n",
            dir.display().to_string()
        );
        let config = crate::config::Config::parse(Path::new("banjo.toml"), &toml)
            .unwrap_or_else(|e| panic!("{e}"));
        let jail = &config.jails[0];
        assert_eq!(jail.journalmatch.to_string(), "SYSLOG_IDENTIFIER=demo");
        assert_eq!(jail.input, FilterInput::Fail2banLine);
        let filter = Filter::new(&config.jails).unwrap();
        let mut cache = filter.cache();
        let mut hits = Vec::new();
        let mut line = Vec::new();
        for (msg, want) in [
            ("probe from 192.0.2.4", Some((2, "192.0.2.4"))),
            ("bad login from 192.0.2.5", Some((1, "192.0.2.5"))),
            ("probe to 192.0.2.6", None),
        ] {
            journal_line(
                &mut line,
                Some(b"h"),
                Some(b"demo"),
                Some(b"9"),
                None,
                msg.as_bytes(),
            );
            hits.clear();
            filter.scan_entry(
                &mut cache,
                msg.as_bytes(),
                &line,
                &JailSet::first(1),
                &mut hits,
            );
            let want: Vec<Hit> = want
                .into_iter()
                .map(|(i, ip)| Hit {
                    jail: JailId(0),
                    failregex: i,
                    outcome: Outcome::Failure(ip.parse().unwrap()),
                })
                .collect();
            assert_eq!(hits, want, "{msg}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shlex() {
        assert_eq!(
            shell_words(r#"_SYSTEMD_UNIT=sshd.service + _COMM="ss hd""#),
            vec!["_SYSTEMD_UNIT=sshd.service", "+", "_COMM=ss hd"]
        );
    }
}
