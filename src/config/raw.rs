//! banjo.toml as written: serde structs that mirror the file one to one.
//!
//! Every value keeps its byte span so that validation in `config/mod.rs` can
//! say `PATH:LINE:` for the value that is wrong. No logic lives here.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub daemon: Option<RawDaemon>,
    pub journal: Option<RawJournal>,
    pub firewall: Option<RawFirewall>,
    pub fail2ban: Option<RawFail2ban>,
    pub defaults: Option<RawJail>,
    #[serde(default)]
    pub jail: BTreeMap<Spanned<String>, RawJail>,
}

/// `[daemon]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    pub state_dir: Option<Spanned<String>>,
    pub socket: Option<Spanned<String>>,
    pub socket_group: Option<Spanned<String>>,
}

/// `[journal]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJournal {
    pub directory: Option<Spanned<String>>,
    pub namespace: Option<Spanned<String>>,
}

/// `[firewall]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFirewall {
    pub table: Option<Spanned<String>>,
}

/// `[fail2ban]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFail2ban {
    pub filter_dir: Option<Spanned<String>>,
}

/// `[defaults]` and `[jail.NAME]`: the same keys, jail values win.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJail {
    pub enabled: Option<Spanned<bool>>,
    pub filter: Option<Spanned<String>>,
    pub journalmatch: Option<Spanned<Vec<Spanned<String>>>>,
    pub failregex: Option<Spanned<Vec<Spanned<String>>>>,
    pub ignoreregex: Option<Spanned<Vec<Spanned<String>>>>,
    pub maxretry: Option<Spanned<i64>>,
    pub findtime: Option<Spanned<DurationValue>>,
    pub bantime: Option<Spanned<DurationValue>>,
    pub bantime_increment: Option<Spanned<bool>>,
    pub bantime_factor: Option<Spanned<f64>>,
    pub bantime_multipliers: Option<Spanned<Words>>,
    pub bantime_maxtime: Option<Spanned<DurationValue>>,
    pub bantime_rndtime: Option<Spanned<DurationValue>>,
    pub bantime_overalljails: Option<Spanned<bool>>,
    pub ignoreip: Option<Spanned<Words>>,
    pub ignoreself: Option<Spanned<bool>>,
    pub ipv6_prefix: Option<Spanned<i64>>,
    pub ipv6_prefix_threshold: Option<Spanned<i64>>,
    pub port: Option<Spanned<Words>>,
    pub allports: Option<Spanned<bool>>,
    pub protocol: Option<Spanned<String>>,
}

/// A duration as fail2ban users write it: `600`, `"10m"`, `"1h30m"`, `-1`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DurationValue {
    Seconds(i64),
    Text(String),
}

/// A list given either as a TOML array or as one string of words separated
/// by commas or spaces (`"smtp,submission"`, `"127.0.0.1/8 ::1"`), the way
/// fail2ban's jail.local writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Words {
    One(String),
    Many(Vec<String>),
}

impl Words {
    /// The individual words, in order.
    pub fn words(&self) -> Vec<String> {
        let split = |s: &str| -> Vec<String> {
            s.split(|c: char| c == ',' || c.is_whitespace())
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect()
        };
        match self {
            Words::One(s) => split(s),
            Words::Many(v) => v.iter().flat_map(|s| split(s)).collect(),
        }
    }
}

/// Overwrites each listed field of `into` that `from` sets: a later file
/// (a `conf.d` drop-in) wins key by key.
macro_rules! overlay {
    ($into:expr, $from:expr; $($field:ident),* $(,)?) => {{
        $(if $from.$field.is_some() { $into.$field = $from.$field; })*
    }};
}

fn overlay_section<T: Default>(
    into: &mut Option<T>,
    from: Option<T>,
    merge: impl FnOnce(&mut T, T),
) {
    if let Some(from) = from {
        merge(into.get_or_insert_with(T::default), from);
    }
}

impl RawJail {
    /// Lays `from`'s keys over this jail's.
    pub fn overlay(&mut self, from: RawJail) {
        overlay!(self, from; enabled, filter, journalmatch, failregex, ignoreregex, maxretry,
            findtime, bantime, bantime_increment, bantime_factor, bantime_multipliers,
            bantime_maxtime, bantime_rndtime, bantime_overalljails, ignoreip, ignoreself,
            ipv6_prefix, ipv6_prefix_threshold, port, allports, protocol);
    }
}

impl RawConfig {
    /// Lays a later file over this one: sections and jails merge key by key.
    pub fn overlay(&mut self, from: RawConfig) {
        overlay_section(
            &mut self.daemon,
            from.daemon,
            |a, b| overlay!(a, b; state_dir, socket, socket_group),
        );
        overlay_section(
            &mut self.journal,
            from.journal,
            |a, b| overlay!(a, b; directory, namespace),
        );
        overlay_section(
            &mut self.firewall,
            from.firewall,
            |a, b| overlay!(a, b; table),
        );
        overlay_section(
            &mut self.fail2ban,
            from.fail2ban,
            |a, b| overlay!(a, b; filter_dir),
        );
        overlay_section(&mut self.defaults, from.defaults, RawJail::overlay);
        for (name, jail) in from.jail {
            match self.jail.remove(&name) {
                Some(mut existing) => {
                    existing.overlay(jail);
                    self.jail.insert(name, existing);
                }
                None => {
                    self.jail.insert(name, jail);
                }
            }
        }
    }
}
