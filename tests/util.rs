//! Test scaffolding: network namespaces, journal files written by
//! systemd-journal-remote, the built `banjo` binary with a notify socket,
//! and reading nftables sets back with `nft -j` (an independent reader:
//! banjo's own netlink code is what is under test).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A unique short name for this test's resources.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}",
        std::process::id() % 100_000,
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

/// True when the test may touch namespaces, nftables and journal files;
/// prints why it skips otherwise.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    println!("skipped {test}: needs root (network namespaces, nftables, journal files)");
    false
}

pub fn banjo_bin() -> &'static str {
    env!("CARGO_BIN_EXE_banjo")
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique(&format!("banjo-{tag}-")));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`ip netns`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        let name = unique("banjo-t");
        run(Command::new("ip").args(["netns", "add", &name]));
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        Netns { name }
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        run(self.command(program).args(args))
    }

    /// Runs `f` on a thread that has entered the namespace.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in netns")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// One element of an nft set as `nft -j` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SetElement {
    pub ip: IpAddr,
    pub timeout: Option<u64>,
    pub expires: Option<u64>,
}

/// Lists `inet TABLE SET` with `nft -j`; an absent set is empty.
pub fn nft_elements(ns: &Netns, table: &str, set: &str) -> Vec<SetElement> {
    let out = ns
        .command("nft")
        .args(["-j", "list", "set", "inet", table, set])
        .output()
        .expect("nft");
    if !out.status.success() {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nft json");
    let mut found = Vec::new();
    let sets = v["nftables"].as_array().cloned().unwrap_or_default();
    for item in sets {
        let Some(elems) = item["set"]["elem"].as_array() else {
            continue;
        };
        for e in elems {
            let (addr, timeout, expires) = if let Some(s) = e.as_str() {
                (s.to_string(), None, None)
            } else {
                let inner = &e["elem"];
                (
                    inner["val"].as_str().unwrap_or_default().to_string(),
                    inner["timeout"].as_u64(),
                    inner["expires"].as_u64(),
                )
            };
            if let Ok(ip) = addr.parse() {
                found.push(SetElement {
                    ip,
                    timeout,
                    expires,
                });
            }
        }
    }
    found
}

pub fn banned_ips(ns: &Netns, table: &str, jail: &str) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = nft_elements(ns, table, &format!("{jail}_v4"))
        .into_iter()
        .chain(nft_elements(ns, table, &format!("{jail}_v6")))
        .map(|e| e.ip)
        .collect();
    v.sort();
    v
}

/// Waits up to 5 s for `jail`'s sets to satisfy `done`. On a timeout the
/// failure shows what the sets held and banjo's log: a CI run keeps no more.
pub fn await_bans(
    ns: &Netns,
    table: &str,
    jail: &str,
    banjo: &Banjo,
    done: impl Fn(&[IpAddr]) -> bool,
) {
    let held = eventually(Duration::from_secs(5), || {
        done(&banned_ips(ns, table, jail))
    });
    assert!(
        held,
        "[{jail}] holds {:?}; banjo's log:\n{}",
        banned_ips(ns, table, jail),
        banjo.log().join("\n")
    );
}

pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_micros() as u64
}

/// One journal entry to write.
#[derive(Clone, Debug)]
pub struct Entry {
    pub time: u64,
    pub unit: String,
    pub ident: String,
    /// `SYSLOG_PID` and `_PID` (a kernel line has neither).
    pub pid: Option<u32>,
    /// More fields, as export-format lines (`NAME=value\n`).
    pub extra: String,
    pub message: String,
}

impl Entry {
    /// A Postfix smtpd line, as Postfix in `postfix@-.service` logs it.
    pub fn smtpd(time: u64, message: &str) -> Entry {
        Entry {
            time,
            unit: "postfix@-.service".into(),
            ident: "postfix/smtpd".into(),
            pid: Some(22095),
            extra: String::new(),
            message: message.into(),
        }
    }

    fn export(&self, out: &mut Vec<u8>) {
        // Journal export format; MESSAGE is written in the binary form so
        // any byte is allowed.
        let pid = self
            .pid
            .map_or(String::new(), |p| format!("_PID={p}\nSYSLOG_PID={p}\n"));
        let text = format!(
            "__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID=0123456789abcdef0123456789abcdef\n_HOSTNAME=email\n_TRANSPORT=syslog\n{pid}_SYSTEMD_UNIT={}\nSYSLOG_IDENTIFIER={}\n{}",
            self.time,
            self.time % 1_000_000_000_000,
            self.unit,
            self.ident,
            self.extra
        );
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"MESSAGE\n");
        out.extend_from_slice(&(self.message.len() as u64).to_le_bytes());
        out.extend_from_slice(self.message.as_bytes());
        out.extend_from_slice(b"\n\n");
    }
}

