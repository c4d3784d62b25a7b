//! fail2ban's configuration dialect: Python `configparser` files joined by
//! `[INCLUDES]`, with `%(name)s` interpolation.
//!
//! What is reproduced, because fail2ban's stock files rely on it:
//! - `[section]` headers (the text up to the last `]`), `key = value` or
//!   `key: value` (split at the first `=` or `:`), keys lower-cased, section
//!   names kept as written, `[DEFAULT]` seen by every section;
//! - values continued on following lines indented deeper than the key,
//!   joined with `\n`; blank lines inside a value kept, trailing ones
//!   dropped;
//! - comments: a line whose first non-blank character is `#` or `;`, and
//!   an inline `;` preceded by whitespace;
//! - a repeated section or key within one file is an error (Python's
//!   `strict` mode), a later file overrides an earlier one key by key, and
//!   the overridden values stay reachable as `%(known/key)s`;
//! - `[INCLUDES] before = ...` / `after = ...`, relative to the including
//!   file, each file followed by its `.local` sibling when that exists;
//! - `%(name)s` (`%%` is a `%`), looked up in the caller's variables, then
//!   the section, then `[DEFAULT]`; `%(section/name)s`, `%(default/name)s`
//!   and `%(known/name)s` as fail2ban adds them; at most 10 levels deep.
//!
//! Where fail2ban is lenient banjo is not: a missing include that is not a
//! `.local` file, a line that is neither a header, a key nor a
//! continuation, an undefined `%(name)s` and an interpolation loop are
//! errors naming the file and line.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Python's `MAX_INTERPOLATION_DEPTH`.
const MAX_DEPTH: usize = 10;

/// Where a value (or a problem) is: file and 1-based line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The file.
    pub file: Arc<PathBuf>,
    /// The line, counting from 1; 0 when the file as a whole is meant.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file.display())
        } else {
            write!(f, "{}:{}", self.file.display(), self.line)
        }
    }
}

/// A configuration error: where, and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IniError {
    /// Where the problem is; `None` when no file is to blame.
    pub origin: Option<Origin>,
    /// What is wrong.
    pub reason: String,
}

