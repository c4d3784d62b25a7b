//! What banjo keeps on disk under `state_dir`, in one file, `state.json`:
//! the journal position, the active bans with their absolute end, and the
//! ban history that escalation needs.
//!
//! The position names the last entry whose consequences (failures counted,
//! bans in the kernel and in this file) are complete. Failure counts
//! themselves are not stored: on restart the daemon replays the journal
//! from `position - findtime` up to the position without acting, which
//! rebuilds them exactly. The bans are what the kernel forgets on reboot;
//! the daemon puts the unexpired ones back with their remaining time.
//!
//! One file rather than an embedded database: the whole state is small
//! (about 100 bytes per ban), written at most once a second, and a single
//! write-to-temporary, fsync, rename is atomic, so a SIGKILL or power loss
//! at any moment leaves either the old or the new state, never a mix of
//! a new position with old bans.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ticket::Micros;

/// A saved journal position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// sd_journal cursor of the last fully processed entry.
    pub cursor: String,
    /// That entry's `__REALTIME_TIMESTAMP`.
    pub time: Micros,
}

/// An active ban as saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedBan {
    /// The jail's name (ids change between configurations).
    pub jail: String,
    /// The banned address (the network address, for a prefix ban).
    pub ip: std::net::IpAddr,
    /// The prefix length of a prefix ban; `None` for one address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<u8>,
    /// When it ends; `None` for a permanent ban.
    pub until: Option<Micros>,
    /// Its full length in seconds; `None` for a permanent ban.
    pub bantime: Option<u64>,
}

/// Ban history of one address in one jail, as saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedHistory {
    /// The jail's name.
    pub jail: String,
    /// The address.
    pub ip: std::net::IpAddr,
    /// Bans so far.
    pub count: u32,
    /// When the last one started.
    pub last: Micros,
}

/// Everything in `state.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Format version, for future migrations.
    pub version: u32,
    /// Where the journal was fully processed.
    pub position: Option<Position>,
    /// Active bans.
    pub bans: Vec<SavedBan>,
    /// Ban history.
    pub history: Vec<SavedHistory>,
}

/// The current format version of `state.json`.
pub const VERSION: u32 = 1;

/// A state-file failure, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {what}: {source}")]
pub struct Error {
    path: PathBuf,
    what: &'static str,
    #[source]
    source: std::io::Error,
}

/// The state directory.
pub struct State {
    dir: PathBuf,
}

impl State {
    /// Uses `dir`, creating it (mode 0700) if missing.
    pub fn open(dir: &Path) -> Result<State, Error> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| Error {
                path: dir.to_path_buf(),
                what: "creating the state directory",
                source,
            })?;
        Ok(State {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn position_path(&self) -> PathBuf {
        self.dir.join("position.json")
    }

    /// Saves only the journal position, in its own small file: written
    /// after every wakeup that read entries (rename, no fsync: a process
    /// crash cannot tear it; after a power loss the older position in
    /// `state.json` is used and a few entries are read again).
    pub fn save_position(&self, position: &Position) -> Result<(), Error> {
        let path = self.position_path();
        let bytes = serde_json::to_vec(position).map_err(|e| Error {
            path: path.clone(),
            what: "encoding",
            source: std::io::Error::other(e),
        })?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &bytes)
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|source| Error {
                path,
                what: "writing",
                source,
            })
    }

    /// The newer of the two saved positions.
    fn newest_position(&self, snapshot: Option<Position>) -> Option<Position> {
        let small = fs::read(self.position_path())
            .ok()
            .and_then(|b| serde_json::from_slice::<Position>(&b).ok());
        match (snapshot, small) {
            (Some(a), Some(b)) => Some(if b.time >= a.time { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// The saved state; empty when there is none. An unreadable file is
    /// moved aside as `state.json.corrupt` with a warning, and banjo starts
    /// as on a first run rather than refusing to start.
    pub fn load(&self) -> Result<Snapshot, Error> {
        let path = self.path();
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Snapshot {
                    position: self.newest_position(None),
                    ..Snapshot::default()
                })
            }
            Err(source) => {
                return Err(Error {
                    path,
                    what: "reading",
                    source,
                })
            }
        };
        match serde_json::from_slice::<Snapshot>(&text) {
            Ok(mut s) if s.version <= VERSION => {
                s.position = self.newest_position(s.position.take());
                Ok(s)
            }
            result => {
                let why = match result {
                    Err(e) => e.to_string(),
                    Ok(s) => format!("written by a newer banjo (format {})", s.version),
                };
                let aside = path.with_extension("json.corrupt");
                tracing::warn!(
                    "{}: unusable state ({why}); moved to {} and starting afresh: bans already in the kernel stay",
                    path.display(),
                    aside.display()
                );
                fs::rename(&path, &aside).map_err(|source| Error {
                    path: path.clone(),
                    what: "moving a corrupt file aside",
                    source,
                })?;
                Ok(Snapshot {
                    position: self.newest_position(None),
                    ..Snapshot::default()
                })
            }
        }
    }

    /// Saves `snapshot` atomically.
    pub fn save(&self, snapshot: &Snapshot) -> Result<(), Error> {
        let path = self.path();
        write_atomic(&path, snapshot).map_err(|source| Error {
            path,
            what: "writing",
            source,
        })
    }
}

/// Streams `value` as JSON into a temporary file (no in-memory copy of
/// what can be megabytes with 100,000 bans), fsyncs it and renames it
/// over `path`.
fn write_atomic(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, File::create(&tmp)?);
        serde_json::to_writer(&mut out, value).map_err(std::io::Error::other)?;
        out.flush()?;
        out.get_ref().sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "banjo-state-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trip_and_corrupt_file_moved_aside() {
        let dir = tempdir();
        let state = State::open(&dir).unwrap();
        assert_eq!(state.load().unwrap(), Snapshot::default());
        let snap = Snapshot {
            version: VERSION,
            position: Some(Position {
                cursor: "s=abc;i=1".into(),
                time: 42,
            }),
            bans: vec![SavedBan {
                jail: "postfix".into(),
                ip: "192.0.2.1".parse().unwrap(),
                prefix: None,
                until: Some(99),
                bantime: Some(3600),
            }],
            history: vec![SavedHistory {
                jail: "postfix".into(),
                ip: "2001:db8::1".parse().unwrap(),
                count: 3,
                last: 7,
            }],
        };
        state.save(&snap).unwrap();
        assert_eq!(state.load().unwrap(), snap);
        fs::write(dir.join("state.json"), b"{not json").unwrap();
        assert_eq!(state.load().unwrap(), Snapshot::default());
        assert!(dir.join("state.json.corrupt").exists());
        assert!(!dir.join("state.json").exists());
        // The small position file wins when it is newer.
        let newer = Position {
            cursor: "s=abc;i=2".into(),
            time: 43,
        };
        state.save_position(&newer).unwrap();
        assert_eq!(state.load().unwrap().position, Some(newer));
        fs::remove_file(dir.join("position.json")).unwrap();
        // A file from a newer banjo is set aside too, not misread.
        fs::write(
            dir.join("state.json"),
            br#"{"version":99,"position":null,"bans":[],"history":[]}"#,
        )
        .unwrap();
        assert_eq!(state.load().unwrap(), Snapshot::default());
        fs::remove_dir_all(&dir).unwrap();
    }
}
