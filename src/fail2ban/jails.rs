//! fail2ban's jail files (`jail.conf`, `jail.d/*.conf`, `jail.local`,
//! `jail.d/*.local`), read for `banjo import`.
//!
//! Given `jail.local` (or `jail.conf`), the whole family in its directory
//! is read in fail2ban's order, so a jail that `jail.local` only enables
//! gets the stock settings of `jail.conf`. Any other file is read alone
//! (with its includes).

use std::path::{Path, PathBuf};

use super::ini::{Ini, Vars};
use super::Error;

/// One jail as fail2ban would configure it.
#[derive(Clone, Debug)]
pub struct JailEntry {
    /// The section name.
    pub name: String,
    /// `enabled`, as fail2ban reads booleans.
    pub enabled: bool,
    /// Every option of the jail (its own and `[DEFAULT]`'s), in order:
    /// name, interpolated value (`Err`: why it could not be).
    pub options: Vec<(String, Result<String, String>)>,
    /// The options set in the jail's own section (not inherited).
    pub own: Vec<String>,
}

impl JailEntry {
    /// The interpolated value of `key`, if defined and interpolable.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref().ok())
    }
}

/// The jails of a set of jail files.
#[derive(Clone, Debug)]
pub struct JailFiles {
    /// Files read, in order.
    pub files: Vec<PathBuf>,
    /// The jails, in file order.
    pub jails: Vec<JailEntry>,
    /// `[DEFAULT]`'s own options, interpolated.
    pub defaults: Vec<(String, Result<String, String>)>,
}

/// fail2ban's booleans.
pub fn as_bool(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "yes" | "true" | "on" | "enabled"
    )
}

/// Reads the jail files `path` stands for.
pub fn read(path: &Path) -> Result<JailFiles, Error> {
    if !path.is_file() {
        return Err(Error::plain(format!("{}: no such file", path.display())));
    }
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let files: Vec<PathBuf> = if stem == "jail" {
        let mut f = vec![dir.join("jail.conf")];
        f.extend(super::sorted_glob(&dir.join("jail.d"), "conf"));
        f.push(dir.join("jail.local"));
        f.extend(super::sorted_glob(&dir.join("jail.d"), "local"));
        f.retain(|p| p.is_file());
        f
    } else {
        vec![path.to_path_buf()]
    };
    let ini = Ini::read(&files)?;
    let none = Vars::new();
    let mut jails = Vec::new();
    let default_keys: Vec<String> = ini
        .section("DEFAULT")
        .map(|s| s.keys().map(str::to_string).collect())
        .unwrap_or_default();
    for name in ini.section_names() {
        let Some(section) = ini.section(name) else {
            continue;
        };
        let own: Vec<String> = section.keys().map(str::to_string).collect();
        let mut keys = own.clone();
        for k in &default_keys {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
        let options: Vec<(String, Result<String, String>)> = keys
            .into_iter()
            .map(|k| {
                let v = ini
                    .get(name, &k, &none)
                    .map_err(|e| e.to_string())
                    .and_then(|v| v.ok_or_else(|| "undefined".to_string()));
                (k, v)
            })
            .collect();
        let enabled = options
            .iter()
            .find(|(k, _)| k == "enabled")
            .and_then(|(_, v)| v.as_deref().ok())
            .is_some_and(as_bool);
        jails.push(JailEntry {
            name: name.to_string(),
            enabled,
            options,
            own,
        });
    }
    let defaults = default_keys
        .into_iter()
        .map(|k| {
            let v = ini
                .get("DEFAULT", &k, &none)
                .map_err(|e| e.to_string())
                .and_then(|v| v.ok_or_else(|| "undefined".to_string()));
            (k, v)
        })
        .collect();
    Ok(JailFiles {
        files: ini.files().to_vec(),
        jails,
        defaults,
    })
}
