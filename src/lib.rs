//! banjo reads the systemd journal, finds failures with one multi-pattern DFA
//! over every jail's failregexes, counts them per address and bans through
//! nftables sets whose elements carry kernel timeouts.
//!
//! Data flows one way:
//!
//! ```text
//! journal ──MESSAGE──▶ filter ──Failure──▶ tracker ──Ban──▶ firewall
//!  (sd_journal)        (one DFA)           (findtime/       (one netlink
//!                                           maxretry)        batch into
//!                                                            nft sets)
//! ```
//!
//! `daemon` is the only module that knows every stage. Around the pipeline
//! sit `config` (banjo.toml and its drop-ins), `fail2ban` (reading
//! fail2ban's filter files), `state` (journal position, bans and history
//! on disk), `control` (the socket the CLI talks to), `own` (the host's
//! addresses, for ignoreself), `log` and `cli`. The leaf types every
//! stage shares are in `jail`, `ticket` and `net`. The vocabulary is
//! fail2ban's: jail, filter, failregex, ignoreregex, journalmatch,
//! maxretry, findtime, bantime, ignoreip, ban, unban.

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod fail2ban;
pub mod filter;
pub mod firewall;
pub mod jail;
pub mod journal;
pub mod log;
pub mod net;
pub mod own;
pub mod state;
pub mod ticket;
pub mod tracker;