pub const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";

/// Journal files in a directory, written by systemd-journal-remote. Either
/// all at once ([`JournalDir::write_file`]) or live through a FIFO.
pub struct JournalDir {
    pub dir: TempDir,
    feed: Option<(std::fs::File, Child)>,
}

impl JournalDir {
    pub fn new() -> JournalDir {
        assert!(
            Path::new(JOURNAL_REMOTE).exists(),
            "{JOURNAL_REMOTE} missing: apt-get install systemd-journal-remote"
        );
        JournalDir {
            dir: TempDir::new("journal"),
            feed: None,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `entries` into a new journal file `NAME.journal`.
    pub fn write_file(&self, name: &str, entries: &[Entry]) {
        let mut data = Vec::new();
        for e in entries {
            e.export(&mut data);
        }
        let mut child = Command::new(JOURNAL_REMOTE)
            .arg(format!("--output={}/{name}.journal", self.path().display()))
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("systemd-journal-remote");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&data)
            .expect("write export");
        assert!(child.wait().expect("wait").success());
    }

    /// Starts the live file with a benign entry, so that a test's first
    /// failure is not also the file's creation.
    pub fn start_live(&mut self) {
        self.append(&Entry::smtpd(
            now_micros(),
            "connect from unknown[198.51.100.1]",
        ));
    }

    /// Appends one entry to the live file, fed through a FIFO so that
    /// journal-remote writes it at once (a follower sees it within ms).
    pub fn append(&mut self, entry: &Entry) {
        if self.feed.is_none() {
            let fifo = self.path().join("feed.fifo");
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
            let child = Command::new(JOURNAL_REMOTE)
                .arg(format!("--output={}/live.journal", self.path().display()))
                .arg(&fifo)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("systemd-journal-remote");
            let writer = std::fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .expect("open fifo");
            self.feed = Some((writer, child));
        }
        let mut data = Vec::new();
        entry.export(&mut data);
        if let Some((w, _)) = self.feed.as_mut() {
            w.write_all(&data).expect("write fifo");
            w.flush().expect("flush fifo");
        }
    }
}

impl Drop for JournalDir {
    fn drop(&mut self) {
        if let Some((w, mut child)) = self.feed.take() {
            drop(w);
            let _ = child.wait();
        }
    }
}

/// A running `banjo run`, inside a namespace, with a notify socket so the
/// test knows when it is READY.
pub struct Banjo {
    child: Option<Child>,
    notify: UnixDatagram,
    pub stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _notify_dir: TempDir,
}

impl Banjo {
    pub fn start(ns: &Netns, config: &Path) -> Banjo {
        Banjo::start_with_env(ns, config, &[])
    }

    /// Like [`Banjo::start`], with extra environment variables.
    pub fn start_with_env(ns: &Netns, config: &Path, env: &[(&str, &str)]) -> Banjo {
        let dir = TempDir::new("notify");
        let sock = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&sock).expect("bind notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let mut child = ns
            .command(banjo_bin())
            .args(["run", "--config"])
            .arg(config)
            .env("NOTIFY_SOCKET", &sock)
            .env("BANJO_LOG_STDERR", "1")
            .env("BANJO_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn banjo");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if std::env::var_os("BANJO_TEST_VERBOSE").is_some() {
                    eprintln!("banjo: {line}");
                }
                if let Ok(mut v) = sink.lock() {
                    v.push(line);
                }
            }
        });
        let mut b = Banjo {
            child: Some(child),
            notify,
            stderr,
            _notify_dir: dir,
        };
        b.wait_for("READY=1", Duration::from_secs(20));
        b
    }

    /// Waits for a notify message containing `what`.
    pub fn wait_for(&mut self, what: &str, limit: Duration) {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        while start.elapsed() < limit {
            if let Ok(n) = self.notify.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n]).contains(what) {
                    return;
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("banjo exited ({status}) before {what}: {:?}", self.log());
                }
            }
        }
        panic!(
            "banjo did not send {what} within {limit:?}: {:?}",
            self.log()
        );
    }

    /// Whether a log line containing every one of `needles` shows up
    /// within 5 s (stderr is read on another thread, so it may lag the
    /// notify socket).
    pub fn logged(&self, needles: &[&str]) -> bool {
        eventually(Duration::from_secs(5), || {
            self.log()
                .iter()
                .any(|l| needles.iter().all(|n| l.contains(n)))
        })
    }

    pub fn log(&self) -> Vec<String> {
        self.stderr.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// banjo's pid while it runs (`ip netns exec` execs banjo in place,
    /// so the child's pid is banjo's).
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        // Never kill(0, ..): that would signal the whole test process group.
        if let Some(pid) = self.pid().filter(|p| *p > 0) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    }

    pub fn kill(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// SIGTERM, and the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let mut c = self.child.take().expect("running");
        c.wait().expect("wait banjo")
    }
}

