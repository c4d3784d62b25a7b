//! `banjo import [PATH]`: a fail2ban jail configuration
//! (default `/etc/fail2ban/jail.local`) printed as an equivalent
//! banjo.toml.
//!
//! Each enabled jail becomes `[jail.NAME]` with the options banjo shares
//! with fail2ban (`filter`, `maxretry`, `findtime`, `bantime` and its
//! `bantime.*` escalation, `ignoreip`, `ignoreself`, `journalmatch`,
//! `port`, `protocol`). The ports and protocol of a ban action's arguments
//! (`action = iptables-multiport[port="...", protocol=tcp]`) win over the
//! jail's, as in fail2ban. A jail's `mode` becomes a filter argument. Every
//! option banjo does not use (`logpath`, `backend`, the action itself,
//! ...) is listed under the jail as a comment, never dropped silently;
//! disabled jails are named in a comment. A `filter.d` directory next to
//! the file becomes `[fail2ban] filter_dir`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::fail2ban::jails::{self, JailEntry};
use crate::fail2ban::parse_spec;

use super::{usage, EXIT_CONFIG};

const DEFAULT_PATH: &str = "/etc/fail2ban/jail.local";

/// Options that carry over under the same name (`.` becomes `_`).
const SHARED: &[&str] = &[
    "maxretry",
    "findtime",
    "bantime",
    "bantime.increment",
    "bantime.factor",
    "bantime.multipliers",
    "bantime.maxtime",
    "bantime.rndtime",
    "bantime.overalljails",
    "ignoreip",
    "ignoreself",
];

/// fail2ban's jail options (what it reads from a jail section; any other
/// key there is only a variable for interpolation).
const JAIL_OPTIONS: &[&str] = &[
    "backend",
    "maxmatches",
    "ignorecommand",
    "ignorecache",
    "logtimezone",
    "logencoding",
    "logpath",
    "usedns",
    "prefregex",
    "failregex",
    "ignoreregex",
    "maxlines",
    "datepattern",
    "bantime.formula",
    "banaction",
    "banaction_allports",
    "chain",
];

/// Options banjo takes care of itself or folds into others.
const HANDLED: &[&str] = &[
    "enabled",
    "filter",
    "port",
    "protocol",
    "mode",
    "journalmatch",
    "action",
];

