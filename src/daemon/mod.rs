//! The daemon: the one place that knows every stage and wires them.
//!
//! One thread, one `poll` over the journal fd, a signalfd (TERM/INT stop,
//! HUP reload) and the control socket. Entries flow journal → filter →
//! tracker; the bans of one wakeup go to the firewall as one netlink batch,
//! except while a long backlog is read: then batches go to a second thread
//! as they fill (`committer.rs`), and the drain waits for them at its end.
//! That thread also writes the `Found`/`Ban` lines, after the bans they
//! report (`lines.rs`).
//! The state file (journal position, active bans, ban history) is written
//! after the firewall has the bans, so a saved position always means
//! "everything up to here is in the kernel and on disk".
//!
//! journald coalesces its change notifications on a ~250 ms timer, so a
//! reader that only waits for the fd bans a quarter second late. While
//! entries are arriving, banjo also polls the journal every few
//! milliseconds (every quarter millisecond while an attacker is one
//! failure short of a ban); after a quiet spell it goes back to waiting
//! on the fd alone.

mod committer;
mod control;
mod lines;
mod notify;
mod trim;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::time::TimeSpec;

use self::committer::{CommitError, Committer};
use self::lines::{Batch, Line, Names, Unban};
use crate::config::Config;
use crate::filter::{Cache, Filter, Hit, Outcome};
use crate::firewall::{Change, Element, Firewall, PrefixElement};
use crate::jail::{Bantime, JailId, JailSet, JournalMatch};
use crate::journal::Journal;
use crate::log;
use crate::net::IpNet;
use crate::own::OwnAddresses;
use crate::state::{Position, SavedBan, SavedHistory, Snapshot, State};
use crate::ticket::{Ban, Failure, Micros};
use crate::tracker::{ActiveBan, History, PrefixBan, Tracker, Verdict};

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
    /// A batch handed to the committing thread did not land.
    #[error("firewall: {0}")]
    Commit(#[from] CommitError),
    /// The thread committing bans could not start.
    #[error("starting the thread that commits bans: {0}")]
    Thread(#[source] std::io::Error),
    /// The control socket failed.
    #[error("control socket: {0}")]
    Control(#[from] crate::control::Error),
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

/// While a backlog is read, pending bans go to the committer thread once
/// this many wait, or once the oldest has waited `FLUSH_AFTER`: a bound on
/// the latency of a ban found early in a long backlog of mostly benign
/// entries (a count alone would hold it until the drain ends). Bans that
/// come thick and fast go over in batches of `FLUSH_AT`, which keeps the
/// kernel busy in step with the reading and leaves little for the drain's
/// end, when the last batch is sent and the thread's are waited for:
/// 10,000 bans at once took 41-67 ms with 1 ms batches against 46-75 ms
/// with 5 ms ones. Sparse ones wait up to `FLUSH_AFTER`, so that a backlog
/// with a ban every millisecond or so does not cost a transaction and two
/// thread wakeups per ban.
const FLUSH_AT: usize = 256;
const FLUSH_AFTER: Duration = Duration::from_millis(5);
/// The `Found` and `Ban` lines of one drain are written after its bans
/// are in the kernel: formatting and writing two lines per ban cost as
/// much as the netlink batch (some 5 µs a line), and a ban that protects
/// nothing until it is logged would be backwards. The lines keep their
/// order (each `Found` before the `Ban` it led to); they wait at most
/// until this many are held, or the oldest waited `LOG_AFTER`, or the
/// drain ends.
const LOG_AT: usize = 32_768;
const LOG_AFTER: Duration = Duration::from_millis(250);
/// While bans or log lines wait, the clock is read once per this many
/// entries (some 0.1 ms of a backlog) to see whether they waited long
/// enough; a drain's end sends and writes them whatever the clock says.
const CLOCK_EVERY: u32 = 64;
/// After an entry, the journal is read every `ACTIVE_POLL` for
/// `ACTIVE_FOR`, then every `WARM_POLL` until `WARM_FOR` has passed, and
/// beyond that as long as some address has failures on record (its next
/// failure may ban it). A read of an unchanged journal costs a syscall or
/// two. Otherwise banjo waits on the fd alone, and on journald's ~250 ms
/// notification delay.
const ACTIVE_FOR: Duration = Duration::from_secs(1);
const ACTIVE_POLL: Duration = Duration::from_millis(2);
/// The read period while a ban is imminent ([`Tracker::ban_imminent`]:
/// some address is one failure short of maxretry, or a jail bans at the
/// first failure) and a failure was counted less than `ACTIVE_FOR` ago.
///
/// Why: through journald, the wait for banjo's next read is most of the
/// ban latency (half the period on average: 1 ms at `ACTIVE_POLL`); at
/// 0.25 ms the bench's median is 0.6-0.8 ms instead of 1.7-1.9 ms, for
/// 3.5 % of a CPU instead of 2.3 % (an attack every 400 ms, a benign line
/// every 100 ms). Each wakeup costs
/// a context switch (some 20-25 µs of CPU on a loaded 2-core VM, nearly
/// all of it in the scheduler), so 4 000 wakeups/s are spent only when
/// the very next entry may ban: an attacker one short, still attacking.
/// Not for as long as a window stays one short (up to findtime, hours),
/// nor while only benign entries flow: on a host whose attackers keep
/// coming, that would be some 10 % of a CPU all the time.
const IMMINENT_POLL: Duration = Duration::from_micros(250);
const WARM_FOR: Duration = Duration::from_secs(30);
const WARM_POLL: Duration = Duration::from_millis(10);
/// How soon after a ban the state file (bans, history, position) is
/// saved: batches several wakeups' bans into one write under a flood.
const SAVE_EVERY: Duration = Duration::from_millis(100);

/// The save period for the current number of bans: a file of 100,000
/// bans (some 18 MB) is written at most once a second, not ten times.
fn save_every(tracker: &Tracker) -> Duration {
    SAVE_EVERY.max(Duration::from_micros(
        10 * tracker.active_ban_count() as u64,
    ))
}
/// How often stale failures are forgotten.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);
/// How often the `STATUS=` line systemd shows is brought up to date while
/// entries flow.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Counters since start, for STATUS=, `banjo stats` and `banjo status`.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    lines: u64,
    failures: u64,
    ignored: u64,
    not_an_address: u64,
    bans: u64,
    unbans: u64,
}

/// Per-jail totals, kept by name across reloads.
#[derive(Debug, Default, Clone, Copy)]
struct JailCounters {
    failures: u64,
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
    /// The jails' names, for the log lines written on the second thread.
    names: Names,
}

/// Where the reader is relative to the saved position.
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
    // The committer's socket before the watch, which must know its port.
    let committer = Committer::start(firewall.sibling()?).map_err(Error::Thread)?;
    let mut watch = firewall.watch()?;
    let state = State::open(&config.state_dir)?;
    let snapshot = state.load()?;
    let control = crate::control::Server::bind(&config.socket, config.socket_group)?;
    let mut own = OwnAddresses::open().map_err(|source| Error::System {
        what: "watching the host's addresses",
        source,
    })?;
    let mut pipeline = Pipeline::build(config)?;
    pipeline.tracker.set_own_addresses(own.addresses());
    restore(&mut pipeline, &snapshot);
    let (restored, adopted) = reconcile(&mut firewall, &mut pipeline, now_micros())?;
    let mut mode = pipeline.position(snapshot.position.clone())?;

    let mut daemon = Daemon {
        config_path: config_path.to_path_buf(),
        firewall,
        committer,
        state,
        position: snapshot.position,
        counters: Counters::default(),
        per_jail: HashMap::new(),
        pending: Vec::new(),
        pending_since: None,
        found: Vec::new(),
        added: Vec::new(),
        added_prefixes: Vec::new(),
        unlogged_since: None,
        hits: Vec::new(),
        last_entry: None,
        last_failure: None,
        counted: false,
        last_entry_time: None,
        last_saved: Instant::now(),
        last_status: Instant::now(),
        last_expire: Instant::now(),
        dirty: false,
        position_dirty: false,
        started: Instant::now(),
        errors: 0,
        status_stale: false,
        trim_due: true,
    };
    tracing::info!(
        message_id = log::STARTED,
        "banjo {} started: {} jails on the {}, table inet {}; {} bans restored to the kernel, {} found there",
        env!("CARGO_PKG_VERSION"),
        pipeline.config.jails.len(),
        pipeline.config.journal,
        pipeline.config.table,
        restored,
        adopted
    );
    let _ = notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&daemon.status_line(&pipeline)),
    ]);
    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
    let mut last_watchdog = Instant::now();

    loop {
        daemon.drain(&mut pipeline, &mut mode);
        let now = Instant::now();
        if let Some(period) = watchdog {
            if now.duration_since(last_watchdog) >= period {
                let _ = notify::notify(&[sd_notify::NotifyState::Watchdog]);
                last_watchdog = now;
            }
        }
        let mut timeout: Option<Duration> =
            watchdog.map(|p| p.saturating_sub(now.duration_since(last_watchdog)));
        let mut shorten = |t: Duration| timeout = Some(timeout.map_or(t, |x| x.min(t)));
        // Only a failure can complete a ban, so timer reads are worth it
        // while some address has failures on record (its next one may be
        // the maxretry-th), or right after any entry.
        let armed = pipeline.tracker.tracked() > 0;
        match daemon.last_entry.map(|t| now.duration_since(t)) {
            _ if pipeline.tracker.ban_imminent()
                && daemon
                    .last_failure
                    .is_some_and(|t| now.duration_since(t) < ACTIVE_FOR) =>
            {
                shorten(IMMINENT_POLL)
            }
            Some(quiet) if quiet < ACTIVE_FOR => shorten(ACTIVE_POLL),
            Some(quiet) if quiet < WARM_FOR || armed => shorten(WARM_POLL),
            _ => {}
        }
        if daemon.dirty || daemon.status_stale {
            shorten(SAVE_EVERY);
        }
        if daemon.trim_due && !daemon.dirty && timeout.map_or(true, |t| t >= ACTIVE_POLL) {
            daemon.trim_due = false;
            release_startup_memory();
        }
        let journal_fd = pipeline.journal.fd()?;
        // SAFETY: the fd belongs to the sd_journal handle in `pipeline`,
        // which is not replaced while this borrow lives (until after poll).
        let journal_fd = unsafe { BorrowedFd::borrow_raw(journal_fd) };
        let mut fds = [
            PollFd::new(journal_fd, PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(control.as_fd(), PollFlags::POLLIN),
            PollFd::new(own.as_fd(), PollFlags::POLLIN),
            PollFd::new(watch.as_fd(), PollFlags::POLLIN),
        ];
        // ppoll: poll's timeout is whole milliseconds.
        let poll_timeout =
            timeout.map(|t| TimeSpec::from_duration(t.max(Duration::from_micros(50))));
        match ppoll(&mut fds, poll_timeout, None) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(source) => {
                return Err(Error::System {
                    what: "polling",
                    source,
                })
            }
        }
        let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        let (journal_ready, signal_ready, control_ready, own_ready, watch_ready) = (
            ready(&fds[0]),
            ready(&fds[1]),
            ready(&fds[2]),
            ready(&fds[3]),
            ready(&fds[4]),
        );
        if watch_ready {
            let changes = watch.read()?;
            if let Err(e) = daemon.on_changes(&mut pipeline, changes) {
                tracing::error!(
                    "rebuilding the firewall table failed (retried on the next change): {e}"
                );
            }
        }
        if own_ready && own.changed() {
            tracing::debug!("own addresses now {:?}", own.addresses());
            pipeline.tracker.set_own_addresses(own.addresses());
        }
        if journal_ready {
            pipeline.journal.process()?;
        }
        if control_ready {
            // Read what the journal holds first, so a status request sees
            // every entry written before it was sent.
            daemon.drain(&mut pipeline, &mut mode);
            while let Some((mut conn, peer, request)) = control.accept() {
                let response = daemon.handle(&mut pipeline, &mut mode, &peer, request);
                pipeline.tracker.set_own_addresses(own.addresses());
                conn.reply(&response);
            }
        }
        if signal_ready {
            match signals.read_signal() {
                Ok(Some(info)) => match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGHUP) => {
                        let reloaded = daemon.reload(&mut pipeline, &mut mode);
                        pipeline.tracker.set_own_addresses(own.addresses());
                        if let Err(e) = reloaded {
                            tracing::error!(
                                message_id = log::RELOAD,
                                "reload refused, keeping the running configuration: {e}"
                            );
                        }
                    }
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

    let _ = notify::notify(&[sd_notify::NotifyState::Stopping]);
    daemon.flush(&mut pipeline)?;
    daemon.dirty = true;
    daemon.save(&pipeline)?;
    // The last lines, before the one saying banjo stopped.
    daemon.committer.finish();
    tracing::info!(
        message_id = log::STOPPED,
        "banjo stopped; bans stay in the kernel until they expire"
    );
    Ok(())
}

/// After start-up and each reload: see `trim.rs`.
fn release_startup_memory() {
    let started = Instant::now();
    let t = trim::trim();
    tracing::debug!(
        "gave back the start-up's memory in {:?}: {} kB of file pages in {} mappings unmapped",
        started.elapsed(),
        t.file_bytes / 1024,
        t.mappings
    );
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

/// A random key for the tracker's rndtime jitter.
fn seed() -> u64 {
    let mut buf = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf));
    u64::from_ne_bytes(buf) ^ now_micros()
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
        let want_line = config
            .jails
            .iter()
            .any(|j| j.input == crate::jail::FilterInput::Fail2banLine);
        let journal = Journal::open(&config.journal, &matches, want_line)?;
        let names = config
            .jails
            .iter()
            .map(|j| j.name.clone().into_boxed_str())
            .collect();
        Ok(Pipeline {
            config,
            filter,
            cache,
            tracker,
            journal,
            jails_of_match,
            names,
        })
    }

    fn jail_id(&self, name: &str) -> Option<JailId> {
        self.config
            .jails
            .iter()
            .position(|j| j.name == name)
            .map(|i| JailId(i as u16))
    }

    fn jail_name(&self, id: JailId) -> &str {
        self.config
            .jails
            .get(id.index())
            .map_or("?", |j| j.name.as_str())
    }

    /// Places the reader: after a restart, `findtime` before the saved
    /// position, to replay; on a first start, `findtime` before now, so a
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