impl Drop for Banjo {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` until it is true or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Writes a banjo.toml for a test: `[daemon]` and `[journal]` point into
/// `dir`, the table is unique, `jails` is appended verbatim.
pub fn write_config(dir: &Path, journal: &Path, table: &str, jails: &str) -> PathBuf {
    let path = dir.join("banjo.toml");
    let text = format!(
        "[daemon]\nstate_dir = \"{}\"\nsocket = \"{}\"\n\n[journal]\ndirectory = \"{}\"\n\n[firewall]\ntable = \"{table}\"\n\n{jails}",
        dir.join("state").display(),
        dir.join("banjo.sock").display(),
        journal.display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// Percentile of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A TCP listener inside a namespace that accepts and closes connections
/// until dropped.
pub struct Listener {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Listener {
    pub fn start(ns: &Netns, addr: &str) -> Listener {
        let path = format!("/run/netns/{}", ns.name);
        let addr = addr.to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let l = std::net::TcpListener::bind(&addr).expect("bind listener");
            l.set_nonblocking(true).expect("nonblocking");
            let _ = tx.send(());
            while !flag.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((s, _)) => drop(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv().expect("listener up");
        Listener { stop }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Connects from `source` (an address of `ns`) to `dest`; the errno if refused.
pub fn tcp_connect(ns: &Netns, source: &str, dest: &str) -> Result<(), nix::errno::Errno> {
    use nix::sys::socket::{
        bind, connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let source: std::net::SocketAddrV4 = format!("{source}:0").parse().expect("source");
    let dest: std::net::SocketAddrV4 = dest.parse().expect("dest");
    ns.within(move || {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let tv = nix::sys::time::TimeVal::new(2, 0);
        setsockopt(&fd, sockopt::SendTimeout, &tv)?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::from(source),
        )?;
        connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::from(dest),
        )?;
        Ok(())
    })
}

/// Watches one jail's sets over netlink from a thread inside the
/// namespace, polling every 200 µs: fine-grained enough to time bans to the
/// millisecond, which an `nft` process per poll is not.
pub struct SetWatcher {
    requests: std::sync::mpsc::Sender<(IpAddr, Duration, std::sync::mpsc::Sender<Option<Instant>>)>,
}

impl SetWatcher {
    pub fn new(ns: &Netns, table: &str, jail: &str) -> SetWatcher {
        let path = format!("/run/netns/{}", ns.name);
        let table = table.to_string();
        let jail = jail.to_string();
        let (tx, rx) = std::sync::mpsc::channel::<(
            IpAddr,
            Duration,
            std::sync::mpsc::Sender<Option<Instant>>,
        )>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let mut fw = banjo::firewall::Firewall::open(&table).expect("netlink");
            let config = banjo::config::Config::parse(
                Path::new("watch.toml"),
                &format!("[jail.{jail}]\nfailregex = ['x <HOST>']\n"),
            )
            .expect("watch config");
            fw.adopt(&config.jails).expect("adopt");
            let _ = ready_tx.send(());
            for (ip, limit, reply) in rx {
                let start = Instant::now();
                let mut seen = None;
                while start.elapsed() < limit {
                    let present = fw
                        .list(banjo::jail::JailId(0))
                        .map(|l| l.iter().any(|e| e.ip == ip))
                        .unwrap_or(false);
                    if present {
                        seen = Some(Instant::now());
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                let _ = reply.send(seen);
            }
        });
        ready_rx.recv().expect("watcher up");
        SetWatcher { requests: tx }
    }

    /// When `ip` was first seen in the jail's sets, or `None` after `limit`.
    pub fn wait_for(&self, ip: IpAddr, limit: Duration) -> Option<Instant> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.requests.send((ip, limit, tx)).ok()?;
        rx.recv().ok().flatten()
    }
}

/// What most daemon tests start from: a namespace, a journal directory,
/// a scratch directory, a unique table name, and a config for `jails`.
/// Destructure it (`let Scene { ns, journal, .. } = ...`): the fields drop
/// in declaration order like the locals they replace.
pub struct Scene {
    pub ns: Netns,
    pub journal: JournalDir,
    pub dir: TempDir,
    pub table: String,
    pub config: PathBuf,
}

impl Scene {
    pub fn new(tag: &str, jails: &str) -> Scene {
        let ns = Netns::new();
        let journal = JournalDir::new();
        let dir = TempDir::new(tag);
        let table = unique("t");
        let config = write_config(dir.path(), journal.path(), &table, jails);
        Scene {
            ns,
            journal,
            dir,
            table,
            config,
        }
    }
}
