//! Configuration: banjo.toml read, checked and resolved into [`Config`].
//!
//! `raw.rs` mirrors the file; this module turns it into validated values
//! (`Duration`, `IpNet`, `PortRange`, compiled-and-checked regexes) so that
//! nothing past `config` ever parses a string. Every error names the file
//! and line of the offending value: `PATH:LINE: jail NAME: what is wrong`.

mod raw;
mod value;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::jail::{
    FilterInput, Increment, Jail, JournalMatch, MatchTerm, Ports, Protocol, MAX_JAILS,
};
use crate::journal::Source;
use crate::net::IpNet;
use raw::{DurationValue, RawConfig, RawJail};
pub use value::{parse_bantime, parse_duration};

/// Where banjo reads its configuration unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/banjo/banjo.toml";

/// The journalmatch of a jail that names none: Postfix, banjo's first
/// target. On Debian 12 the daemons run in `postfix@-.service`;
/// `postfix.service` is the oneshot wrapper, kept for other layouts.
pub const DEFAULT_JOURNALMATCH: &[&str] = &[
    "_SYSTEMD_UNIT=postfix.service",
    "_SYSTEMD_UNIT=postfix@-.service",
];

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// Where the journal cursor and ban state live.
    pub state_dir: PathBuf,
    /// The control socket's path.
    pub socket: PathBuf,
    /// The group whose members may use the read-only control commands
    /// (`status`, `stats`), as a gid.
    pub socket_group: Option<u32>,
    /// Which journal to read.
    pub journal: Source,
    /// Name of banjo's `inet` nftables table.
    pub table: String,
    /// Where `filter = "NAME"` looks for fail2ban filters banjo does not
    /// have built in.
    pub fail2ban_filter_dir: PathBuf,
    /// The enabled jails; `jails[i]` is `JailId(i)`.
    pub jails: Vec<Jail>,
    /// Names of jails present but disabled, for `banjo config check`.
    pub disabled: Vec<String>,
}

/// A configuration problem, with the place it was found.
#[derive(Debug)]
pub struct Error {
    path: PathBuf,
    line: Option<usize>,
    jail: Option<String>,
    kind: ErrorKind,
}

/// What is wrong.
#[derive(Debug)]
pub enum ErrorKind {
    /// The file could not be read.
    Read(std::io::Error),
    /// TOML syntax, a wrong type or an unknown key (the TOML parser's words).
    Syntax(String),
    /// A key holds a value banjo cannot use.
    BadValue {
        /// The key.
        key: &'static str,
        /// Why the value was refused.
        reason: String,
    },
    /// An enabled jail has no failregex at all.
    NoFailregex,
    /// A failregex or ignoreregex does not compile.
    BadRegex(String),
}

impl Error {
    fn new(path: &Path, line: Option<usize>, jail: Option<&str>, kind: ErrorKind) -> Error {
        Error {
            path: path.to_path_buf(),
            line,
            jail: jail.map(str::to_string),
            kind,
        }
    }

    /// The line of the offending value, when known.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The problem itself.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if let Some(jail) = &self.jail {
            write!(f, "jail {jail}: ")?;
        }
        match &self.kind {
            ErrorKind::Read(e) => write!(f, "cannot read: {e}"),
            ErrorKind::Syntax(m) => f.write_str(m),
            ErrorKind::BadValue { key, reason } => write!(f, "{key}: {reason}"),
            ErrorKind::NoFailregex => {
                f.write_str("failregex: an enabled jail needs at least one failregex (or a filter)")
            }
            ErrorKind::BadRegex(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Read(e) => Some(e),
            _ => None,
        }
    }
}

