//! The daemon: the one place that knows every stage and wires them.
//!
//! One thread, one `poll` over the journal fd and a signalfd (TERM/INT
//! stop, HUP reload). Entries flow journal → filter → tracker; the bans of
//! one wakeup go to the firewall as one netlink batch; only then is the
//! journal position saved, so a saved cursor always means "everything up
//! to here is in the kernel".
//!
//! journald coalesces its change notifications on a ~250 ms timer, so a
//! reader that only waits for the fd bans a quarter second late. While
//! entries are arriving, banjo also polls the journal every few
//! milliseconds; after a quiet second it goes back to waiting on the fd
//! alone.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::config::Config;
use crate::filter::{Cache, Filter, Hit, Outcome};
use crate::firewall::{Element, Firewall};
use crate::jail::{Bantime, JailId, JailSet, JournalMatch};
use crate::journal::Journal;
use crate::log;
use crate::state::{Position, State};
use crate::ticket::{Ban, Failure, Micros};
use crate::tracker::{Tracker, Verdict};

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(#[from] crate::config::Error),
    /// The failregexes do not build (only if `config` let them through).
    #[error("{0}")]
    Filter(#[from] crate::filter::BuildError),
    /// nftables refused a request.
    #[error("firewall: {0}")]
    Firewall(#[from] crate::firewall::Error),
    /// sd_journal failed.
    #[error("journal: {0}")]
    Journal(#[from] crate::journal::Error),
    /// The state directory failed.
    #[error("state: {0}")]
    State(#[from] crate::state::Error),
    /// Signals or poll failed.
    #[error("{what}: {source}")]
    System {
        /// The step.
        what: &'static str,
        /// The errno.
        #[source]
        source: nix::Error,
    },
}

/// How many bans may wait before they are flushed mid-backlog, bounding
/// both latency and batch size while a long backlog is read.
const FLUSH_AT: usize = 4096;
/// How long after the last entry the journal is still polled on a timer.
const ACTIVE_FOR: Duration = Duration::from_secs(1);
/// The polling period while active.
const ACTIVE_POLL: Duration = Duration::from_millis(2);
/// How often the cursor is saved when nothing was banned.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// How often stale failures are forgotten.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);

/// Counters since start, for STATUS= and logs.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    lines: u64,
    failures: u64,
    ignored: u64,
    not_an_address: u64,
    bans: u64,
}

/// Everything built from one configuration.
struct Pipeline {
    config: Config,
    filter: Filter,
    cache: Cache,
    tracker: Tracker,
    journal: Journal,
    /// For bit `i` of an entry's match mask, the jails that use match `i`.
    jails_of_match: Vec<JailSet>,
}

/// Where the reader is relative to the saved cursor.
enum Mode {
    /// Rebuilding failure counts from entries already processed before a
    /// restart or reload: count, but neither log nor ban.
    Replay(Position),
    /// Normal operation.
    Live,
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(config_path: &Path) -> Result<(), Error> {
    let signals = block_signals()?;
    let config = Config::load(config_path)?;
    let mut firewall = Firewall::open(&config.table)?;
    firewall.setup(&config.jails)?;
    let state = State::open(&config.state_dir)?;
    let saved = state.position()?;
    let mut pipeline = Pipeline::build(config)?;
    let mut mode = pipeline.position(saved)?;

    let mut daemon = Daemon {
        config_path: config_path.to_path_buf(),
        firewall,
        state,
        counters: Counters::default(),
        pending: Vec::new(),
        hits: Vec::new(),
        last_entry: None,
        last_saved: Instant::now(),
        last_status: Instant::now(),
        last_expire: Instant::now(),
        dirty: false,
    };
    tracing::info!(
        message_id = log::STARTED,
        "banjo {} started: {} jails on the {}, table inet {}",
        env!("CARGO_PKG_VERSION"),
        pipeline.config.jails.len(),
        pipeline.config.journal,
        pipeline.config.table
    );
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&daemon.status(&pipeline)),
    ]);
    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
    let mut last_watchdog = Instant::now();

    loop {
        daemon.drain(&mut pipeline, &mut mode)?;
        let now = Instant::now();
        if let Some(period) = watchdog {
            if now.duration_since(last_watchdog) >= period {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                last_watchdog = now;
            }
        }
        let mut timeout: Option<Duration> =
            watchdog.map(|p| p.saturating_sub(now.duration_since(last_watchdog)));
        if daemon
            .last_entry
            .is_some_and(|t| now.duration_since(t) < ACTIVE_FOR)
        {
            timeout = Some(timeout.map_or(ACTIVE_POLL, |t| t.min(ACTIVE_POLL)));
        }
        if daemon.dirty {
            timeout = Some(timeout.map_or(SAVE_EVERY, |t| t.min(SAVE_EVERY)));
        }
        let journal_fd = pipeline.journal.fd()?;
        // SAFETY: the fd belongs to the sd_journal handle in `pipeline`,
        // which outlives this borrow (it is not replaced until after poll).
        let journal_fd = unsafe { BorrowedFd::borrow_raw(journal_fd) };
        let mut fds = [
            PollFd::new(journal_fd, PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        ];
        let poll_timeout = match timeout {
            Some(t) => PollTimeout::try_from(t.as_millis().max(1).min(i32::MAX as u128) as i32)
                .unwrap_or(PollTimeout::MAX),
            None => PollTimeout::NONE,
        };
        match poll(&mut fds, poll_timeout) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(source) => {
                return Err(Error::System {
                    what: "polling",
                    source,
                })
            }
        }
        let journal_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        let signal_ready = fds[1].revents().is_some_and(|r| !r.is_empty());
        if journal_ready {
            pipeline.journal.process()?;
        }
        if signal_ready {
            match signals.read_signal() {
                Ok(Some(info)) => match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGHUP) => daemon.reload(&mut pipeline, &mut mode)?,
                    Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => break,
                    _ => {}
                },
                Ok(None) => {}
                Err(source) => {
                    return Err(Error::System {
                        what: "reading signals",
                        source,
                    })
                }
            }
        }
    }

    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    daemon.flush(&pipeline)?;
    daemon.save(&pipeline)?;
    tracing::info!(
        message_id = log::STOPPED,
        "banjo stopped; bans stay in the kernel until they expire"
    );
    Ok(())
}

