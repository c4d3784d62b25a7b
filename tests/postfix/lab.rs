//! The Postfix lab: real Postfix 3.7 with Cyrus SASL (sasldb) in its own
//! network namespace, logging through syslog(3) into a private journald
//! namespace instance, its processes in a cgroup v2 directory named
//! `postfix@-.service` so that journald stamps `_SYSTEMD_UNIT`; clients in
//! a second namespace holding many documentation addresses.
//!
//! Nothing here touches the machine's own Postfix configuration, journal or
//! firewall: Postfix runs from a private config, queue and data directory
//! (`master -c DIR/etc`), sees a private `/dev` (with `log` pointing at the
//! private journald) and private `/etc/hosts`, `/etc/resolv.conf` and
//! `/etc/nsswitch.conf` through its own mount namespace. Everything the lab
//! starts or creates is stopped (by pid) and removed on drop;
//! [`Footprint::assert_gone`] checks that afterwards.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::util::{unique, Netns, TempDir};

pub const SERVER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// A client address used only to check that Postfix answers.
pub const PROBE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The sasldb user and password.
pub const USER: &str = "alice@example.test";
pub const PASSWORD: &str = "Corr3ct-h0rse";
/// A deliverable recipient (virtual mailbox).
pub const RCPT: &str = "bob@example.test";

