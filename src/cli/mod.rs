//! The command line: argv to subcommand, exit codes.
//!
//! Exit codes: 0 success; 1 a runtime failure (firewall, journal, state)
//! or a request the daemon refused (unknown jail, address not banned);
//! 2 a configuration or usage error; 3 the daemon cannot be reached;
//! 4 permission denied.

mod blocks;
mod check;
mod control;
mod hosts;
mod import;

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{self, Config};
use crate::jail::{Bantime, Ports};

const USAGE: &str = "\
usage: banjo run [--config PATH]
       banjo config check [--config PATH]
       banjo status [JAIL] [--json]
       banjo ban JAIL IP... [--for DURATION] [--json]
       banjo unban IP... [--jail JAIL | --all] [--json]
       banjo reload [--json]
       banjo stats [--json]
       banjo check (--filter NAME[ARGS] | --filter PATH.conf[ARGS] | --config PATH --jail NAME)
                   [--filter-dir DIR] [--print-missed] [--json]
                   (FILE | - | --journal [--journal-dir DIR] [--since T] [--until T] [FIELD=value ...])
       banjo import [PATH]   (a fail2ban jail.local as banjo.toml; default /etc/fail2ban/jail.local)

The control commands reach the daemon through the socket named in the
configuration (--config PATH) or given with --socket PATH.

Reads the systemd journal, matches every jail's failregexes with one DFA,
and bans through nftables sets whose elements carry kernel timeouts.
Default configuration: /etc/banjo/banjo.toml";

/// Exit code of a configuration or usage error.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code of a runtime failure.
pub const EXIT_FAILURE: u8 = 1;

/// Runs the command line given in `args` (without the program name).
pub fn main(args: Vec<String>) -> ExitCode {
    let mut words = args.into_iter();
    let command = words.next();
    let rest: Vec<String> = words.collect();
    match command.as_deref() {
        Some("run") => match config_path(&rest) {
            Ok(path) => run(path),
            Err(e) => usage(&e),
        },
        Some("config") if rest.first().map(String::as_str) == Some("check") => {
            match config_path(&rest[1..]) {
                Ok(path) => config_check(path),
                Err(e) => usage(&e),
            }
        }
        Some(cmd @ ("status" | "ban" | "unban" | "reload" | "stats")) => control::main(cmd, &rest),
        Some("check") => check::main(&rest),
        Some("import") => import::main(&rest),
        Some("-h") | Some("--help") | Some("help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("-V") | Some("--version") => {
            println!("banjo {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some(other) => usage(&format!("unknown command {other:?}")),
        None => usage("missing command"),
    }
}

/// Prints a usage error; exit code 2.
pub(crate) fn usage(problem: &str) -> ExitCode {
    eprintln!("banjo: {problem}\n{USAGE}");
    ExitCode::from(EXIT_CONFIG)
}

fn config_path(args: &[String]) -> Result<PathBuf, String> {
    let mut path = PathBuf::from(config::DEFAULT_PATH);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--config" | "-c" => {
                path = it
                    .next()
                    .map(PathBuf::from)
                    .ok_or("--config needs a path")?;
            }
            s if s.starts_with("--config=") => {
                path = PathBuf::from(&s["--config=".len()..]);
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(path)
}

fn run(path: PathBuf) -> ExitCode {
    let to_journal = crate::log::init();
    match crate::daemon::run(&path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line where the admin looks: the journal entry (with its
            // priority) under systemd, plain stderr on a terminal.
            let under_systemd = std::env::var_os("INVOCATION_ID").is_some();
            if to_journal {
                tracing::error!("{e}");
            }
            if !to_journal || !under_systemd {
                eprintln!("{e}");
            }
            match e {
                crate::daemon::Error::Config(_) | crate::daemon::Error::Filter(_) => {
                    ExitCode::from(EXIT_CONFIG)
                }
                _ => ExitCode::from(EXIT_FAILURE),
            }
        }
    }
}

fn config_check(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // The daemon builds every jail into one matcher: make sure that works too.
    if let Err(e) = crate::filter::Filter::new(&config.jails) {
        eprintln!("{}: {e}", path.display());
        return ExitCode::from(EXIT_CONFIG);
    }
    println!("{}: OK", path.display());
    println!("journal: {}", config.journal);
    println!("table:   inet {}", config.table);
    println!("state:   {}", config.state_dir.display());
    for jail in &config.jails {
        println!();
        println!("[jail.{}]", jail.name);
        println!("  journalmatch = {}", jail.journalmatch);
        println!("  maxretry     = {}", jail.maxretry);
        println!("  findtime     = {}s", jail.findtime.as_secs());
        let bantime = match jail.bantime {
            Bantime::For(d) => format!("{}s", d.as_secs()),
            Bantime::Permanent => "permanent (-1)".into(),
        };
        println!("  bantime      = {bantime}");
        let ports = match &jail.ports {
            Ports::All => "all".to_string(),
            Ports::List(list) => list
                .iter()
                .map(|r| {
                    if r.first == r.last {
                        r.first.to_string()
                    } else {
                        format!("{}-{}", r.first, r.last)
                    }
                })
                .collect::<Vec<_>>()
                .join(","),
        };
        println!("  port         = {ports}/{}", jail.protocol);
        let ignoreip: Vec<String> = jail.ignoreip.iter().map(|n| n.to_string()).collect();
        println!("  ignoreip     = {}", ignoreip.join(" "));
        for (i, re) in jail.failregex.iter().enumerate() {
            println!("  failregex {i}  = {re}");
        }
        for (i, re) in jail.ignoreregex.iter().enumerate() {
            println!("  ignoreregex {i} = {re}");
        }
    }
    for name in &config.disabled {
        println!("\n[jail.{name}] (disabled)");
    }
    ExitCode::SUCCESS
}