fn block_signals() -> Result<SignalFd, Error> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set.thread_block().map_err(|source| Error::System {
        what: "blocking signals",
        source,
    })?;
    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).map_err(|source| {
        Error::System {
            what: "creating the signalfd",
            source,
        }
    })
}

fn now_micros() -> Micros {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as Micros)
        .unwrap_or(0)
}

impl Pipeline {
    fn build(config: Config) -> Result<Pipeline, Error> {
        let filter = Filter::new(&config.jails)?;
        let cache = filter.cache();
        let tracker = Tracker::new(&config.jails, seed());
        let mut matches: Vec<JournalMatch> = Vec::new();
        let mut jails_of_match: Vec<JailSet> = Vec::new();
        for (i, jail) in config.jails.iter().enumerate() {
            let at = match matches.iter().position(|m| *m == jail.journalmatch) {
                Some(at) => at,
                None => {
                    matches.push(jail.journalmatch.clone());
                    jails_of_match.push(JailSet::EMPTY);
                    matches.len() - 1
                }
            };
            jails_of_match[at].insert(JailId(i as u16));
        }
        let journal = Journal::open(&config.journal, &matches)?;
        Ok(Pipeline {
            config,
            filter,
            cache,
            tracker,
            journal,
            jails_of_match,
        })
    }

    /// Places the reader: after a restart, `findtime` before the saved
    /// cursor to replay; on a first start, `findtime` before now, so a
    /// restart in the middle of a flood still counts it.
    fn position(&mut self, saved: Option<Position>) -> Result<Mode, Error> {
        let lookback = self.config.max_findtime().as_micros() as Micros;
        match saved {
            Some(pos) => {
                self.journal.seek_time(pos.time.saturating_sub(lookback))?;
                Ok(Mode::Replay(pos))
            }
            None => {
                self.journal
                    .seek_time(now_micros().saturating_sub(lookback))?;
                Ok(Mode::Live)
            }
        }
    }
}