impl Config {
    /// Reads and validates `path`, then the drop-ins `conf.d/*.toml` next
    /// to it in name order, each laid over the last key by key.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| Error::new(p, None, None, ErrorKind::Read(e)))
        };
        let mut files = vec![(path.to_path_buf(), read(path)?)];
        let dropins = path.parent().unwrap_or(Path::new(".")).join("conf.d");
        if let Ok(dir) = std::fs::read_dir(&dropins) {
            let mut names: Vec<PathBuf> = dir
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            names.sort();
            for p in names {
                let text = read(&p)?;
                files.push((p, text));
            }
        }
        Config::parse_files(&files)
    }

    /// Validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, Error> {
        Config::parse_files(&[(path.to_path_buf(), text.to_string())])
    }

    /// Validates the files as one configuration, later ones laid over the
    /// earlier ones.
    fn parse_files(files: &[(PathBuf, String)]) -> Result<Config, Error> {
        // Each file is parsed behind a comment line that pads its byte
        // offsets past the previous files', so every span in the merged
        // configuration says which file it came from.
        let mut layers = Vec::new();
        let mut base = 0;
        for (path, text) in files {
            layers.push(Layer {
                path: path.clone(),
                text: text.clone(),
                base,
            });
            base += text.len() + 2;
        }
        Resolver {
            layers,
            services: value::Services::system(),
        }
        .resolve()
    }

    /// The longest findtime of all jails: how far back a first start reads.
    pub fn max_findtime(&self) -> Duration {
        self.jails
            .iter()
            .map(|j| j.findtime)
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

/// The control socket named in the file at `path`, read leniently: the
/// CLI must reach the daemon (to ask it to reload, say) even while the
/// file holds an error elsewhere. Falls back to the default.
pub fn socket_path(path: &Path) -> PathBuf {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| t.get("daemon")?.get("socket")?.as_str().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/run/banjo/banjo.sock"))
}

/// Built-in filters: `filter = "NAME"` in a jail.
struct Builtin {
    name: &'static str,
    failregex: &'static [&'static str],
    ignoreregex: &'static [&'static str],
}

const BUILTINS: &[Builtin] = &[Builtin {
    name: "postfix",
    failregex: crate::filter::POSTFIX_FAILREGEX,
    ignoreregex: crate::filter::POSTFIX_IGNOREREGEX,
}];

/// One configuration file and where its offsets start in the merged view.
struct Layer {
    path: PathBuf,
    text: String,
    base: usize,
}

impl Layer {
    /// The text as parsed: padded so that its offsets start at `base`.
    fn padded(&self) -> String {
        if self.base == 0 {
            return self.text.clone();
        }
        let mut s = String::with_capacity(self.base + self.text.len());
        s.push('#');
        s.push_str(&" ".repeat(self.base - 2));
        s.push('\n');
        s.push_str(&self.text);
        s
    }

    /// The 1-based line of a local offset.
    fn line(&self, local: usize) -> usize {
        let end = local.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }
}

struct Resolver {
    layers: Vec<Layer>,
    services: value::Services,
}

impl Resolver {
    /// The file and local offset of a merged offset.
    fn locate(&self, offset: usize) -> (&Layer, usize) {
        let i = self
            .layers
            .partition_point(|l| l.base <= offset)
            .saturating_sub(1);
        let layer = &self.layers[i.min(self.layers.len() - 1)];
        (layer, offset.saturating_sub(layer.base))
    }

    fn main_path(&self) -> &Path {
        self.layers
            .first()
            .map_or(Path::new(DEFAULT_PATH), |l| l.path.as_path())
    }

    fn err(&self, span: Option<std::ops::Range<usize>>, jail: &str, kind: ErrorKind) -> Error {
        let jail = (!jail.is_empty()).then_some(jail);
        match span {
            Some(s) => {
                let (layer, local) = self.locate(s.start);
                Error::new(&layer.path, Some(layer.line(local)), jail, kind)
            }
            None => Error::new(self.main_path(), None, jail, kind),
        }
    }

    fn bad(
        &self,
        span: std::ops::Range<usize>,
        jail: &str,
        key: &'static str,
        reason: String,
    ) -> Error {
        self.err(Some(span), jail, ErrorKind::BadValue { key, reason })
    }

    /// The `[jail.NAME]` table a byte offset of `text` falls in, for
    /// syntax errors reported by the TOML parser.
    fn jail_at(text: &str, offset: usize) -> Option<String> {
        let head = &text[..offset.min(text.len())];
        head.lines().rev().find_map(|l| {
            let l = l.trim();
            if !l.starts_with('[') {
                return None;
            }
            let inner = l.trim_start_matches('[').trim_end_matches(']').trim();
            Some(
                inner
                    .strip_prefix("jail.")
                    .map(|n| n.trim_matches('"').to_string()),
            )
        })?
    }

