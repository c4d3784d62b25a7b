//! `banjo status`, `ban`, `unban`, `reload`, `stats`: requests to the
//! running daemon over the control socket, printed as tables on a
//! terminal or as JSON with `--json`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::Value;

use super::usage;
use crate::config;
use crate::control::{self, Request, Response};

/// Exit code when the daemon cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code when the daemon refuses for lack of permission.
pub const EXIT_DENIED: u8 = 4;

struct Options {
    json: bool,
    socket: Option<PathBuf>,
    config: PathBuf,
    jail: Option<String>,
    all: bool,
    duration: Option<String>,
    words: Vec<String>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        json: false,
        socket: None,
        config: PathBuf::from(config::DEFAULT_PATH),
        jail: None,
        all: false,
        duration: None,
        words: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--json" => o.json = true,
            "--all" => o.all = true,
            "--socket" => o.socket = Some(PathBuf::from(value("--socket")?)),
            "--config" | "-c" => o.config = PathBuf::from(value("--config")?),
            "--jail" => o.jail = Some(value("--jail")?),
            "--for" => o.duration = Some(value("--for")?),
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            w => o.words.push(w.to_string()),
        }
    }
    Ok(o)
}

/// Runs control command `cmd` with its arguments.
pub fn main(cmd: &str, args: &[String]) -> ExitCode {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => return usage(&e),
    };
    let request = match (cmd, o.words.as_slice()) {
        ("status", []) => Request::Status { jail: None },
        ("status", [jail]) => Request::Status {
            jail: Some(jail.clone()),
        },
        ("ban", [jail, ips @ ..]) if !ips.is_empty() => Request::Ban {
            jail: jail.clone(),
            ips: ips.to_vec(),
            duration: o.duration.clone(),
        },
        ("unban", ips) if !ips.is_empty() => {
            if o.all && o.jail.is_some() {
                return usage("use either --jail JAIL or --all");
            }
            Request::Unban {
                ips: ips.to_vec(),
                jail: o.jail.clone(),
            }
        }
        ("reload", []) => Request::Reload,
        ("stats", []) => Request::Stats,
        _ => return usage(&format!("wrong arguments for {cmd}")),
    };
    let socket = o
        .socket
        .clone()
        .unwrap_or_else(|| config::socket_path(&o.config));
    let response = match control::request(&socket, &request) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("banjo: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    print(cmd, &o, &response)
}

fn print(cmd: &str, o: &Options, response: &Response) -> ExitCode {
    if !response.ok {
        let error = response.error.as_deref().unwrap_or("failed");
        if o.json {
            println!("{}", serde_json::json!({ "error": error }));
        } else {
            eprintln!("banjo: {error}");
        }
        return if error.starts_with("permission denied") {
            ExitCode::from(EXIT_DENIED)
        } else {
            ExitCode::from(super::EXIT_FAILURE)
        };
    }
    let data = response.data.clone().unwrap_or(Value::Null);
    if o.json || !std::io::stdout().is_terminal() && cmd != "status" {
        println!("{data}");
        return ExitCode::SUCCESS;
    }
    match cmd {
        "status" => print_status(&data),
        "ban" => {
            for b in data["banned"].as_array().into_iter().flatten() {
                println!(
                    "[{}] Ban {} for {}",
                    b["jail"].as_str().unwrap_or("?"),
                    b["ip"].as_str().unwrap_or("?"),
                    human_secs(b["bantime"].as_i64())
                );
            }
        }
        "unban" => {
            for b in data["unbanned"].as_array().into_iter().flatten() {
                println!(
                    "[{}] Unban {}",
                    b["jail"].as_str().unwrap_or("?"),
                    b["ip"].as_str().unwrap_or("?")
                );
            }
        }
        "reload" => println!("reloaded: {} jails", data["jails"]),
        _ => print_stats(&data),
    }
    ExitCode::SUCCESS
}

fn print_status(data: &Value) {
    let one = data.get("name").is_some();
    let jails: Vec<&Value> = if one {
        vec![data]
    } else {
        data["jails"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    };
    let width = jails
        .iter()
        .filter_map(|j| j["name"].as_str())
        .map(str::len)
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:<width$}  {:>8}  {:>8}  {:>8}  {:>8}  {:>10}",
        "JAIL", "FAILING", "FAILED", "BANNED", "BANS", "REFUSED"
    );
    for j in &jails {
        println!(
            "{:<width$}  {:>8}  {:>8}  {:>8}  {:>8}  {:>10}",
            j["name"].as_str().unwrap_or("?"),
            cell(&j["currently_failed"]),
            cell(&j["total_failed"]),
            cell(&j["currently_banned"]),
            cell(&j["total_banned"]),
            cell(&j["refused"]["packets"]),
        );
    }
    if one {
        let banned = data["banned"].as_array().cloned().unwrap_or_default();
        if banned.is_empty() {
            return;
        }
        println!();
        println!(
            "{:<39}  {:>10}  {:>10}  {:>4}",
            "BANNED", "EXPIRES", "BANTIME", "BANS"
        );
        for b in banned {
            println!(
                "{:<39}  {:>10}  {:>10}  {:>4}",
                b["ip"].as_str().unwrap_or("?"),
                human_secs(b["expires"].as_i64().or(Some(-1))),
                human_secs(b["timeout"].as_i64().or(Some(-1))),
                cell(&b["bans"]),
            );
        }
    }
}

fn print_stats(data: &Value) {
    if let Some(obj) = data.as_object() {
        for (k, v) in obj {
            if k != "jails" {
                println!("{k:<16} {v}");
            }
        }
    }
    for j in data["jails"].as_array().into_iter().flatten() {
        println!(
            "jail {:<24} failures {:>8}  bans {:>8}",
            j["name"].as_str().unwrap_or("?"),
            cell(&j["failures"]),
            cell(&j["bans"])
        );
    }
}

/// A JSON number or string as table text (a `Value` ignores widths);
/// `-` when absent.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `3725` → `1h2m5s`; negative → `permanent`.
fn human_secs(secs: Option<i64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s < 0 => "permanent".into(),
        Some(mut s) => {
            let mut out = String::new();
            for (unit, len) in [("d", 86_400), ("h", 3600), ("m", 60)] {
                if s >= len {
                    out.push_str(&format!("{}{unit}", s / len));
                    s %= len;
                }
            }
            if s > 0 || out.is_empty() {
                out.push_str(&format!("{s}s"));
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::human_secs;

    #[test]
    fn durations_read_like_fail2ban() {
        assert_eq!(human_secs(Some(3725)), "1h2m5s");
        assert_eq!(human_secs(Some(600)), "10m");
        assert_eq!(human_secs(Some(0)), "0s");
        assert_eq!(human_secs(Some(-1)), "permanent");
        assert_eq!(human_secs(None), "-");
    }
}