/// The jails an entry belongs to, from its journalmatch bitmask.
fn jails_for(jails_of_match: &[JailSet], matched: u64) -> JailSet {
    let mut set = JailSet::EMPTY;
    let mut bits = matched;
    while bits != 0 {
        let i = bits.trailing_zeros() as usize;
        if let Some(jails) = jails_of_match.get(i) {
            set.union_with(jails);
        }
        bits &= bits - 1;
    }
    set
}

struct Daemon {
    config_path: PathBuf,
    firewall: Firewall,
    state: State,
    counters: Counters,
    pending: Vec<Ban>,
    hits: Vec<Hit>,
    last_entry: Option<Instant>,
    last_saved: Instant,
    last_status: Instant,
    last_expire: Instant,
    /// Entries processed since the cursor was last saved.
    dirty: bool,
}

impl Daemon {
    /// Reads every available entry, acting on each; flushes bans and saves
    /// the cursor at the end.
    fn drain(&mut self, p: &mut Pipeline, mode: &mut Mode) -> Result<(), Error> {
        let mut any = false;
        while let Some(entry) = p.journal.next_entry()? {
            any = true;
            let time = entry.time;
            let jails = jails_for(&p.jails_of_match, entry.matched);
            self.hits.clear();
            if !jails.is_empty() {
                p.filter
                    .scan(&mut p.cache, entry.message, &jails, &mut self.hits);
            }
            let replaying = match mode {
                Mode::Replay(pos) => {
                    if time >= pos.time && (p.journal.is_at(&pos.cursor) || time > pos.time) {
                        // The saved entry (or, if it was vacuumed, the first
                        // one after it). The saved one itself was processed.
                        let was_saved = p.journal.is_at(&pos.cursor);
                        *mode = Mode::Live;
                        tracing::debug!("journal replay done; following live");
                        was_saved
                    } else {
                        true
                    }
                }
                Mode::Live => false,
            };
            self.counters.lines += u64::from(!replaying);
            let hits = std::mem::take(&mut self.hits);
            for hit in &hits {
                match hit.outcome {
                    Outcome::Failure(ip) => {
                        let failure = Failure {
                            jail: hit.jail,
                            ip,
                            time,
                        };
                        let verdict = p.tracker.observe(&failure);
                        if !replaying {
                            self.act(&p.config, &failure, verdict);
                        }
                    }
                    Outcome::Ignored if !replaying => self.counters.ignored += 1,
                    Outcome::NotAnAddress if !replaying => self.counters.not_an_address += 1,
                    _ => {}
                }
            }
            self.hits = hits;
            if self.pending.len() >= FLUSH_AT {
                self.flush(p)?;
            }
            self.dirty |= !replaying;
        }
        if any {
            self.last_entry = Some(Instant::now());
        }
        let banned = !self.pending.is_empty();
        self.flush(p)?;
        let now = Instant::now();
        if self.dirty && (banned || now.duration_since(self.last_saved) >= SAVE_EVERY) {
            self.save(p)?;
        }
        if now.duration_since(self.last_expire) >= EXPIRE_EVERY {
            p.tracker.expire(now_micros());
            self.last_expire = now;
        }
        if any && now.duration_since(self.last_status) >= Duration::from_secs(1) {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&self.status(p))]);
            self.last_status = now;
        }
        Ok(())
    }

    fn act(&mut self, config: &Config, failure: &Failure, verdict: Verdict) {
        let jail = config
            .jails
            .get(failure.jail.index())
            .map_or("?", |j| j.name.as_str());
        let ip = failure.ip.to_canonical();
        match verdict {
            Verdict::IgnoredIp => {
                tracing::debug!(jail, ip = %ip, "[{jail}] Ignore {ip} by ignoreip");
            }
            Verdict::AlreadyBanned => {
                tracing::debug!(jail, ip = %ip, "[{jail}] {ip} already banned");
            }
            Verdict::Counted { failures } => {
                self.counters.failures += 1;
                tracing::info!(message_id = log::FOUND, jail, ip = %ip, failures, "[{jail}] Found {ip}");
            }
            Verdict::Ban(ban) => {
                self.counters.failures += 1;
                tracing::info!(message_id = log::FOUND, jail, ip = %ip, "[{jail}] Found {ip}");
                self.pending.push(ban);
            }
        }
    }

    /// Applies the pending bans in one batch.
    fn flush(&mut self, p: &Pipeline) -> Result<(), Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let elements: Vec<Element> = self
            .pending
            .iter()
            .map(|b| Element {
                jail: b.jail,
                ip: b.ip,
                timeout: match b.bantime {
                    Bantime::For(d) => Some(d),
                    Bantime::Permanent => None,
                },
                expires: None,
            })
            .collect();
        self.firewall.add(&elements)?;
        for ban in self.pending.drain(..) {
            self.counters.bans += 1;
            let jail = p
                .config
                .jails
                .get(ban.jail.index())
                .map_or("?", |j| j.name.as_str());
            let bantime = match ban.bantime {
                Bantime::For(d) => d.as_secs() as i64,
                Bantime::Permanent => -1,
            };
            tracing::warn!(
                message_id = log::BAN,
                jail,
                ip = %ban.ip,
                bantime,
                "[{jail}] Ban {}",
                ban.ip
            );
        }
        Ok(())
    }

    fn save(&mut self, p: &Pipeline) -> Result<(), Error> {
        if !self.dirty {
            return Ok(());
        }
        // The reader still stands on the last entry returned.
        let (Ok(cursor), Some(time)) = (p.journal.cursor(), self.last_time(p)) else {
            return Ok(());
        };
        self.state.save_position(&Position { cursor, time })?;
        self.dirty = false;
        self.last_saved = Instant::now();
        Ok(())
    }

    fn last_time(&self, p: &Pipeline) -> Option<Micros> {
        p.journal.time().ok()
    }

    fn status(&self, p: &Pipeline) -> String {
        format!(
            "{} jails, {} lines, {} failures, {} bans",
            p.config.jails.len(),
            self.counters.lines,
            self.counters.failures,
            self.counters.bans
        )
    }

    /// SIGHUP: validate the new configuration first; on error the old one
    /// keeps running. On success the pipeline is rebuilt and the journal
    /// replayed from findtime before the current position, so the new
    /// jails' counts start from what the journal already holds.
    fn reload(&mut self, p: &mut Pipeline, mode: &mut Mode) -> Result<(), Error> {
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Reloading,
            sd_notify::NotifyState::monotonic_usec_now()
                .unwrap_or(sd_notify::NotifyState::Reloading),
        ]);
        let result = Config::load(&self.config_path)
            .map_err(Error::from)
            .and_then(|config| {
                self.firewall.setup(&config.jails)?;
                Pipeline::build(config)
            });
        match result {
            Ok(mut fresh) => {
                self.flush(p)?;
                self.save(p)?;
                let saved = self.state.position()?;
                *mode = fresh.position(saved)?;
                *p = fresh;
                tracing::info!(
                    message_id = log::RELOAD,
                    "reloaded {}: {} jails",
                    self.config_path.display(),
                    p.config.jails.len()
                );
            }
            Err(e) => {
                // Re-apply the old ruleset in case setup got half-way: one
                // batch either committed fully or not at all, so this only
                // matters if the new setup committed and the journal failed.
                let _ = self.firewall.setup(&p.config.jails);
                tracing::error!(
                    message_id = log::RELOAD,
                    "reload refused, keeping the running configuration: {e}"
                );
            }
        }
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&self.status(p)),
        ]);
        Ok(())
    }
}

/// A random key for the tracker's rndtime jitter.
fn seed() -> u64 {
    let mut buf = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf));
    u64::from_ne_bytes(buf) ^ now_micros()
}