    fn resolve(&self) -> Result<Config, Error> {
        let mut raw = RawConfig::default();
        for layer in &self.layers {
            let padded = layer.padded();
            let this: RawConfig = toml::from_str(&padded).map_err(|e| {
                let local = e.span().map(|s| s.start.saturating_sub(layer.base));
                let jail = local.and_then(|s| Resolver::jail_at(&layer.text, s));
                Error::new(
                    &layer.path,
                    local.map(|s| layer.line(s)),
                    jail.as_deref(),
                    ErrorKind::Syntax(e.message().trim().to_string()),
                )
            })?;
            raw.overlay(this);
        }

        let daemon = raw.daemon.unwrap_or_default();
        let state_dir = absolute_path(self, &daemon.state_dir, "state_dir", "/var/lib/banjo")?;
        let socket = absolute_path(self, &daemon.socket, "socket", "/run/banjo/banjo.sock")?;
        let socket_group = match &daemon.socket_group {
            Some(g) => Some(lookup_group(g.get_ref()).ok_or_else(|| {
                self.bad(
                    g.span(),
                    "",
                    "socket_group",
                    format!("no group {:?} on this system", g.get_ref()),
                )
            })?),
            None => None,
        };

        let journal = raw.journal.unwrap_or_default();
        let journal = match (&journal.directory, &journal.namespace) {
            (Some(d), Some(_)) => {
                return Err(self.bad(
                    d.span(),
                    "",
                    "journal",
                    "set either directory or namespace, not both".into(),
                ))
            }
            (Some(d), None) => Source::Directory(PathBuf::from(d.get_ref())),
            (None, Some(n)) if n.get_ref().is_empty() => {
                return Err(self.bad(n.span(), "", "namespace", "must not be empty".into()))
            }
            (None, Some(n)) => Source::Namespace(n.get_ref().clone()),
            (None, None) => Source::System,
        };

        let table = match raw.firewall.and_then(|f| f.table) {
            Some(t) if valid_name(t.get_ref(), 32) => t.into_inner(),
            Some(t) => {
                return Err(self.bad(
                    t.span(),
                    "",
                    "table",
                    format!(
                        "{:?} is not a valid table name (letters, digits, _ . -; at most 32)",
                        t.get_ref()
                    ),
                ))
            }
            None => "banjo".to_string(),
        };

        let fail2ban_filter_dir = absolute_path(
            self,
            &raw.fail2ban.and_then(|f| f.filter_dir),
            "filter_dir",
            "/etc/fail2ban/filter.d",
        )?;
        let defaults = raw.defaults.unwrap_or_default();
        let mut jails = Vec::new();
        let mut disabled = Vec::new();
        for (name, jail) in &raw.jail {
            let n = name.get_ref();
            if !valid_name(n, 64) {
                return Err(self.err(
                    Some(name.span()),
                    n,
                    ErrorKind::BadValue {
                        key: "name",
                        reason: "jail names are letters, digits, _ . - (at most 64)".into(),
                    },
                ));
            }
            let enabled = pick(&jail.enabled, &defaults.enabled)
                .map(|v| *v.get_ref())
                .unwrap_or(true);
            // Validate disabled jails too: a typo should not wait until the
            // day someone enables the jail.
            let resolved = self.jail(n, jail, &defaults, &fail2ban_filter_dir)?;
            if enabled {
                jails.push(resolved);
            } else {
                disabled.push(n.clone());
            }
        }
        if jails.len() > MAX_JAILS {
            return Err(self.err(
                None,
                "",
                ErrorKind::BadValue {
                    key: "jail",
                    reason: format!(
                        "{} jails enabled, at most {MAX_JAILS} are supported",
                        jails.len()
                    ),
                },
            ));
        }
        Ok(Config {
            path: self.main_path().to_path_buf(),
            state_dir,
            socket,
            socket_group,
            journal,
            table,
            fail2ban_filter_dir,
            jails,
            disabled,
        })
    }