/// Puts the saved bans and history of jails that still exist into the
/// tracker.
fn restore(p: &mut Pipeline, snapshot: &Snapshot) {
    for b in &snapshot.bans {
        if let Some(jail) = p.jail_id(&b.jail) {
            let bantime = Bantime::from_timeout(b.bantime.map(Duration::from_secs));
            let until = b.until.unwrap_or(Micros::MAX);
            p.tracker
                .restore_ban(jail, b.ip, ActiveBan { until, bantime });
        }
    }
    for h in &snapshot.history {
        if let Some(jail) = p.jail_id(&h.jail) {
            p.tracker.restore_history(
                jail,
                h.ip,
                History {
                    count: h.count,
                    last: h.last,
                },
            );
        }
    }
}

/// Makes the kernel and the tracker agree, both ways: unexpired bans the
/// kernel lacks (a reboot, a flushed ruleset) go back with their
/// remaining time, in one batch; elements the tracker does not know (a
/// lost state file) are adopted. Elements already there are left alone:
/// no unban window. Returns (restored, adopted).
fn reconcile(fw: &mut Firewall, p: &mut Pipeline, now: Micros) -> Result<(usize, usize), Error> {
    let mut adopted = 0;
    let mut present: HashSet<(JailId, IpAddr)> = HashSet::new();
    let mut present_nets: HashSet<(JailId, IpNet)> = HashSet::new();
    for i in 0..p.config.jails.len() {
        let jail = JailId(i as u16);
        for e in fw.list(jail)? {
            let ip = e.ip.to_canonical();
            present.insert((jail, ip));
            if p.tracker.active_ban(jail, ip).is_none() {
                p.tracker
                    .restore_ban(jail, ip, from_kernel(e.timeout, e.expires, now));
                adopted += 1;
            }
        }
        for e in fw.list_prefixes(jail)? {
            present_nets.insert((jail, e.net));
            if p.tracker.active_prefix_ban(jail, e.net).is_none() {
                p.tracker
                    .restore_prefix_ban(jail, e.net, from_kernel(e.timeout, e.expires, now));
                adopted += 1;
            }
        }
    }
    let missing: Vec<Element> = p
        .tracker
        .active_bans()
        .filter(|(jail, ip, ban)| ban.until > now && !present.contains(&(*jail, *ip)))
        .map(|(jail, ip, ban)| {
            let (timeout, expires) = to_kernel(ban, now);
            Element {
                jail,
                ip,
                timeout,
                expires,
            }
        })
        .collect();
    fw.add(&missing)?;
    let missing_nets: Vec<PrefixElement> = p
        .tracker
        .active_prefix_bans()
        .filter(|(jail, net, ban)| ban.until > now && !present_nets.contains(&(*jail, *net)))
        .map(|(jail, net, ban)| {
            let (timeout, expires) = to_kernel(ban, now);
            PrefixElement {
                jail,
                net,
                timeout,
                expires,
            }
        })
        .collect();
    fw.add_prefixes(&missing_nets)?;
    Ok((missing.len() + missing_nets.len(), adopted))
}

