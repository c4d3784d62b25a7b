//! Writing journal entries the way a live system does, for the latency
//! probe: either through systemd-journal-remote (journal files in a
//! directory, as on a log collector) or to a journald instance's native
//! socket (the local journal, as on a mail server).

use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";
/// Same boot ID and monotonic base as benches/corpus.py, so that entries
/// written here sort after the corpus files in the same directory.
const BOOT_ID: &str = "6a1b2c3d4e5f40718293a4b5c6d7e8f9";
const MONO_BASE: u64 = 1_700_000_000_000_000;

/// Where entries go.
pub enum Writer {
    /// `systemd-journal-remote --output=DIR/live.journal -`, fed on stdin.
    Remote {
        child: Child,
        stdin: Option<ChildStdin>,
    },
    /// A journald's native protocol socket.
    Journald { sock: UnixDatagram, path: PathBuf },
}

/// The wall clock in µs since the epoch.
pub fn now_usec() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Writer {
    /// `remote:DIR` or `journald:NAMESPACE` (`journald:` alone: the system journal).
    pub fn open(spec: &str) -> io::Result<Writer> {
        if let Some(dir) = spec.strip_prefix("remote:") {
            let mut child = Command::new(JOURNAL_REMOTE)
                .arg(format!(
                    "--output={}",
                    Path::new(dir).join("live.journal").display()
                ))
                .arg("-")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let stdin = child.stdin.take();
            Ok(Writer::Remote { child, stdin })
        } else if let Some(ns) = spec.strip_prefix("journald:") {
            let path = if ns.is_empty() {
                PathBuf::from("/run/systemd/journal/socket")
            } else {
                PathBuf::from(format!("/run/systemd/journal.{ns}/socket"))
            };
            let sock = UnixDatagram::unbound()?;
            Ok(Writer::Journald { sock, path })
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("--journal {spec:?}: want remote:DIR or journald:NAMESPACE"),
            ))
        }
    }

    /// Writes one postfix/smtpd entry with `message`.
    pub fn write(&mut self, message: &str) -> io::Result<()> {
        match self {
            Writer::Remote { stdin, .. } => {
                let t = now_usec();
                let entry = format!(
                    "__REALTIME_TIMESTAMP={t}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID={BOOT_ID}\n\
                     _HOSTNAME=email\n_TRANSPORT=syslog\n_PID=22095\n_COMM=smtpd\n\
                     _SYSTEMD_UNIT=postfix@-.service\nSYSLOG_FACILITY=2\n\
                     SYSLOG_IDENTIFIER=postfix/smtpd\nSYSLOG_PID=22095\nPRIORITY=6\n\
                     MESSAGE={message}\n\n",
                    t.saturating_sub(MONO_BASE)
                );
                let w = stdin
                    .as_mut()
                    .ok_or_else(|| io::Error::other("journal-remote stdin closed"))?;
                w.write_all(entry.as_bytes())?;
                w.flush()
            }
            Writer::Journald { sock, path } => {
                let datagram = format!(
                    "MESSAGE={message}\nSYSLOG_IDENTIFIER=postfix/smtpd\nSYSLOG_PID=22095\n\
                     PRIORITY=6\nSYSLOG_FACILITY=2\n"
                );
                sock.send_to(datagram.as_bytes(), &*path).map(|_| ())
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Writer::Remote { child, stdin } = self {
            drop(stdin.take());
            let _ = child.wait();
        }
    }
}