    fn jail(
        &self,
        name: &str,
        jail: &RawJail,
        defaults: &RawJail,
        filter_dir: &Path,
    ) -> Result<Jail, Error> {
        let filter = match pick(&jail.filter, &defaults.filter) {
            Some(f) => Some(self.filter(name, f, filter_dir)?),
            None => None,
        };

        // failregex: the filter's, then the jail's own (a jail may extend a filter).
        let mut failregex: Vec<String> = filter
            .as_ref()
            .map(|f| f.failregex.clone())
            .unwrap_or_default();
        let builtin_count = failregex.len();
        let own_failregex = pick(&jail.failregex, &defaults.failregex);
        if let Some(list) = own_failregex {
            failregex.extend(list.get_ref().iter().map(|s| s.get_ref().clone()));
        }
        if failregex.is_empty() {
            let span = own_failregex
                .map(|l| l.span())
                .or_else(|| Some(self.jail_header(name)));
            return Err(self.err(span, name, ErrorKind::NoFailregex));
        }
        let own_ignoreregex = pick(&jail.ignoreregex, &defaults.ignoreregex);
        let mut ignoreregex: Vec<String> = filter
            .as_ref()
            .map(|f| f.ignoreregex.clone())
            .unwrap_or_default();
        let builtin_ignore_count = ignoreregex.len();
        if let Some(list) = own_ignoreregex {
            ignoreregex.extend(list.get_ref().iter().map(|s| s.get_ref().clone()));
        }

        let filter_match = filter.as_ref().and_then(|f| f.journalmatch.clone());
        let journalmatch = match (
            pick(&jail.journalmatch, &defaults.journalmatch),
            filter_match,
        ) {
            (Some(list), _) => self.journalmatch(name, list)?,
            (None, Some(terms)) => {
                parse_journalmatch(terms.iter().map(String::as_str)).map_err(|reason| {
                    let span = pick(&jail.filter, &defaults.filter)
                        .map(|f| f.span())
                        .unwrap_or(0..0);
                    self.bad(
                        span,
                        name,
                        "journalmatch",
                        format!("from the filter: {reason}"),
                    )
                })?
            }
            (None, None) => parse_journalmatch(DEFAULT_JOURNALMATCH.iter().copied())
                .map_err(|reason| self.bad(0..0, name, "journalmatch", reason))?,
        };

        let maxretry = match pick(&jail.maxretry, &defaults.maxretry) {
            Some(v) => u32::try_from(*v.get_ref())
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    self.bad(
                        v.span(),
                        name,
                        "maxretry",
                        format!("{} is not a count of at least 1", v.get_ref()),
                    )
                })?,
            None => 5,
        };
        let findtime = match pick(&jail.findtime, &defaults.findtime) {
            Some(v) => self.duration(name, "findtime", v)?,
            None => Duration::from_secs(600),
        };
        if findtime.is_zero() {
            let span = pick(&jail.findtime, &defaults.findtime).map(|v| v.span());
            return Err(self.err(
                span,
                name,
                ErrorKind::BadValue {
                    key: "findtime",
                    reason: "must be longer than 0s".into(),
                },
            ));
        }
        let bantime = match pick(&jail.bantime, &defaults.bantime) {
            Some(v) => {
                let text = match v.get_ref() {
                    DurationValue::Seconds(n) => n.to_string(),
                    DurationValue::Text(t) => t.clone(),
                };
                match parse_bantime(&text) {
                    Some(crate::jail::Bantime::For(d)) if d.is_zero() => {
                        return Err(self.bad(v.span(), name, "bantime", "must be longer than 0s (or -1 for permanent)".into()))
                    }
                    Some(b) => b,
                    None => {
                        return Err(self.bad(v.span(), name, "bantime", format!("{text:?} is not a duration (e.g. 600, 10m, 1h, 12h, 1d, 1w, or -1 for permanent)")))
                    }
                }
            }
            None => crate::jail::Bantime::For(Duration::from_secs(600)),
        };

        let increment = self.increment(name, jail, defaults)?;
        let ipv6_prefix = match pick(&jail.ipv6_prefix, &defaults.ipv6_prefix) {
            Some(len) => {
                let len_ok = u8::try_from(*len.get_ref())
                    .ok()
                    .filter(|l| (1..=127).contains(l));
                let len = len_ok.ok_or_else(|| {
                    self.bad(
                        len.span(),
                        name,
                        "ipv6_prefix",
                        format!("{} is not a prefix length (1-127)", len.get_ref()),
                    )
                })?;
                let threshold =
                    match pick(&jail.ipv6_prefix_threshold, &defaults.ipv6_prefix_threshold) {
                        Some(t) => u32::try_from(*t.get_ref())
                            .ok()
                            .filter(|n| *n >= 2)
                            .ok_or_else(|| {
                                self.bad(
                                    t.span(),
                                    name,
                                    "ipv6_prefix_threshold",
                                    format!("{} is not a count of at least 2", t.get_ref()),
                                )
                            })?,
                        None => 3,
                    };
                Some(crate::jail::PrefixPolicy { len, threshold })
            }
            None => None,
        };

        let mut ignoreip = Vec::new();
        if let Some(v) = pick(&jail.ignoreip, &defaults.ignoreip) {
            for word in v.get_ref().words() {
                if let Some(file) = word.strip_prefix("file:") {
                    let nets = read_ip_list(Path::new(file))
                        .map_err(|reason| self.bad(v.span(), name, "ignoreip", reason))?;
                    ignoreip.extend(nets);
                    continue;
                }
                let net: IpNet = word.parse().map_err(|e: crate::net::ParseIpNetError| {
                    self.bad(v.span(), name, "ignoreip", e.to_string())
                })?;
                ignoreip.push(net);
            }
        }

        let protocol = match pick(&jail.protocol, &defaults.protocol) {
            Some(p) => match p.get_ref().to_ascii_lowercase().as_str() {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                other => {
                    return Err(self.bad(
                        p.span(),
                        name,
                        "protocol",
                        format!("{other:?} is not tcp or udp"),
                    ))
                }
            },
            None => Protocol::Tcp,
        };

        let allports = pick(&jail.allports, &defaults.allports)
            .map(|v| *v.get_ref())
            .unwrap_or(false);
        let ports = match (allports, pick(&jail.port, &defaults.port)) {
            (true, Some(p)) if jail.port.is_some() && jail.allports.is_some() => {
                return Err(self.bad(
                    p.span(),
                    name,
                    "port",
                    "set either port or allports = true, not both".into(),
                ))
            }
            (true, _) => Ports::All,
            (false, Some(p)) => {
                let words = p.get_ref().words();
                if words.is_empty() {
                    return Err(self.bad(
                        p.span(),
                        name,
                        "port",
                        "empty port list (use allports = true to block every port)".into(),
                    ));
                }
                let mut ranges = Vec::new();
                for w in words {
                    let r = self
                        .services
                        .range(&w, protocol)
                        .map_err(|reason| self.bad(p.span(), name, "port", reason))?;
                    ranges.push(r);
                }
                Ports::List(ranges)
            }
            (false, None) => Ports::All,
        };

        let resolved = Jail {
            name: name.to_string(),
            journalmatch,
            failregex,
            ignoreregex,
            input: filter.as_ref().map_or(FilterInput::Message, |f| f.input),
            maxretry,
            findtime,
            bantime,
            increment,
            ignoreip,
            ipv6_prefix,
            ignoreself: pick(&jail.ignoreself, &defaults.ignoreself).map_or(true, |v| *v.get_ref()),
            ports,
            protocol,
        };
        self.check_regexes(
            &resolved,
            (builtin_count, builtin_ignore_count),
            own_failregex,
            own_ignoreregex,
        )?;
        Ok(resolved)
    }

    /// Resolves `filter = "NAME[args]"`: banjo's built-ins first, then
    /// fail2ban's filter files.
    fn filter(
        &self,
        jail: &str,
        spec: &Spanned<String>,
        dir: &Path,
    ) -> Result<crate::fail2ban::ImportedFilter, Error> {
        if let Some(b) = BUILTINS.iter().find(|b| b.name == spec.get_ref()) {
            return Ok(crate::fail2ban::ImportedFilter {
                failregex: b.failregex.iter().map(|s| s.to_string()).collect(),
                ignoreregex: b.ignoreregex.iter().map(|s| s.to_string()).collect(),
                journalmatch: None,
                input: FilterInput::Message,
            });
        }
        crate::fail2ban::load_filter(spec.get_ref(), dir)
            .map_err(|e| self.bad(spec.span(), jail, "filter", e.to_string()))
    }

    /// The `bantime_*` escalation keys; `None` unless `bantime_increment`.
    fn increment(
        &self,
        name: &str,
        jail: &RawJail,
        defaults: &RawJail,
    ) -> Result<Option<Increment>, Error> {
        let on = pick(&jail.bantime_increment, &defaults.bantime_increment)
            .is_some_and(|v| *v.get_ref());
        if !on {
            return Ok(None);
        }
        let factor = match pick(&jail.bantime_factor, &defaults.bantime_factor) {
            Some(v) if v.get_ref().is_finite() && *v.get_ref() > 0.0 => *v.get_ref(),
            Some(v) => {
                return Err(self.bad(
                    v.span(),
                    name,
                    "bantime_factor",
                    format!("{} is not a positive number", v.get_ref()),
                ))
            }
            None => 1.0,
        };
        let mut multipliers = Vec::new();
        if let Some(v) = pick(&jail.bantime_multipliers, &defaults.bantime_multipliers) {
            for w in v.get_ref().words() {
                match w.parse::<f64>() {
                    Ok(m) if m.is_finite() && m > 0.0 => multipliers.push(m),
                    _ => {
                        return Err(self.bad(
                            v.span(),
                            name,
                            "bantime_multipliers",
                            format!("{w:?} is not a positive number"),
                        ))
                    }
                }
            }
        }
        let maxtime = match pick(&jail.bantime_maxtime, &defaults.bantime_maxtime) {
            Some(v) => Some(self.duration(name, "bantime_maxtime", v)?),
            None => None,
        };
        let rndtime = match pick(&jail.bantime_rndtime, &defaults.bantime_rndtime) {
            Some(v) => Some(self.duration(name, "bantime_rndtime", v)?),
            None => None,
        };
        let overalljails = pick(&jail.bantime_overalljails, &defaults.bantime_overalljails)
            .is_some_and(|v| *v.get_ref());
        Ok(Some(Increment {
            factor,
            multipliers,
            maxtime,
            rndtime,
            overalljails,
        }))
    }

    /// Compiles the jail's regexes alone, so a broken one is reported at
    /// its own line rather than when the whole filter is built.
    fn check_regexes(
        &self,
        jail: &Jail,
        (builtin_count, builtin_ignore_count): (usize, usize),
        failregex: Option<&Spanned<Vec<Spanned<String>>>>,
        ignoreregex: Option<&Spanned<Vec<Spanned<String>>>>,
    ) -> Result<(), Error> {
        let Err(e) = crate::filter::Filter::new(std::slice::from_ref(jail)) else {
            return Ok(());
        };
        let span = match e.kind() {
            crate::filter::PatternKind::Failregex => e
                .index()
                .and_then(|i| i.checked_sub(builtin_count))
                .and_then(|i| failregex.and_then(|l| l.get_ref().get(i)))
                .map(|s| s.span())
                .or_else(|| failregex.map(|l| l.span())),
            crate::filter::PatternKind::Ignoreregex => e
                .index()
                .and_then(|i| i.checked_sub(builtin_ignore_count))
                .and_then(|i| ignoreregex.and_then(|l| l.get_ref().get(i)))
                .map(|s| s.span())
                .or_else(|| ignoreregex.map(|l| l.span())),
        };
        Err(self.err(
            span.or_else(|| Some(self.jail_header(&jail.name))),
            &jail.name,
            ErrorKind::BadRegex(match e.index() {
                Some(i) => format!("{} {i}: {}", e.kind(), e.reason()),
                None => format!("{}: {}", e.kind(), e.reason()),
            }),
        ))
    }

    /// Span of the first `[jail.NAME]` header, for errors about a
    /// missing key.
    fn jail_header(&self, name: &str) -> std::ops::Range<usize> {
        let needle = format!("[jail.{name}]");
        let quoted = format!("[jail.\"{name}\"]");
        let at = self
            .layers
            .iter()
            .find_map(|l| {
                l.text
                    .find(&needle)
                    .or_else(|| l.text.find(&quoted))
                    .map(|at| l.base + at)
            })
            .unwrap_or(0);
        at..at
    }

    fn duration(
        &self,
        jail: &str,
        key: &'static str,
        v: &Spanned<DurationValue>,
    ) -> Result<Duration, Error> {
        let parsed = match v.get_ref() {
            DurationValue::Seconds(n) => u64::try_from(*n).ok().map(Duration::from_secs),
            DurationValue::Text(t) => parse_duration(t),
        };
        parsed.ok_or_else(|| {
            let shown = match v.get_ref() {
                DurationValue::Seconds(n) => n.to_string(),
                DurationValue::Text(t) => format!("{t:?}"),
            };
            self.bad(
                v.span(),
                jail,
                key,
                format!("{shown} is not a duration (e.g. 600, 10m, 1h, 12h, 1d, 1w)"),
            )
        })
    }

    fn journalmatch(
        &self,
        jail: &str,
        list: &Spanned<Vec<Spanned<String>>>,
    ) -> Result<JournalMatch, Error> {
        if list.get_ref().is_empty() {
            return Err(self.bad(list.span(), jail, "journalmatch", "empty list".into()));
        }
        for term in list.get_ref() {
            parse_journalmatch(std::iter::once(term.get_ref().as_str()))
                .map_err(|reason| self.bad(term.span(), jail, "journalmatch", reason))?;
        }
        parse_journalmatch(list.get_ref().iter().map(|s| s.get_ref().as_str()))
            .map_err(|reason| self.bad(list.span(), jail, "journalmatch", reason))
    }
}