/// An active ban from what the kernel reports of an element.
fn from_kernel(timeout: Option<Duration>, expires: Option<Duration>, now: Micros) -> ActiveBan {
    let bantime = Bantime::from_timeout(timeout);
    let until = match timeout {
        Some(t) => now.saturating_add(micros(expires.unwrap_or(t))),
        None => Micros::MAX,
    };
    ActiveBan { until, bantime }
}

/// An element's (timeout, time left) for an active ban, as of `now`.
fn to_kernel(ban: ActiveBan, now: Micros) -> (Option<Duration>, Option<Duration>) {
    let timeout = ban.bantime.timeout();
    let expires = timeout.map(|_| Duration::from_micros(ban.until.saturating_sub(now)));
    (timeout, expires)
}

fn micros(d: Duration) -> Micros {
    u64::try_from(d.as_micros()).unwrap_or(Micros::MAX)
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

/// Updates `jail`'s counters; the name is copied only the first time
/// (this runs for every failure and every ban).
fn jail_counters(
    per_jail: &mut HashMap<String, JailCounters>,
    jail: &str,
    update: impl FnOnce(&mut JailCounters),
) {
    match per_jail.get_mut(jail) {
        Some(c) => update(c),
        None => update(per_jail.entry(jail.to_string()).or_default()),
    }
}

struct Daemon {
    config_path: PathBuf,
    firewall: Firewall,
    /// Commits the batches sent while a drain reads on.
    committer: Committer,
    state: State,
    /// The last fully processed journal entry.
    position: Option<Position>,
    counters: Counters,
    per_jail: HashMap<String, JailCounters>,
    /// Bans decided, not yet sent to the kernel, and since when.
    pending: Vec<Ban>,
    pending_since: Option<Instant>,
    /// Log lines held until the bans of the drain are in the kernel (see
    /// `LOG_AT`): failures counted (their `Found` lines), bans and prefix
    /// bans added, and since when the oldest waits.
    found: Vec<Line>,
    added: Vec<Ban>,
    added_prefixes: Vec<PrefixBan>,
    unlogged_since: Option<Instant>,
    hits: Vec<Hit>,
    last_entry: Option<Instant>,
    /// When the last failure was counted (a ban may follow soon): set at
    /// the end of the drain in which `counted` became true.
    last_failure: Option<Instant>,
    counted: bool,
    /// Journal time of the newest entry read, for the lag in `stats`.
    last_entry_time: Option<Micros>,
    last_saved: Instant,
    last_status: Instant,
    last_expire: Instant,
    /// Bans or history changed since the state file was last saved.
    dirty: bool,
    /// The journal position moved since it was last saved.
    position_dirty: bool,
    started: Instant,
    /// Runtime errors since start (logged, rate-limited).
    errors: u64,
    /// Entries were read since STATUS= was last sent.
    status_stale: bool,
    /// Start-up or a reload ran since the last trim (`trim.rs`). Their
    /// memory is given back before the first wait that is neither a
    /// ban's imminent read nor followed by a save, i.e. once the
    /// journal's backlog is read, its results are saved and reported.
    trim_due: bool,
}

impl Daemon {
    /// Reads every available entry, acting on each; flushes bans and saves
    /// the state at the end (at most once a second). Failures here are
    /// logged, not fatal: a journal read error ends this round (the next
    /// wakeup tries again), a refused netlink batch leaves its addresses
    /// unbanned so their next failure tries again, and the table watch
    /// repairs a damaged ruleset.
    fn drain(&mut self, p: &mut Pipeline, mode: &mut Mode) {
        if let Err(e) = self.try_drain(p, mode) {
            self.errors += 1;
            if self.errors <= 10 || self.errors % 1000 == 0 {
                tracing::error!("{e} (error {} since start)", self.errors);
            }
        }
    }

    fn try_drain(&mut self, p: &mut Pipeline, mode: &mut Mode) -> Result<(), Error> {
        let read = self.read_entries(p, mode);
        // However the reading ended, the bans decided so far go to the
        // kernel and the lines held so far to the log, now rather than on
        // the next wakeup.
        let flushed = self.flush(p);
        let any = read?;
        flushed?;
        let now = Instant::now();
        if std::mem::take(&mut self.counted) {
            self.last_failure = Some(now);
        }
        if self.dirty {
            if now.duration_since(self.last_saved) >= save_every(&p.tracker) {
                self.save(p)?;
            }
        } else if self.position_dirty {
            // Nothing but the position changed: the small file, at once,
            // so a restart resumes exactly after the last entry read.
            if let Some(pos) = &self.position {
                self.state.save_position(pos)?;
            }
            self.position_dirty = false;
        }
        if now.duration_since(self.last_expire) >= EXPIRE_EVERY {
            p.tracker.expire(now_micros());
            self.last_expire = now;
        }
        self.status_stale |= any;
        // The first report after start-up or a reload goes out at once,
        // so that it runs before the trim (`trim.rs`), not a second after
        // it, mapping its formatting code back.
        let report_due = self.trim_due || now.duration_since(self.last_status) >= STATUS_EVERY;
        if self.status_stale && report_due {
            let _ = notify::notify(&[sd_notify::NotifyState::Status(&self.status_line(p))]);
            self.last_status = now;
            self.status_stale = false;
        }
        Ok(())
    }

    /// Reads and acts on every available entry; whether there was any.
    /// Bans go to the committer while more entries follow; the caller
    /// flushes what is left.
    fn read_entries(&mut self, p: &mut Pipeline, mode: &mut Mode) -> Result<bool, Error> {
        let mut any = false;
        let mut since_clock = 0u32;
        while let Some(entry) = p.journal.next_entry()? {
            any = true;
            let time = entry.time;
            let jails = jails_for(&p.jails_of_match, entry.matched);
            self.hits.clear();
            if !jails.is_empty() {
                // `entry.line` is empty unless some jail uses a fail2ban
                // filter, which matches it instead of the bare MESSAGE.
                p.filter.scan_entry(
                    &mut p.cache,
                    entry.message,
                    entry.line,
                    &jails,
                    &mut self.hits,
                );
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
            self.last_entry_time = Some(time);
            let hits = std::mem::take(&mut self.hits);
            for hit in &hits {
                match hit.outcome {
                    Outcome::Failure(ip) => {
                        let failure = Failure {
                            jail: hit.jail,
                            ip,
                            time,
                        };
                        if replaying {
                            p.tracker.replay(&failure);
                        } else {
                            let verdict = p.tracker.observe(&failure);
                            self.act(p, &failure, verdict);
                        }
                    }
                    Outcome::Ignored if !replaying => self.counters.ignored += 1,
                    Outcome::NotAnAddress if !replaying => self.counters.not_an_address += 1,
                    _ => {}
                }
            }
            self.hits = hits;
            if !replaying {
                self.counters.lines += 1;
                self.position_dirty = true;
            }
            if self.pending_since.is_some() || self.unlogged_since.is_some() {
                // Sizes on every entry, the clock every CLOCK_EVERY: a
                // clock read costs as much as matching a benign line.
                since_clock += 1;
                let (mut log_due, mut send_due) = (
                    self.found.len() + self.added.len() >= LOG_AT,
                    self.pending.len() >= FLUSH_AT,
                );
                if !log_due && !send_due && since_clock >= CLOCK_EVERY {
                    since_clock = 0;
                    let now = Instant::now();
                    let waited = |since: Option<Instant>, limit| {
                        since.is_some_and(|t| now.duration_since(t) >= limit)
                    };
                    log_due = waited(self.unlogged_since, LOG_AFTER);
                    send_due = waited(self.pending_since, FLUSH_AFTER);
                }
                if log_due {
                    self.flush(p)?;
                } else if send_due {
                    self.hand_over(p)?;
                }
            }
        }
        if any {
            self.last_entry = Some(Instant::now());
            if self.position_dirty {
                if let (Ok(cursor), Ok(time)) = (p.journal.cursor(), p.journal.time()) {
                    self.position = Some(Position { cursor, time });
                }
            }
        }
        Ok(any)
    }

    fn act(&mut self, p: &Pipeline, failure: &Failure, verdict: Verdict) {
        let jail = p.jail_name(failure.jail);
        let ip = failure.ip.to_canonical();
        match verdict {
            Verdict::IgnoredIp => {
                tracing::debug!(jail, ip = %ip, "[{jail}] Ignore {ip} by ignoreip");
            }
            Verdict::AlreadyBanned => {
                tracing::debug!(jail, ip = %ip, "[{jail}] {ip} already banned");
            }
            Verdict::Counted { failures } => {
                self.count_failure(jail, failure, Some(failures));
            }
            Verdict::Ban(ban) => {
                self.count_failure(jail, failure, None);
                self.pending_since.get_or_insert_with(Instant::now);
                self.pending.push(ban);
            }
        }
    }

    fn count_failure(&mut self, jail: &str, failure: &Failure, failures: Option<u32>) {
        self.counters.failures += 1;
        jail_counters(&mut self.per_jail, jail, |c| c.failures += 1);
        self.counted = true;
        self.unlogged_since.get_or_insert_with(Instant::now);
        self.found.push(Line::Found {
            jail: failure.jail,
            ip: failure.ip.to_canonical(),
            failures,
        });
    }

    /// Puts every decided ban into the kernel (waiting for the batches
    /// handed over, then sending the rest), then writes every held log
    /// line. The lines are written even if the kernel refused a batch:
    /// the failures were counted all the same.
    fn flush(&mut self, p: &mut Pipeline) -> Result<(), Error> {
        let settled = self.settle(p);
        let sent = self.send(p);
        self.write_log(p);
        settled.and(sent)
    }

    /// Hands the pending bans to the committer and reads on; takes note
    /// of the batches it has finished meanwhile.
    fn hand_over(&mut self, p: &mut Pipeline) -> Result<(), Error> {
        self.pending_since = None;
        let mut result = Ok(());
        while let Some((bans, outcome)) = self.committer.try_done() {
            result = result.and(self.landed(p, bans, outcome));
        }
        if let Some((bans, elements)) = self.take_pending() {
            if let Err((bans, elements)) = self.committer.submit(bans, elements) {
                // The thread is gone: this loop commits them itself.
                result = result.and(self.commit(p, bans, &elements));
            }
        }
        result
    }

    /// Waits until the committer has finished every batch handed over.
    fn settle(&mut self, p: &mut Pipeline) -> Result<(), Error> {
        let mut result = Ok(());
        while let Some((bans, outcome)) = self.committer.wait() {
            result = result.and(self.landed(p, bans, outcome));
        }
        result
    }

    /// Applies the pending bans (and the prefix bans they led to) in one
    /// batch each, from this thread; their lines wait for
    /// [`Daemon::write_log`].
    fn send(&mut self, p: &mut Pipeline) -> Result<(), Error> {
        match self.take_pending() {
            Some((bans, elements)) => self.commit(p, bans, &elements),
            None => Ok(()),
        }
    }

    /// The pending bans and their elements, for one batch; `None` if none
    /// are pending.
    fn take_pending(&mut self) -> Option<(Vec<Ban>, Vec<Element>)> {
        self.pending_since = None;
        if self.pending.is_empty() {
            return None;
        }
        let elements = self.pending.iter().map(element).collect();
        Some((std::mem::take(&mut self.pending), elements))
    }

    /// Commits one batch from this thread.
    fn commit(
        &mut self,
        p: &mut Pipeline,
        bans: Vec<Ban>,
        elements: &[Element],
    ) -> Result<(), Error> {
        let outcome = self.firewall.add(elements).map_err(CommitError::from);
        self.landed(p, bans, outcome)
    }

    /// Takes note of a batch's outcome. Bans that did not land are
    /// forgotten, so the next failure of each address tries again rather
    /// than counting it banned.
    fn landed(
        &mut self,
        p: &mut Pipeline,
        mut bans: Vec<Ban>,
        outcome: Result<(), CommitError>,
    ) -> Result<(), Error> {
        if let Err(e) = outcome {
            for ban in bans {
                p.tracker.forget_ban(ban.jail, ban.ip);
            }
            return Err(e.into());
        }
        self.unlogged_since.get_or_insert_with(Instant::now);
        self.added.append(&mut bans);
        self.dirty = true;
        self.send_prefixes(p)
    }

    /// Writes the held lines: every `Found`, then every `Ban`.
    fn write_log(&mut self, p: &Pipeline) {
        self.unlogged_since = None;
        let mut batch = Batch::new(&p.names);
        let mut found = std::mem::take(&mut self.found);
        for line in found.drain(..) {
            self.queue(&mut batch, line);
        }
        // Keep the buffer's capacity for the next drain.
        self.found = found;
        let mut added = std::mem::take(&mut self.added);
        for ban in added.drain(..) {
            let line = self.ban_line(p, &ban, false);
            self.queue(&mut batch, line);
        }
        self.added = added;
        for b in std::mem::take(&mut self.added_prefixes) {
            let line = self.prefix_ban_line(p, &b);
            self.queue(&mut batch, line);
        }
        self.emit(batch);
    }

    /// Adds `line` to `batch`, handing the batch over when that fills it.
    fn queue(&mut self, batch: &mut Batch, line: Line) {
        if let Some(full) = batch.push(line) {
            self.emit(full);
        }
    }

    /// Has `lines` written after every line handed over before them.
    fn emit(&mut self, lines: Batch) {
        if lines.is_empty() {
            return;
        }
        if let Err(lines) = self.committer.write(lines) {
            lines.write_all();
        }
    }

    /// Someone else changed banjo's table. Deleted bans are manual unbans;
    /// anything structural (table, chain, rules or a set gone, or lost
    /// notifications) makes banjo rebuild the ruleset and put every
    /// unexpired ban back with its remaining time.
    fn on_changes(&mut self, p: &mut Pipeline, changes: Vec<Change>) -> Result<(), Error> {
        let mut heal = false;
        for change in changes {
            match change {
                Change::ElementsDeleted { jail, ips } => {
                    let name = p.jail_name(jail).to_string();
                    for ip in ips {
                        if p.tracker.forget_ban(jail, ip) {
                            self.log_unban(p, &name, &ip, " (removed from the set by hand)");
                        }
                    }
                    self.dirty = true;
                }
                Change::PrefixesDeleted { jail, nets } => {
                    let name = p.jail_name(jail).to_string();
                    for net in nets {
                        if p.tracker.forget_prefix_ban(jail, net) {
                            self.log_unban(p, &name, &net, " (removed from the set by hand)");
                        }
                    }
                    self.dirty = true;
                }
                Change::TableDeleted
                | Change::ChainDeleted
                | Change::RulesDeleted(_)
                | Change::SetDeleted { .. }
                | Change::Overrun => heal = true,
            }
        }
        if heal && !self.firewall.verify()? {
            let started = Instant::now();
            self.firewall.setup(&p.config.jails)?;
            let (restored, _) = reconcile(&mut self.firewall, p, now_micros())?;
            tracing::warn!(
                "table inet {} was changed behind banjo's back: rebuilt with {restored} bans in {:.1} ms",
                p.config.table,
                started.elapsed().as_secs_f64() * 1e3
            );
        }
        Ok(())
    }

    fn log_unban(
        &mut self,
        p: &Pipeline,
        jail: &str,
        what: &dyn std::fmt::Display,
        how: &'static str,
    ) {
        self.counters.unbans += 1;
        let line = Line::Unban(Box::new(Unban {
            jail: jail.to_string(),
            what: what.to_string(),
            how,
        }));
        self.emit(Batch::of(&p.names, line));
    }

    /// Applies the prefix bans the tracker decided; their lines wait in
    /// `added_prefixes`.
    fn send_prefixes(&mut self, p: &mut Pipeline) -> Result<(), Error> {
        let prefixes = p.tracker.take_prefix_bans();
        if prefixes.is_empty() {
            return Ok(());
        }
        let elements: Vec<PrefixElement> = prefixes
            .iter()
            .map(|b| PrefixElement {
                jail: b.jail,
                net: b.net,
                timeout: b.bantime.timeout(),
                expires: None,
            })
            .collect();
        if let Err(e) = self.firewall.add_prefixes(&elements) {
            for b in &prefixes {
                p.tracker.forget_prefix_ban(b.jail, b.net);
            }
            return Err(e.into());
        }
        self.unlogged_since.get_or_insert_with(Instant::now);
        self.added_prefixes.extend(prefixes);
        Ok(())
    }

    /// Counts a prefix ban; its line.
    fn prefix_ban_line(&mut self, p: &Pipeline, b: &PrefixBan) -> Line {
        self.counters.bans += 1;
        jail_counters(&mut self.per_jail, p.jail_name(b.jail), |c| c.bans += 1);
        Line::PrefixBan {
            jail: b.jail,
            net: b.net,
            bantime: b.bantime.secs(),
        }
    }

    /// Counts a ban; its line.
    fn ban_line(&mut self, p: &Pipeline, ban: &Ban, manual: bool) -> Line {
        self.counters.bans += 1;
        jail_counters(&mut self.per_jail, p.jail_name(ban.jail), |c| c.bans += 1);
        Line::Ban {
            jail: ban.jail,
            ip: ban.ip,
            bantime: ban.bantime.secs(),
            count: ban.count,
            manual,
        }
    }

    /// Writes the state file if anything changed.
    fn save(&mut self, p: &Pipeline) -> Result<(), Error> {
        if !self.dirty {
            return Ok(());
        }
        let snapshot = snapshot_of(p, self.position.clone());
        self.state.save(&snapshot)?;
        self.dirty = false;
        self.position_dirty = false;
        self.last_saved = Instant::now();
        Ok(())
    }

    fn status_line(&self, p: &Pipeline) -> String {
        format!(
            "{} jails, {} lines, {} failures, {} bans",
            p.config.jails.len(),
            self.counters.lines,
            self.counters.failures,
            self.counters.bans
        )
    }

    /// SIGHUP or `banjo reload`: validate the new configuration first; on
    /// error the old one keeps running. On success the pipeline is rebuilt
    /// (sets of removed jails deleted, new ones created, surviving bans
    /// kept) and the journal replayed from findtime before the current
    /// position, so every jail's counts start from what the journal holds.
    fn reload(&mut self, p: &mut Pipeline, mode: &mut Mode) -> Result<usize, Error> {
        let _ = notify::notify(&[
            sd_notify::NotifyState::Reloading,
            sd_notify::NotifyState::monotonic_usec_now()
                .unwrap_or(sd_notify::NotifyState::Reloading),
        ]);
        let result = Config::load(&self.config_path)
            .map_err(Error::from)
            .and_then(|config| {
                if config.table != p.config.table {
                    tracing::warn!("the firewall table name changed; it takes effect on restart");
                }
                let mut config = config;
                config.table = p.config.table.clone();
                Pipeline::build(config)
            });
        let outcome = match result {
            Ok(mut fresh) => {
                self.flush(p)?;
                self.firewall.setup(&fresh.config.jails)?;
                // Carry bans and history of surviving jails over by name.
                let snapshot = snapshot_of(p, None);
                restore(&mut fresh, &snapshot);
                *mode = fresh.position(self.position.clone())?;
                *p = fresh;
                self.dirty = true;
                self.save(p)?;
                tracing::info!(
                    message_id = log::RELOAD,
                    "reloaded {}: {} jails",
                    self.config_path.display(),
                    p.config.jails.len()
                );
                self.trim_due = true;
                Ok(p.config.jails.len())
            }
            Err(e) => Err(e),
        };
        let _ = notify::notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&self.status_line(p)),
        ]);
        outcome
    }
}

