//! Logging: to the journal with structured fields when journald is there,
//! to stderr otherwise.
//!
//! Every event an admin may want to find has a fixed `MESSAGE_ID`, so
//! `journalctl MESSAGE_ID=...` and the message catalog work, and carries
//! `JAIL=`/`IP=` fields, so `journalctl -u banjo JAIL=postfix` works.

use std::path::Path;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// `[jail] Found IP`: a failure was counted.
pub const FOUND: &str = "6f7d71bf734e4a74bb0ac5447c33822d";
/// `[jail] Ban IP`: an address entered the jail's set.
pub const BAN: &str = "6a537ed2a5ef4553a617a471b95e446b";
/// `[jail] Unban IP`: an address was removed by hand.
pub const UNBAN: &str = "bf5f970452e54a7094f12eb04e9f6b3c";
/// banjo started (firewall and journal ready).
pub const STARTED: &str = "064fcf069404419997accec1201068d2";
/// The configuration was reloaded, or a reload was refused.
pub const RELOAD: &str = "648847bd275b423ab74129b891a5a66d";
/// banjo stopped.
pub const STOPPED: &str = "04c44a70a3904caeb8737d15a34d48fe";

/// Installs the global subscriber. `BANJO_LOG` (e.g. `debug`) sets the
/// level; the default is `info`. Returns true when logging goes to the
/// journal (and false when to stderr).
pub fn init() -> bool {
    let level = std::env::var("BANJO_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let filter = tracing_subscriber::filter::LevelFilter::from_level(level);
    let journald = Path::new("/run/systemd/journal/socket").exists()
        && std::env::var_os("BANJO_LOG_STDERR").is_none();
    if journald {
        if let Ok(layer) = tracing_journald::layer() {
            use tracing_journald::{Priority, PriorityMappings};
            // tracing has no NOTICE; INFO maps to journald's INFO (6) so that
            // Found lines are informational and Ban (WARN) stands out.
            let layer = layer
                .with_field_prefix(None)
                .with_syslog_identifier("banjo".into())
                .with_priority_mappings(PriorityMappings {
                    error: Priority::Error,
                    warn: Priority::Warning,
                    info: Priority::Informational,
                    debug: Priority::Debug,
                    trace: Priority::Debug,
                });
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(layer)
                .try_init();
            return true;
        }
    }
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                // Colours only for a terminal: in a file or a pipe they are
                // noise, and a good part of each line's formatting cost.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .try_init();
    false
}