/// Parses journalmatch terms: `FIELD=value` words, with `+` between groups
/// as fail2ban and journalctl write it. A single string may hold several
/// space-separated terms.
pub fn parse_journalmatch<'a>(
    terms: impl Iterator<Item = &'a str>,
) -> Result<JournalMatch, String> {
    let mut groups = vec![Vec::new()];
    for word in terms.flat_map(str::split_whitespace) {
        if word == "+" {
            groups.push(Vec::new());
            continue;
        }
        let (field, value) = word
            .split_once('=')
            .ok_or_else(|| format!("{word:?} is not FIELD=value"))?;
        let field_ok = !field.is_empty()
            && field
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            && !field.as_bytes()[0].is_ascii_digit();
        if !field_ok {
            return Err(format!(
                "{field:?} is not a journal field name (upper-case letters, digits, _)"
            ));
        }
        if let Some(group) = groups.last_mut() {
            group.push(MatchTerm {
                field: field.to_string(),
                value: value.to_string(),
            });
        }
    }
    if groups.iter().any(Vec::is_empty) {
        return Err("empty group (a '+' at the start, the end, or twice)".into());
    }
    for g in &mut groups {
        g.sort();
    }
    Ok(JournalMatch { groups })
}

/// An `ignoreip = "file:PATH"` list: one address or network per line,
/// `#` comments and blank lines allowed.
fn read_ip_list(path: &Path) -> Result<Vec<IpNet>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut nets = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        for word in line.split_whitespace() {
            let net = word
                .parse::<IpNet>()
                .map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
            nets.push(net);
        }
    }
    Ok(nets)
}

/// A group's gid by name (or a number).
fn lookup_group(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

fn pick<'a, T>(jail: &'a Option<T>, defaults: &'a Option<T>) -> Option<&'a T> {
    jail.as_ref().or(defaults.as_ref())
}

fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn absolute_path(
    r: &Resolver,
    value: &Option<Spanned<String>>,
    key: &'static str,
    default: &str,
) -> Result<PathBuf, Error> {
    match value {
        Some(v) if Path::new(v.get_ref()).is_absolute() => Ok(PathBuf::from(v.get_ref())),
        Some(v) => Err(r.bad(
            v.span(),
            "",
            key,
            format!("{:?} is not an absolute path", v.get_ref()),
        )),
        None => Ok(PathBuf::from(default)),
    }
}