/// The state file's contents for `p`'s tracker.
fn snapshot_of(p: &Pipeline, position: Option<Position>) -> Snapshot {
    let saved = |jail: JailId, ip: IpAddr, prefix: Option<u8>, ban: ActiveBan| SavedBan {
        jail: p.jail_name(jail).to_string(),
        ip,
        prefix,
        until: (ban.until != Micros::MAX).then_some(ban.until),
        bantime: ban.bantime.timeout().map(|d| d.as_secs()),
    };
    let mut bans: Vec<SavedBan> = p
        .tracker
        .active_bans()
        .map(|(jail, ip, ban)| saved(jail, ip, None, ban))
        .collect();
    bans.extend(
        p.tracker
            .active_prefix_bans()
            .map(|(jail, net, ban)| saved(jail, net.addr(), Some(net.prefix()), ban)),
    );
    Snapshot {
        version: crate::state::VERSION,
        position,
        bans,
        history: p
            .tracker
            .histories()
            .map(|(jail, ip, h)| SavedHistory {
                jail: p.jail_name(jail).to_string(),
                ip,
                count: h.count,
                last: h.last,
            })
            .collect(),
    }
}

fn element(ban: &Ban) -> Element {
    Element {
        jail: ban.jail,
        ip: ban.ip,
        timeout: ban.bantime.timeout(),
        expires: None,
    }
}
