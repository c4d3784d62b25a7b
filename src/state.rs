//! What banjo keeps on disk under `state_dir`: the journal position.
//!
//! The cursor file names the last entry whose consequences (failures
//! counted, bans in the kernel) are complete. Failure counts themselves are
//! not stored: on restart the daemon replays the journal from
//! `cursor time - findtime` up to the cursor without acting, which rebuilds
//! them exactly, then resumes live after it. The journal is the state.
//!
//! Writes are write-to-temporary, fsync, rename, so a SIGKILL or power loss
//! at any moment leaves either the old or the new cursor, never a torn one.

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

    fn cursor_path(&self) -> PathBuf {
        self.dir.join("cursor.json")
    }

    /// The saved position; `Ok(None)` when there is none or it is unreadable
    /// (an unreadable one is moved aside as `cursor.json.corrupt`, and the
    /// caller starts as on a first run).
    pub fn position(&self) -> Result<Option<Position>, Error> {
        let path = self.cursor_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error {
                    path,
                    what: "reading",
                    source,
                })
            }
        };
        match serde_json::from_str::<Position>(&text) {
            Ok(p) => Ok(Some(p)),
            Err(e) => {
                let aside = path.with_extension("json.corrupt");
                tracing::warn!(
                    "{}: corrupt journal position ({e}); moved to {} and starting from the recent journal",
                    path.display(),
                    aside.display()
                );
                fs::rename(&path, &aside).map_err(|source| Error {
                    path: path.clone(),
                    what: "moving a corrupt file aside",
                    source,
                })?;
                Ok(None)
            }
        }
    }

    /// Saves `position` atomically.
    pub fn save_position(&self, position: &Position) -> Result<(), Error> {
        let path = self.cursor_path();
        let bytes = serde_json::to_vec(position).unwrap_or_default();
        write_atomic(&path, &bytes).map_err(|source| Error {
            path,
            what: "writing",
            source,
        })
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
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
        assert_eq!(state.position().unwrap(), None);
        let p = Position {
            cursor: "s=abc;i=1".into(),
            time: 42,
        };
        state.save_position(&p).unwrap();
        assert_eq!(state.position().unwrap(), Some(p));
        fs::write(dir.join("cursor.json"), b"{not json").unwrap();
        assert_eq!(state.position().unwrap(), None);
        assert!(dir.join("cursor.json.corrupt").exists());
        assert!(!dir.join("cursor.json").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