const JOURNALD: &str = "/lib/systemd/systemd-journald";
const MASTER: &str = "/usr/lib/postfix/sbin/master";
/// The cgroup v2 hierarchy: `unified` on a hybrid system, the root on a
/// unified one.
fn cgroup2() -> &'static Path {
    let hybrid = Path::new("/sys/fs/cgroup/unified");
    if hybrid.join("cgroup.procs").exists() {
        hybrid
    } else {
        Path::new("/sys/fs/cgroup")
    }
}
const PACKAGES: &[&str] = &["postfix", "sasl2-bin", "libsasl2-modules"];
const POLICY_RC: &str = "/usr/sbin/policy-rc.d";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_with_stdin(cmd: &mut Command, input: &str) {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `/usr/sbin/policy-rc.d` that forbids starting services, removed on
/// drop only if this process created it.
struct PolicyRc {
    created: bool,
}

impl PolicyRc {
    fn install() -> PolicyRc {
        if Path::new(POLICY_RC).exists() {
            return PolicyRc { created: false };
        }
        std::fs::write(
            POLICY_RC,
            "#!/bin/sh\n# banjo e2e test: no service starts during install\nexit 101\n",
        )
        .expect("write policy-rc.d");
        std::fs::set_permissions(POLICY_RC, std::fs::Permissions::from_mode(0o755))
            .expect("chmod policy-rc.d");
        PolicyRc { created: true }
    }
}

impl Drop for PolicyRc {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_file(POLICY_RC);
        }
    }
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs Postfix and Cyrus SASL when missing, preseeded, with services
/// kept from starting. Returns how long it took (zero if nothing to do).
pub fn ensure_packages() -> Duration {
    let start = Instant::now();
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Duration::ZERO;
    }
    println!("postfix e2e: installing {missing:?}");
    run_with_stdin(
        &mut Command::new("debconf-set-selections"),
        "postfix postfix/main_mailer_type select Internet Site\npostfix postfix/mailname string mail.example.test\n",
    );
    let _policy = PolicyRc::install();
    let install = || {
        Command::new("apt-get")
            .args([
                "-o",
                "DPkg::Lock::Timeout=600",
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
            ])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .expect("apt-get")
    };
    let mut out = install();
    if !out.status.success() {
        // Package lists may be missing on a fresh image.
        run(Command::new("apt-get").args(["-o", "DPkg::Lock::Timeout=600", "update", "-q"]));
        out = install();
    }
    assert!(
        out.status.success(),
        "apt-get install {missing:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

/// One journal entry as `journalctl -o json` shows it.
#[derive(Debug, Clone)]
pub struct JEntry {
    /// `__REALTIME_TIMESTAMP`, µs.
    pub time: u64,
    pub message: String,
    pub ident: String,
    pub unit: String,
    pub pid: String,
    pub priority: String,
}

fn field(v: &serde_json::Value, name: &str) -> String {
    match &v[name] {
        serde_json::Value::String(s) => s.clone(),
        // Binary or non-UTF-8 values come as an array of bytes.
        serde_json::Value::Array(a) => {
            let bytes: Vec<u8> = a
                .iter()
                .filter_map(|b| b.as_u64())
                .map(|b| b as u8)
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        _ => String::new(),
    }
}

/// What the lab created, to check after teardown that none of it is left.
#[derive(Debug, Clone)]
pub struct Footprint {
    pub netns: Vec<String>,
    pub cgroups: Vec<PathBuf>,
    /// Processes, each with a marker that its command line or cgroup holds
    /// while it is ours (a pid may be reused by an unrelated process).
    pub pids: Vec<(i32, String)>,
    pub paths: Vec<PathBuf>,
    pub journal_ns: String,
}

/// `Some(command line and state)` while `pid` exists and its command line
/// or cgroup holds `marker`.
fn ours(pid: i32, marker: &str) -> Option<String> {
    let read = |f: &str| {
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/{f}")).unwrap_or_default())
            .replace('\0', " ")
    };
    let (cmdline, cgroup) = (read("cmdline"), read("cgroup"));
    (cmdline.contains(marker) || cgroup.contains(marker)).then(|| {
        let stat = read("stat");
        let state = stat.rsplit(") ").next().unwrap_or_default().chars().next();
        format!("{cmdline} state {state:?}")
    })
}

impl Footprint {
    /// Panics naming whatever is still there.
    pub fn assert_gone(&self) {
        let mut left = Vec::new();
        let listed = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for ns in &self.netns {
            if Path::new("/run/netns").join(ns).exists()
                || listed.split_whitespace().any(|w| w == ns)
            {
                left.push(format!("network namespace {ns}"));
            }
        }
        for cg in &self.cgroups {
            if cg.exists() {
                left.push(format!("cgroup {}", cg.display()));
            }
        }
        // Orphaned Postfix children are reaped by PID 1 at its own pace.
        let start = Instant::now();
        while self.pids.iter().any(|(p, m)| ours(*p, m).is_some())
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        for (pid, marker) in &self.pids {
            if let Some(what) = ours(*pid, marker) {
                left.push(format!("process {pid} ({what})"));
            }
        }
        for p in &self.paths {
            if p.exists() {
                left.push(format!("path {}", p.display()));
            }
        }
        for dir in ["/var/log/journal", "/run/log/journal"] {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(&format!(".{}", self.journal_ns)) {
                    left.push(format!("journal {}", e.path().display()));
                }
            }
        }
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
}

/// The running lab.
pub struct Lab {
    pub journal_ns: String,
    pub server: Netns,
    pub clients: Netns,
    journald: Option<Child>,
    keepalive: Option<std::os::unix::net::UnixStream>,
    master: Option<Child>,
    /// Created cgroup directories, outermost first.
    cgroups: Vec<PathBuf>,
    /// Every pid seen in the Postfix cgroup, for the leftover check.
    seen_pids: Vec<i32>,
    postfix_dir: PathBuf,
    pub dir: TempDir,
}

impl Lab {
    /// Sets up journald, namespaces and Postfix; `clients` are the
    /// addresses the client namespace holds (besides [`PROBE`]).
    pub fn start(clients: &[IpAddr]) -> Lab {
        let dir = TempDir::new("e2e");
        let journal_ns = unique("banjoe2e");
        let mut lab = Lab {
            journal_ns,
            server: Netns::new(),
            clients: Netns::new(),
            journald: None,
            keepalive: None,
            master: None,
            cgroups: Vec::new(),
            seen_pids: Vec::new(),
            postfix_dir: dir.path().join("postfix"),
            dir,
        };
        lab.start_journald();
        lab.wire(clients);
        lab.configure_postfix();
        lab.start_postfix();
        lab
    }

    /// What the lab holds now (call [`Lab::note_pids`] first).
    pub fn footprint(&self) -> Footprint {
        let slice = format!("/{}.slice/", self.journal_ns);
        let mut pids: Vec<(i32, String)> =
            self.seen_pids.iter().map(|p| (*p, slice.clone())).collect();
        if let Some(j) = &self.journald {
            pids.push((j.id() as i32, self.journal_ns.clone()));
        }
        Footprint {
            netns: vec![self.server.name.clone(), self.clients.name.clone()],
            // system.slice may be shared with other users of the hierarchy.
            cgroups: self
                .cgroups
                .iter()
                .filter(|c| !c.ends_with("system.slice"))
                .cloned()
                .collect(),
            pids,
            paths: vec![self.dir.path().to_path_buf(), self.runtime_dir()],
            journal_ns: self.journal_ns.clone(),
        }
    }

    fn runtime_dir(&self) -> PathBuf {
        PathBuf::from(format!("/run/systemd/journal.{}", self.journal_ns))
    }

    fn start_journald(&mut self) {
        let child = Command::new(JOURNALD)
            .arg(&self.journal_ns)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start systemd-journald");
        self.journald = Some(child);
        let sock = self.runtime_dir().join("dev-log");
        let stdout = self.runtime_dir().join("stdout");
        let start = Instant::now();
        // A namespace instance exits after 30 s without clients (systemd
        // would start it again on the next message; nothing does here).
        // An open stdout stream, which logs nothing, keeps it running.
        let keepalive = loop {
            if sock.exists() {
                if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&stdout) {
                    use std::io::Write;
                    // Stream header: identifier, unit, priority, level
                    // prefix, forward to syslog, kmsg, console.
                    s.write_all(b"banjo-e2e-keepalive\n\n6\n0\n0\n0\n0\n")
                        .expect("stdout stream header");
                    break s;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "journald namespace {} did not create {}",
                self.journal_ns,
                sock.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        self.keepalive = Some(keepalive);
    }

    /// A veth pair created inside the namespaces (the root namespace gets
    /// nothing), the server's addresses, routes back to the clients'
    /// documentation prefixes, and every client address.
    fn wire(&self, clients: &[IpAddr]) {
        let s = &self.server;
        let c = &self.clients;
        s.exec(
            "ip",
            &[
                "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", &c.name,
            ],
        );
        s.exec("ip", &["addr", "add", "192.0.2.1/24", "dev", "v0"]);
        s.exec(
            "ip",
            &["addr", "add", "2001:db8::1/64", "dev", "v0", "nodad"],
        );
        s.exec("ip", &["link", "set", "v0", "up"]);
        for net in ["198.51.100.0/24", "203.0.113.0/24"] {
            s.exec("ip", &["route", "add", net, "dev", "v0"]);
        }
        c.exec("ip", &["addr", "add", &format!("{PROBE}/24"), "dev", "v1"]);
        let mut batch = String::new();
        for a in clients {
            match a {
                IpAddr::V4(v4) if v4.octets()[..3] == [192, 0, 2] => {
                    batch.push_str(&format!("addr add {v4}/24 dev v1\n"));
                }
                IpAddr::V4(v4) => batch.push_str(&format!("addr add {v4}/32 dev v1\n")),
                IpAddr::V6(v6) => batch.push_str(&format!("addr add {v6}/64 dev v1 nodad\n")),
            }
        }
        let path = self.dir.path().join("client-addrs.batch");
        std::fs::write(&path, batch).expect("write ip batch");
        run(Command::new("ip")
            .args(["-n", &c.name, "-batch"])
            .arg(&path));
        c.exec("ip", &["link", "set", "v1", "up"]);
    }

    fn configure_postfix(&self) {
        let d = &self.postfix_dir;
        for sub in ["etc/sasl", "spool", "data", "mail"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        let user = nix::unistd::User::from_name("postfix")
            .expect("getpwnam")
            .expect("user postfix");
        let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
        for sub in ["data", "mail"] {
            std::os::unix::fs::chown(d.join(sub), Some(uid), Some(gid)).expect("chown");
        }
        let p = d.display();
        let main_cf = format!(
            "compatibility_level = 3.6
config_directory = {p}/etc
queue_directory = {p}/spool
data_directory = {p}/data
meta_directory = /etc/postfix
myhostname = mail.example.test
mydomain = example.test
myorigin = $mydomain
mydestination =
inet_interfaces = all
inet_protocols = all
mynetworks = 127.0.0.0/8 [::1]/128
smtpd_banner = $myhostname ESMTP
biff = no
alias_maps =
alias_database =
smtputf8_enable = no
smtpd_helo_required = yes
smtpd_helo_restrictions = reject_non_fqdn_helo_hostname
smtpd_relay_restrictions = permit_mynetworks permit_sasl_authenticated reject_unauth_destination
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
virtual_mailbox_domains = example.test
virtual_mailbox_base = {p}/mail
virtual_mailbox_maps = inline:{{ {{{USER}=alice/}}, {{{RCPT}=bob/}} }}
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
"
        );
        std::fs::write(d.join("etc/main.cf"), main_cf).expect("main.cf");
        // No chroot: the private mount namespace already gives smtpd its
        // own /etc/hosts; submission (587) logs as postfix/submission/smtpd.
        let master_cf = "\
smtp       inet n - n - - smtpd
submission inet n - n - - smtpd
  -o syslog_name=postfix/submission
pickup     unix n - n 60 1 pickup
cleanup    unix n - n - 0 cleanup
qmgr       unix n - n 300 1 qmgr
rewrite    unix - - n - - trivial-rewrite
bounce     unix - - n - 0 bounce
defer      unix - - n - 0 bounce
trace      unix - - n - 0 bounce
verify     unix - - n - 1 verify
flush      unix n - n 1000? 0 flush
proxymap   unix - - n - - proxymap
showq      unix n - n - - showq
error      unix - - n - - error
retry      unix - - n - - error
discard    unix - - n - - discard
virtual    unix - n n - - virtual
anvil      unix - - n - 1 anvil
scache     unix - - n - 1 scache
";
        std::fs::write(d.join("etc/master.cf"), master_cf).expect("master.cf");
        // Debian's Postfix reads Cyrus's smtpd.conf from $config_directory/sasl.
        std::fs::write(
            d.join("etc/sasl/smtpd.conf"),
            format!(
                "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: {p}/sasldb2\n"
            ),
        )
        .expect("smtpd.conf");
        let (name, realm) = USER.split_once('@').expect("user@realm");
        run_with_stdin(
            Command::new("saslpasswd2")
                .arg("-f")
                .arg(d.join("sasldb2"))
                .args(["-c", "-p", "-u", realm, name]),
            PASSWORD,
        );
        std::os::unix::fs::chown(d.join("sasldb2"), Some(0), Some(gid)).expect("chown sasldb");
        std::fs::set_permissions(d.join("sasldb2"), std::fs::Permissions::from_mode(0o640))
            .expect("chmod sasldb");
        // Name resolution inside Postfix's mount namespace: one client has
        // a forward-confirmed name (from /etc/hosts), every other lookup
        // fails at once (no DNS server), so Postfix shows `unknown[IP]`.
        std::fs::write(
            d.join("hosts"),
            "127.0.0.1 localhost\n::1 localhost\n192.0.2.1 mail.example.test\n198.51.100.77 bad.example.net\n",
        )
        .expect("hosts");
        std::fs::write(
            d.join("resolv.conf"),
            "nameserver 127.0.0.1\noptions attempts:1 timeout:1\n",
        )
        .expect("resolv.conf");
        std::fs::write(d.join("nsswitch.conf"), "hosts: files dns\n").expect("nsswitch.conf");
        // Creates the queue directories with Postfix's owners and modes.
        run(Command::new("postfix")
            .arg("-c")
            .arg(d.join("etc"))
            .arg("check"));
    }

    fn start_postfix(&mut self) {
        // _SYSTEMD_UNIT comes from the sender's cgroup v2 path (journald
        // skips `*.slice` components); a unique slice keeps parallel runs apart.
        let root = cgroup2();
        assert!(
            root.join("cgroup.controllers").exists(),
            "no cgroup v2 hierarchy at {}",
            root.display()
        );
        let system = root.join("system.slice");
        let slice = system.join(format!("{}.slice", self.journal_ns));
        let unit = slice.join("postfix@-.service");
        for d in [&system, &slice, &unit] {
            match std::fs::create_dir(d) {
                Ok(()) => self.cgroups.push(d.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && *d == system => {}
                Err(e) => panic!("mkdir {}: {e}", d.display()),
            }
        }
        let d = self.postfix_dir.display();
        let inner = format!(
            "set -e
mount -t tmpfs -o mode=0755,size=64k banjo-e2e-dev /dev
mknod -m 666 /dev/null c 1 3
mknod -m 666 /dev/zero c 1 5
mknod -m 666 /dev/random c 1 8
mknod -m 666 /dev/urandom c 1 9
ln -s /run/systemd/journal.{ns}/dev-log /dev/log
mount --bind {d}/hosts /etc/hosts
mount --bind {d}/resolv.conf /etc/resolv.conf
mount --bind {d}/nsswitch.conf /etc/nsswitch.conf
exec nsenter --net=/run/netns/{server} {MASTER} -c {d}/etc -s
",
            ns = self.journal_ns,
            server = self.server.name,
        );
        let inner_path = self.postfix_dir.join("inner.sh");
        std::fs::write(&inner_path, inner).expect("inner.sh");
        // Every step execs, so the child's pid is master's. The cgroup
        // move comes first: children inherit it, and journald reads it.
        let outer = format!(
            "set -e\necho $$ > {}/cgroup.procs\nexec unshare --mount --propagation private sh {}\n",
            unit.display(),
            inner_path.display()
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(outer)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postfix master");
        self.master = Some(child);
        let start = Instant::now();
        loop {
            if self
                .journal()
                .iter()
                .any(|e| e.ident == "postfix/master" && e.message.starts_with("daemon started"))
            {
                break;
            }
            if let Some(Ok(Some(status))) = self.master.as_mut().map(|m| m.try_wait()) {
                panic!("postfix master exited ({status}): {:#?}", self.journal());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "postfix did not start: {:#?}",
                self.journal()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.note_pids();
    }

    /// Records the pids now in the Postfix cgroup.
    pub fn note_pids(&mut self) {
        for pid in self.cgroup_pids() {
            if !self.seen_pids.contains(&pid) {
                self.seen_pids.push(pid);
            }
        }
    }

    fn cgroup_pids(&self) -> Vec<i32> {
        let Some(unit) = self.cgroups.last() else {
            return Vec::new();
        };
        std::fs::read_to_string(unit.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Postfix's SMTP (25) or submission (587) service over IPv4 or IPv6.
    pub fn smtp(&self, v6: bool, port: u16) -> SocketAddr {
        if v6 {
            SocketAddr::new(IpAddr::V6(SERVER6), port)
        } else {
            SocketAddr::new(IpAddr::V4(SERVER4), port)
        }
    }

    /// The server's address in the family of `client`.
    pub fn smtp_for(&self, client: IpAddr, port: u16) -> SocketAddr {
        self.smtp(client.is_ipv6(), port)
    }

    /// Every entry of the lab's journal namespace.
    pub fn journal(&self) -> Vec<JEntry> {
        self.journal_matching(&[])
    }

    /// The journal namespace's entries matching `journalctl` terms.
    pub fn journal_matching(&self, terms: &[&str]) -> Vec<JEntry> {
        let out = Command::new("journalctl")
            .arg(format!("--namespace={}", self.journal_ns))
            .args(["-o", "json", "--no-pager", "-q", "--all"])
            .args(terms)
            .output()
            .expect("journalctl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| JEntry {
                time: field(&v, "__REALTIME_TIMESTAMP").parse().unwrap_or(0),
                message: field(&v, "MESSAGE"),
                ident: field(&v, "SYSLOG_IDENTIFIER"),
                unit: field(&v, "_SYSTEMD_UNIT"),
                pid: field(&v, "_PID"),
                priority: field(&v, "PRIORITY"),
            })
            .collect()
    }

    /// Path of the virtual mailbox of `RCPT`.
    pub fn maildir(&self) -> PathBuf {
        self.postfix_dir.join("mail/bob/new")
    }

    /// Stops Postfix: SIGTERM to master (which passes it on), then SIGKILL
    /// to whatever of ours is still in its cgroup.
    fn stop_postfix(&mut self) {
        self.note_pids();
        if let Some(mut m) = self.master.take() {
            let _ = kill(Pid::from_raw(m.id() as i32), Signal::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) && !self.cgroup_pids().is_empty() {
                std::thread::sleep(Duration::from_millis(20));
            }
            for pid in self.cgroup_pids() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = m.wait();
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) && !self.cgroup_pids().is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let slice = format!("/{}.slice/", self.journal_ns);
        let start = Instant::now();
        while self.seen_pids.iter().any(|p| ours(*p, &slice).is_some())
            && start.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        for d in self.cgroups.iter().rev() {
            // A cgroup directory goes with rmdir (its files are virtual).
            let _ = std::fs::remove_dir(d);
        }
    }

    fn stop_journald(&mut self) {
        self.keepalive = None;
        if let Some(mut j) = self.journald.take() {
            let _ = kill(Pid::from_raw(j.id() as i32), Signal::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = j.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = j.kill();
            let _ = j.wait();
        }
        let _ = std::fs::remove_dir_all(self.runtime_dir());
        for dir in ["/var/log/journal", "/run/log/journal"] {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(&format!(".{}", self.journal_ns)) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_postfix();
        self.stop_journald();
        // The namespaces (and with the server's, every nftables table in
        // it) and the directory go when the fields drop.
    }
}