impl IniError {
    pub(crate) fn at(origin: &Origin, reason: impl Into<String>) -> IniError {
        IniError {
            origin: Some(origin.clone()),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for IniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Some(o) => write!(f, "{o}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for IniError {}

/// A raw (not yet interpolated) value and where it was defined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    /// The text, continuation lines joined with `\n`.
    pub text: String,
    /// Where its key is.
    pub origin: Origin,
}

/// The options of one section, in definition order.
#[derive(Clone, Debug, Default)]
pub struct Section {
    keys: Vec<String>,
    values: HashMap<String, Value>,
}

impl Section {
    /// The raw value of `key` (lower-case).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    /// Option names in definition order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(String::as_str)
    }

    fn set(&mut self, key: String, value: Value) {
        if !self.values.contains_key(&key) {
            self.keys.push(key.clone());
        }
        self.values.insert(key, value);
    }

    fn merge(&mut self, other: &Section) {
        for k in &other.keys {
            if let Some(v) = other.values.get(k) {
                self.set(k.clone(), v.clone());
            }
        }
    }
}

/// One parsed file.
#[derive(Debug, Default)]
struct ParsedFile {
    defaults: Section,
    sections: Vec<(String, Section)>,
}

impl ParsedFile {
    fn section(&self, name: &str) -> Option<&Section> {
        self.sections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
    }
}

/// Parses one file's text with Python configparser's rules.
fn parse(text: &str, file: &Arc<PathBuf>) -> Result<ParsedFile, IniError> {
    let mut out = ParsedFile::default();
    // Current section (None: DEFAULT) and whether a header was seen.
    let mut current: Option<usize> = None;
    let mut seen_header = false;
    let mut seen_default = false;
    let mut option: Option<String> = None;
    // Raw lines of the value being read, and the indent of its key line.
    let mut lines: Vec<String> = Vec::new();
    let mut indent_level = 0usize;
    let mut seen_keys: Vec<(Option<usize>, String)> = Vec::new();

    fn flush(
        out: &mut ParsedFile,
        current: Option<usize>,
        option: &mut Option<String>,
        lines: &mut Vec<String>,
        origin: &mut Option<Origin>,
    ) {
        if let (Some(key), Some(o)) = (option.take(), origin.take()) {
            let joined = lines.join("\n");
            let value = Value {
                text: joined.trim_end().to_string(),
                origin: o,
            };
            let section = match current {
                Some(i) => match out.sections.get_mut(i) {
                    Some((_, s)) => s,
                    None => return,
                },
                None => &mut out.defaults,
            };
            section.set(key, value);
        }
        lines.clear();
    }

    let mut value_origin: Option<Origin> = None;
    for (n, raw) in text.split('\n').enumerate() {
        let lineno = n + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let at = Origin {
            file: file.clone(),
            line: lineno,
        };
        // Inline `;` comments need whitespace before them (or column 0).
        let mut comment_start: Option<usize> = None;
        for (i, c) in line.char_indices() {
            if c == ';' && (i == 0 || line[..i].ends_with(char::is_whitespace)) {
                comment_start = Some(i);
                break;
            }
        }
        let trimmed_full = line.trim();
        if trimmed_full.starts_with('#') || trimmed_full.starts_with(';') {
            comment_start = Some(0);
        }
        let value = line[..comment_start.unwrap_or(line.len())].trim();
        if value.is_empty() {
            if comment_start.is_none() && option.is_some() {
                lines.push(String::new());
            }
            continue;
        }
        let cur_indent = line.len() - line.trim_start().len();
        if option.is_some() && seen_header && cur_indent > indent_level {
            lines.push(value.to_string());
            continue;
        }
        flush(
            &mut out,
            current,
            &mut option,
            &mut lines,
            &mut value_origin,
        );
        indent_level = cur_indent;
        if let Some(rest) = value.strip_prefix('[') {
            if let Some(close) = rest.rfind(']').filter(|&c| c > 0) {
                let name = &rest[..close];
                seen_header = true;
                if name == "DEFAULT" {
                    if seen_default {
                        return Err(IniError::at(&at, "section [DEFAULT] repeated in this file"));
                    }
                    seen_default = true;
                    current = None;
                } else {
                    if out.sections.iter().any(|(s, _)| s == name) {
                        return Err(IniError::at(
                            &at,
                            format!("section [{name}] repeated in this file"),
                        ));
                    }
                    out.sections.push((name.to_string(), Section::default()));
                    current = Some(out.sections.len() - 1);
                }
                continue;
            }
        }
        if !seen_header {
            return Err(IniError::at(
                &at,
                format!("{value:?} before any [section] header"),
            ));
        }
        let Some(delim) = value.find(['=', ':']) else {
            return Err(IniError::at(
                &at,
                format!("syntax error: {value:?} is neither `[section]`, `key = value` nor an indented continuation"),
            ));
        };
        let key = value[..delim].trim_end().to_lowercase();
        if key.is_empty() {
            return Err(IniError::at(
                &at,
                format!("syntax error: {value:?} has no option name"),
            ));
        }
        if seen_keys.iter().any(|(s, k)| *s == current && *k == key) {
            return Err(IniError::at(
                &at,
                format!("option {key:?} repeated in this section of this file"),
            ));
        }
        seen_keys.push((current, key.clone()));
        lines.push(value[delim + 1..].trim().to_string());
        option = Some(key);
        value_origin = Some(at);
    }
    flush(
        &mut out,
        current,
        &mut option,
        &mut lines,
        &mut value_origin,
    );
    Ok(out)
}

/// A merged set of configuration files.
#[derive(Debug, Default)]
pub struct Ini {
    defaults: Section,
    sections: Vec<(String, Section)>,
    /// `KNOWN/<section>`: values a later file overrode.
    known: HashMap<String, Section>,
    /// Files read, in order.
    files: Vec<PathBuf>,
}

impl Ini {
    /// Reads `files` in order (each with its includes and `.local`
    /// sibling) and merges them; files that do not exist are skipped.
    pub fn read(files: &[PathBuf]) -> Result<Ini, IniError> {
        let mut ini = Ini::default();
        let mut order = Vec::new();
        for f in with_locals(files) {
            if f.exists() {
                collect(&f, &mut Vec::new(), &mut order)?;
            }
        }
        for (path, parsed) in order {
            ini.merge_file(path, parsed);
        }
        Ok(ini)
    }

    /// Parses `text` as if it were the file `name` (tests, fixtures); no
    /// includes are followed.
    pub fn from_text(text: &str, name: &Path) -> Result<Ini, IniError> {
        let file = Arc::new(name.to_path_buf());
        let parsed = parse(text, &file)?;
        let mut ini = Ini::default();
        ini.merge_file(name.to_path_buf(), parsed);
        Ok(ini)
    }

    fn merge_file(&mut self, path: PathBuf, parsed: ParsedFile) {
        self.defaults.merge(&parsed.defaults);
        for (name, s) in parsed.sections {
            match self.sections.iter_mut().find(|(n, _)| *n == name) {
                Some((_, existing)) => {
                    let known = self.known.entry(name.clone()).or_default();
                    for k in s.keys() {
                        if let Some(v) = existing.get(k) {
                            known.set(k.to_string(), v.clone());
                        }
                    }
                    existing.merge(&s);
                }
                None => self.sections.push((name, s)),
            }
        }
        self.files.push(path);
    }

    /// Files read, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Section names in order, `[DEFAULT]` and `[INCLUDES]` left out.
    pub fn section_names(&self) -> impl Iterator<Item = &str> {
        self.sections
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| *n != "INCLUDES")
    }

    /// A section; `DEFAULT` gives the defaults.
    pub fn section(&self, name: &str) -> Option<&Section> {
        if name.eq_ignore_ascii_case("default") {
            return Some(&self.defaults);
        }
        self.sections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
    }

    /// Whether the section exists.
    pub fn has_section(&self, name: &str) -> bool {
        self.sections.iter().any(|(n, _)| n == name)
    }

    /// The raw value of `key` in `section` as Python's `get(raw=True)`
    /// sees it: `vars`, then the section, then `[DEFAULT]`.
    pub fn raw<'a>(&'a self, section: &str, key: &str, vars: &'a Vars) -> Option<&'a Value> {
        if let Some(v) = vars.get(key) {
            return Some(v);
        }
        if let Some(v) = self.section(section).and_then(|s| s.get(key)) {
            return Some(v);
        }
        self.defaults.get(key)
    }

    /// The interpolated value of `key` in `section`; `Ok(None)` when the
    /// key is not defined there (nor in `[DEFAULT]` or `vars`).
    pub fn get(&self, section: &str, key: &str, vars: &Vars) -> Result<Option<String>, IniError> {
        let key = key.to_lowercase();
        let Some(value) = self.raw(section, &key, vars) else {
            return Ok(None);
        };
        let mut trail = vec![key.clone()];
        self.interpolate(section, &value.text, &value.origin, vars, 1, &mut trail)
            .map(Some)
    }

    /// fail2ban's `get_ex`: `sec/opt` names another section's option
    /// (`known/opt`: the value a later file overrode, else the current one;
    /// `default/opt`: `[DEFAULT]`), read without `vars`; anything else, or
    /// a `sec/opt` that is not there, is `get(section, name, vars)`.
    pub fn get_ex(
        &self,
        section: &str,
        name: &str,
        vars: &Vars,
    ) -> Result<Option<String>, IniError> {
        if let Some((sec, opt)) = split_section_option(name) {
            let candidates: Vec<String> = match sec.to_lowercase().as_str() {
                "known" => vec![format!("KNOWN/{section}"), section.to_string()],
                "default" => vec!["DEFAULT".to_string()],
                _ => vec![sec.to_string()],
            };
            let none = Vars::new();
            for c in candidates {
                if let Some(known) = c.strip_prefix("KNOWN/") {
                    let opt_l = opt.to_lowercase();
                    if let Some(v) = self.known.get(known).and_then(|s| s.get(&opt_l)) {
                        let mut trail = vec![opt_l.clone()];
                        return self
                            .interpolate(section, &v.text, &v.origin, &none, 1, &mut trail)
                            .map(Some);
                    }
                    continue;
                }
                if self.section(&c).is_some() {
                    if let Some(v) = self.get(&c, opt, &none)? {
                        return Ok(Some(v));
                    }
                }
            }
        }
        self.get(section, name, vars)
    }

    /// Expands `%(name)s` and `%%` in `text`, read in `section`.
    fn interpolate(
        &self,
        section: &str,
        text: &str,
        origin: &Origin,
        vars: &Vars,
        depth: usize,
        trail: &mut Vec<String>,
    ) -> Result<String, IniError> {
        if depth > MAX_DEPTH {
            return Err(IniError::at(
                origin,
                format!(
                    "interpolation loop (or deeper than {MAX_DEPTH} levels): {}",
                    trail.join(" -> ")
                ),
            ));
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(p) = rest.find('%') {
            out.push_str(&rest[..p]);
            rest = &rest[p..];
            if let Some(r) = rest.strip_prefix("%%") {
                out.push('%');
                rest = r;
                continue;
            }
            let Some(inner) = rest.strip_prefix("%(") else {
                return Err(IniError::at(
                    origin,
                    format!("'%' must be followed by '%' or '(' in {text:?}"),
                ));
            };
            let Some(close) = inner.find(")s") else {
                return Err(IniError::at(
                    origin,
                    format!("bad interpolation reference in {text:?}"),
                ));
            };
            let name = inner[..close].to_lowercase();
            rest = &inner[close + 2..];
            if name.contains(['(', ')']) {
                return Err(IniError::at(
                    origin,
                    format!("bad interpolation reference %({name})s"),
                ));
            }
            let value = match self.raw(section, &name, vars) {
                Some(v) => Some(v.text.clone()),
                // fail2ban's interpolation knows the section's own name.
                None if name == "__name__" => Some(section.to_string()),
                None => self.section_option_raw(section, &name),
            };
            let Some(value) = value else {
                return Err(IniError::at(
                    origin,
                    format!("%({name})s is not defined (in [{section}] or [DEFAULT])"),
                ));
            };
            if trail.contains(&name) && value.contains('%') {
                trail.push(name);
                return Err(IniError::at(
                    origin,
                    format!("interpolation loop: {}", trail.join(" -> ")),
                ));
            }
            if value.contains('%') {
                trail.push(name);
                let expanded = self.interpolate(section, &value, origin, vars, depth + 1, trail)?;
                trail.pop();
                out.push_str(&expanded);
            } else {
                out.push_str(&value);
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// fail2ban's `%(section/option)s`: the raw value of `option` in
    /// `section` (`known`: the overridden one, `default`: `[DEFAULT]`),
    /// falling back to `[DEFAULT]`.
    fn section_option_raw(&self, section: &str, name: &str) -> Option<String> {
        let (sec, opt) = split_section_option(name)?;
        let lower = sec.to_lowercase();
        let found = match lower.as_str() {
            "default" => None,
            "known" => self.known.get(section).and_then(|s| s.get(opt)),
            _ => self.section(sec).and_then(|s| s.get(opt)),
        };
        found
            .or_else(|| self.defaults.get(opt))
            .map(|v| v.text.clone())
    }
}

/// `section/option` as fail2ban's `SECTION_OPTNAME_CRE` reads it.
fn split_section_option(name: &str) -> Option<(&str, &str)> {
    let (sec, opt) = name.split_once('/')?;
    let sec_ok = !sec.is_empty()
        && sec
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-');
    let opt_ok = !opt.is_empty() && !opt.contains(|c: char| c.is_whitespace() || c == '>');
    (sec_ok && opt_ok).then_some((sec, opt))
}

/// Variables that take precedence over a section's options (fail2ban's
/// filter arguments, `name[key=value]`).
pub type Vars = HashMap<String, Value>;

/// Each file followed by its `.local` sibling when it exists and is not
/// listed already (fail2ban's `_expandConfFilesWithLocal`).
fn with_locals(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for f in files {
        out.push(f.clone());
        let local = f.with_extension("local");
        if local != *f && !files.contains(&local) && local.is_file() {
            out.push(local);
        }
    }
    out
}

/// Parses `file` and, depth first, its `[INCLUDES]`: `before` files, the
/// file, `after` files. `seen` guards against include loops.
fn collect(
    file: &Path,
    seen: &mut Vec<PathBuf>,
    out: &mut Vec<(PathBuf, ParsedFile)>,
) -> Result<(), IniError> {
    let shared = Arc::new(file.to_path_buf());
    let text = std::fs::read(file).map_err(|e| IniError {
        origin: Some(Origin {
            file: shared.clone(),
            line: 0,
        }),
        reason: format!("cannot read: {e}"),
    })?;
    let text = String::from_utf8(text).map_err(|_| IniError {
        origin: Some(Origin {
            file: shared.clone(),
            line: 0,
        }),
        reason: "not UTF-8".to_string(),
    })?;
    let parsed = parse(&text, &shared)?;
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut before = Vec::new();
    let mut after = Vec::new();
    if let Some(inc) = parsed.section("INCLUDES") {
        for (key, list) in [("before", &mut before), ("after", &mut after)] {
            if let Some(v) = inc.get(key) {
                for name in v.text.split('\n').map(str::trim).filter(|s| !s.is_empty()) {
                    let path = if Path::new(name).is_absolute() {
                        PathBuf::from(name)
                    } else {
                        dir.join(name)
                    };
                    list.push((path, v.origin.clone()));
                }
            }
        }
    }
    seen.push(file.to_path_buf());
    for (path, origin) in before {
        include(&path, &origin, seen, out)?;
    }
    out.push((file.to_path_buf(), parsed));
    for (path, origin) in after {
        include(&path, &origin, seen, out)?;
    }
    seen.pop();
    Ok(())
}

fn include(
    path: &Path,
    origin: &Origin,
    seen: &mut Vec<PathBuf>,
    out: &mut Vec<(PathBuf, ParsedFile)>,
) -> Result<(), IniError> {
    for f in with_locals(&[path.to_path_buf()]) {
        if seen.contains(&f) {
            continue;
        }
        if !f.exists() {
            // fail2ban's own convention: `.local` files are optional.
            if f.extension().is_some_and(|e| e == "local") {
                continue;
            }
            return Err(IniError::at(
                origin,
                format!("include {} does not exist", f.display()),
            ));
        }
        collect(&f, seen, out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ini(text: &str) -> Ini {
        Ini::from_text(text, Path::new("t.conf")).unwrap()
    }

    fn get(ini: &Ini, s: &str, k: &str) -> Option<String> {
        ini.get(s, k, &Vars::new()).unwrap()
    }

    #[test]
    fn configparser_basics() {
        let i = ini("# c\n[DEFAULT]\nbase = /x\n[Definition]\nFailRegex = ^a$\n            ^b: c$\n\n    ; comment\n            ^d\n\n\nother: v ; inline\nsemi = a;b\n[S]\nk=%(base)s/y\n");
        assert_eq!(
            get(&i, "Definition", "failregex").as_deref(),
            Some("^a$\n^b: c$\n\n^d")
        );
        assert_eq!(get(&i, "Definition", "other").as_deref(), Some("v"));
        assert_eq!(get(&i, "Definition", "semi").as_deref(), Some("a;b"));
        assert_eq!(get(&i, "S", "k").as_deref(), Some("/x/y"));
        assert_eq!(get(&i, "Definition", "base").as_deref(), Some("/x"));
        assert_eq!(get(&i, "S", "nothing"), None);
        assert_eq!(
            i.section_names().collect::<Vec<_>>(),
            vec!["Definition", "S"]
        );
    }

    #[test]
    fn interpolation_rules() {
        let i = ini("[D]\na = %(b)s-%%-%(c)s\nb = B\nc = %(b)s%(b)s\nloop1 = %(loop2)s\nloop2 = %(loop1)s\nmissing = %(zz)s\nbad = 5%\n[lt_x]\np = P\n[E]\nq = %(lt_x/p)s\n");
        assert_eq!(get(&i, "D", "a").as_deref(), Some("B-%-BB"));
        let e = i.get("D", "loop1", &Vars::new()).unwrap_err();
        assert!(
            e.to_string().starts_with("t.conf:5: interpolation loop"),
            "{e}"
        );
        let e = i.get("D", "missing", &Vars::new()).unwrap_err();
        assert!(e.to_string().contains("%(zz)s is not defined"), "{e}");
        assert!(i.get("D", "bad", &Vars::new()).is_err());
        assert_eq!(get(&i, "E", "q").as_deref(), Some("P"));
        let mut vars = Vars::new();
        vars.insert(
            "b".into(),
            Value {
                text: "V".into(),
                origin: Origin {
                    file: Arc::new("args".into()),
                    line: 0,
                },
            },
        );
        assert_eq!(i.get("D", "a", &vars).unwrap().as_deref(), Some("V-%-VV"));
        assert_eq!(
            i.get_ex("E", "lt_x/p", &Vars::new()).unwrap().as_deref(),
            Some("P")
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = Ini::from_text("[A]\nok = 1\nnot an option\n", Path::new("f.conf")).unwrap_err();
        assert!(e.to_string().starts_with("f.conf:3: syntax error"), "{e}");
        let e = Ini::from_text("k = v\n", Path::new("f.conf")).unwrap_err();
        assert!(e.to_string().starts_with("f.conf:1: "), "{e}");
        let e = Ini::from_text("[A]\nk = 1\nk = 2\n", Path::new("f.conf")).unwrap_err();
        assert!(
            e.to_string().starts_with("f.conf:3: option \"k\" repeated"),
            "{e}"
        );
    }

    #[test]
    fn includes_locals_and_known() {
        let dir = std::env::temp_dir().join(format!("banjo-ini-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("common.conf"),
            "[INCLUDES]\nafter = common.local\n[DEFAULT]\nc = common\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("f.conf"),
            "[INCLUDES]\nbefore = common.conf\n[Definition]\nx = %(c)s-conf\n",
        )
        .unwrap();
        std::fs::write(dir.join("f.local"), "[Definition]\nx = %(known/x)s+local\n").unwrap();
        let i = Ini::read(&[dir.join("f.conf")]).unwrap();
        assert_eq!(
            get(&i, "Definition", "x").as_deref(),
            Some("common-conf+local")
        );
        assert_eq!(i.files().len(), 3);
        std::fs::write(
            dir.join("g.conf"),
            "[INCLUDES]\nbefore = nothere.conf\n[Definition]\n",
        )
        .unwrap();
        let e = Ini::read(&[dir.join("g.conf")]).unwrap_err();
        assert!(e.to_string().contains("g.conf:2: include"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