/// Runs `banjo import`.
pub(crate) fn main(args: &[String]) -> ExitCode {
    let path = match args {
        [] => PathBuf::from(DEFAULT_PATH),
        [p] if !p.starts_with('-') => PathBuf::from(p),
        _ => return usage("banjo import takes one optional PATH"),
    };
    match render(&path) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A duration or count as banjo.toml writes it: a bare integer, or a
/// quoted string (`"10m"`).
fn number_or_string(v: &str) -> String {
    let v = v.trim();
    if v.parse::<i64>().is_ok() {
        v.to_string()
    } else {
        quote(v)
    }
}

fn words(v: &str) -> Vec<String> {
    v.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

fn list(items: &[String]) -> String {
    let q: Vec<String> = items.iter().map(|w| quote(w)).collect();
    format!("[{}]", q.join(", "))
}

/// The banjo.toml text for the jail files `path` stands for.
pub(crate) fn render(path: &Path) -> Result<String, String> {
    let files = jails::read(path).map_err(|e| e.to_string())?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# banjo.toml imported by `banjo import` from {}.",
        files
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    out.push_str("# Check it with `banjo config check --config FILE`.\n");
    let filter_dir = path.parent().map(|d| d.join("filter.d"));
    if let Some(dir) = filter_dir.filter(|d| d.is_dir()) {
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        if dir != Path::new("/etc/fail2ban/filter.d") {
            let _ = writeln!(
                out,
                "\n[fail2ban]\nfilter_dir = {}",
                quote(&dir.to_string_lossy())
            );
        }
    }
    let disabled: Vec<&str> = files
        .jails
        .iter()
        .filter(|j| !j.enabled)
        .map(|j| j.name.as_str())
        .collect();
    for jail in files.jails.iter().filter(|j| j.enabled) {
        out.push('\n');
        render_jail(jail, &mut out);
    }
    if !disabled.is_empty() {
        let _ = writeln!(
            out,
            "\n# Not enabled in fail2ban, not imported: {}",
            disabled.join(", ")
        );
    }
    Ok(out)
}

fn render_jail(jail: &JailEntry, out: &mut String) {
    let _ = writeln!(out, "[jail.{}]", quote_key(&jail.name));
    out.push_str("enabled = true\n");
    let mut notes: Vec<String> = Vec::new();
    // filter, with the jail's `mode` as an argument when it has none.
    let filter = jail.get("filter").map(str::trim).filter(|f| !f.is_empty());
    let filter = filter.unwrap_or(&jail.name).to_string();
    match parse_spec(&filter) {
        Ok((name, mut args)) => {
            if let Some(mode) = jail.get("mode").filter(|m| !m.trim().is_empty()) {
                if !args.iter().any(|(k, _)| k == "mode") {
                    args.push(("mode".into(), mode.trim().to_string()));
                }
            }
            let spec = if args.is_empty() {
                name
            } else {
                let a: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{name}[{}]", a.join(", "))
            };
            let _ = writeln!(out, "filter = {}", quote(&spec));
        }
        Err(e) => notes.push(format!("filter = {filter}   (not understood: {e})")),
    }
    for key in SHARED {
        let Some(v) = jail.get(key) else { continue };
        let v = v.trim();
        if v.is_empty() {
            continue;
        }
        let name = key.replace('.', "_");
        let value = match *key {
            "ignoreip" | "bantime.multipliers" => list(&words(v)),
            "bantime.increment" | "bantime.overalljails" | "ignoreself" => {
                jails::as_bool(v).to_string()
            }
            "bantime.factor" => match v.parse::<f64>() {
                Ok(f) => format!("{f:?}"),
                Err(_) => {
                    notes.push(format!("{key} = {v}   (not a number)"));
                    continue;
                }
            },
            _ => number_or_string(v),
        };
        let _ = writeln!(out, "{name} = {value}");
    }
    if let Some(m) = jail.get("journalmatch").filter(|m| !m.trim().is_empty()) {
        let terms: Vec<String> = m.split_whitespace().map(str::to_string).collect();
        let _ = writeln!(out, "journalmatch = {}", list(&terms));
    }
    // Ports and protocol: the action's arguments win over the jail's.
    let mut port = jail.get("port").map(str::to_string);
    let mut protocol = jail.get("protocol").map(str::to_string);
    if let Some(actions) = jail.get("action").filter(|a| !a.trim().is_empty()) {
        let mut from_action = false;
        for action in actions.split('\n').map(str::trim).filter(|a| !a.is_empty()) {
            if let Ok((_, args)) = parse_spec(action) {
                for (k, v) in args {
                    match k.as_str() {
                        "port" if !from_action => port = Some(v),
                        "protocol" if !from_action => protocol = Some(v),
                        _ => {}
                    }
                }
            }
            from_action = true;
            notes.push(format!(
                "action = {action}   (banjo bans with its own nftables sets; ports and protocol taken from it)"
            ));
        }
    }
    if let Some(p) = port.map(|p| p.trim().to_string()).filter(|p| !p.is_empty()) {
        let all = matches!(p.as_str(), "0:65535" | "1:65535" | "all" | "any");
        if all {
            out.push_str("allports = true\n");
        } else {
            let _ = writeln!(out, "port = {}", quote(&words(&p).join(",")));
        }
    }
    if let Some(p) = protocol.map(|p| p.trim().to_ascii_lowercase()) {
        if p == "tcp" || p == "udp" {
            let _ = writeln!(out, "protocol = {}", quote(&p));
        } else if !p.is_empty() {
            notes.push(format!("protocol = {p}   (banjo bans tcp or udp ports)"));
        }
    }
    for (k, v) in &jail.options {
        if SHARED.contains(&k.as_str()) || HANDLED.contains(&k.as_str()) || k == "__name__" {
            continue;
        }
        // Inherited variables (paths, mail settings...) are not options.
        if !jail.own.contains(k) && !JAIL_OPTIONS.contains(&k.as_str()) {
            continue;
        }
        let v = match v {
            Ok(v) if v.trim().is_empty() => continue,
            Ok(v) => v.clone(),
            Err(e) => format!("(not interpolated: {e})"),
        };
        let one_line = v.split('\n').collect::<Vec<_>>().join(" ");
        notes.push(format!("{k} = {one_line}"));
    }
    if !notes.is_empty() {
        out.push_str("# fail2ban options banjo does not use:\n");
        for n in notes {
            let _ = writeln!(out, "#   {n}");
        }
    }
}

/// A jail name as a TOML key (quoted unless bare-key safe).
fn quote_key(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        name.to_string()
    } else {
        quote(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::jail::{Bantime, FilterInput, Ports, Protocol};
    use std::time::Duration;

    fn tutorial() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/tutorial/jail.local")
    }

    #[test]
    fn tutorial_round_trips() {
        let text = render(&tutorial()).unwrap();
        let config = Config::parse(Path::new("imported.toml"), &text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.jails.len(), 2, "{text}");
        let by_name = |n: &str| config.jails.iter().find(|j| j.name == n).unwrap();
        let flood = by_name("postfix-flood-attack");
        assert_eq!(flood.maxretry, 4);
        assert_eq!(flood.bantime, Bantime::For(Duration::from_secs(600)));
        let ignore: Vec<String> = flood.ignoreip.iter().map(|n| n.to_string()).collect();
        assert_eq!(ignore.len(), 3, "{ignore:?}");
        assert!(ignore[2].starts_with("12.34.56.78"), "{ignore:?}");
        assert_eq!(flood.input, FilterInput::Fail2banLine);
        assert_eq!(
            flood.failregex,
            vec![r"lost connection after AUTH from (.*)\[<HOST>\]"]
        );
        match &flood.ports {
            Ports::List(l) => assert_eq!(l.len(), 9, "{l:?}"),
            Ports::All => panic!("ports lost"),
        }
        assert_eq!(flood.protocol, Protocol::Tcp);
        let postfix = by_name("postfix");
        assert_eq!(postfix.maxretry, 3);
        assert_eq!(postfix.bantime, Bantime::For(Duration::from_secs(3600)));
        assert_eq!(postfix.input, FilterInput::Message);
        assert_eq!(
            postfix.failregex.len(),
            crate::filter::POSTFIX_FAILREGEX.len()
        );
        for unsupported in [
            "#   logpath = /var/log/mail.log",
            "#   action = iptables-multiport",
        ] {
            assert!(text.contains(unsupported), "{unsupported} missing:\n{text}");
        }
    }

    #[test]
    fn modes_and_missing_files() {
        let dir = std::env::temp_dir().join(format!("banjo-import-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("my.conf");
        std::fs::write(
            &f,
            "[DEFAULT]\nbantime = 1h\nbackend = systemd\n[sshd]\nenabled = yes\nmode = aggressive\nport = ssh\n[off]\nenabled = false\n",
        )
        .unwrap();
        let text = render(&f).unwrap();
        assert!(
            text.contains("filter = \"sshd[mode=aggressive]\""),
            "{text}"
        );
        assert!(text.contains("bantime = \"1h\""), "{text}");
        assert!(text.contains("#   backend = systemd"), "{text}");
        assert!(text.contains("not imported: off"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(render(&dir.join("nothing.local")).is_err());
    }
}
