//! The Debian package's pieces: the hardened unit (systemd-analyze verify
//! and security), banjo under the unit's privileges (a non-root user in
//! systemd-journal with only CAP_NET_ADMIN), the journal catalog, the
//! manual pages, the bash completion and debian/banjo.install.
//!
//! The package build itself (dpkg-buildpackage) is too slow for CI and is
//! not run here; debian/README.source says how it works.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// The exposure `systemd-analyze security` may give the unit, at most.
const MAX_EXPOSURE: f64 = 2.0;

/// CAP_NET_ADMIN's bit in /proc/PID/status capability masks.
const CAP_NET_ADMIN: u64 = 1 << 12;

fn source(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The path of `program` on PATH (or in the sbin directories root has).
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn have(test: &str, program: &str) -> bool {
    if find_program(program).is_some() {
        return true;
    }
    println!("skipped {test}: {program} is not installed");
    false
}

fn output(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn unit_exposure_is_at_most_two() {
    let test = "unit_exposure_is_at_most_two";
    if !have(test, "systemd-analyze") {
        return;
    }
    let unit = source("units/banjo.service");
    let (_, text) = output(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&unit),
    );
    // "→ Overall exposure level for banjo.service: 1.4 OK 🙂"
    let exposure = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for banjo.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    println!("systemd-analyze security --offline=true units/banjo.service: exposure {exposure}");
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} > {MAX_EXPOSURE}:\n{text}"
    );
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let test = "unit_passes_systemd_analyze_verify";
    if !have(test, "systemd-analyze") {
        return;
    }
    let units = Path::new("/lib/systemd/system");
    if !units.join("sysinit.target").exists() {
        println!("skipped {test}: no systemd units in {}", units.display());
        return;
    }
    // A root directory holding what the unit refers to: the system's units
    // (for sysinit.target and friends), the unit itself, the built binary
    // as /usr/sbin/banjo and kill(1) for ExecReload.
    let root = TempDir::new("verify");
    let r = root.path();
    let lib = r.join("lib/systemd");
    std::fs::create_dir_all(&lib).unwrap();
    let (ok, text) = output(Command::new("cp").arg("-a").arg(units).arg(&lib));
    assert!(ok, "copying {}: {text}", units.display());
    let etc = r.join("etc/systemd/system");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::copy(source("units/banjo.service"), etc.join("banjo.service")).unwrap();
    for (from, to) in [(banjo_bin(), "usr/sbin/banjo"), ("/bin/kill", "bin/kill")] {
        let to = r.join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {from}: {e}"));
    }

    // Documentation=man:banjo(8) man:banjo.toml(5) is checked with man(1)
    // when it is there, finding the pages in doc/ through MANPATH.
    let man = find_program("man").is_some();
    let manpath = r.join("man");
    for (section, page) in [("man8", "banjo.8"), ("man5", "banjo.toml.5")] {
        std::fs::create_dir_all(manpath.join(section)).unwrap();
        std::fs::copy(
            source(&format!("doc/{page}")),
            manpath.join(section).join(page),
        )
        .unwrap();
    }
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify")
        .arg(format!("--man={}", if man { "yes" } else { "no" }))
        .arg(format!("--root={}", r.display()))
        .arg("banjo.service")
        .env("MANPATH", &manpath);
    let (ok, text) = output(&mut cmd);
    println!("systemd-analyze verify banjo.service (man pages checked: {man}): {ok}");
    assert!(ok && text.trim().is_empty(), "{cmd:?}:\n{text}");
}

#[test]
fn catalog_explains_every_message_id() {
    let test = "catalog_explains_every_message_id";
    if !have(test, "journalctl") {
        return;
    }
    let root = TempDir::new("catalog");
    let dir = root.path().join("usr/lib/systemd/catalog");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(root.path().join("var/lib/systemd/catalog")).unwrap();
    std::fs::copy(source("catalog/banjo.catalog"), dir.join("banjo.catalog")).unwrap();
    let journalctl = |args: &[&str]| {
        let (ok, text) = output(
            Command::new("journalctl")
                .arg(format!("--root={}", root.path().display()))
                .args(args),
        );
        assert!(ok, "journalctl {args:?}: {text}");
        text
    };
    journalctl(&["--update-catalog"]);
    let list = journalctl(&["--list-catalog"]);
    use banjo::log::{BAN, FOUND, RELOAD, STARTED, STOPPED, UNBAN};
    for id in [FOUND, BAN, UNBAN, STARTED, RELOAD, STOPPED] {
        assert!(
            list.lines().any(|l| l.starts_with(id)),
            "{id} is not in the catalog:\n{list}"
        );
    }
    // The ban's entry shows the jail and address of the entry it explains.
    let ban = journalctl(&["--dump-catalog", BAN]);
    assert!(
        ban.contains("Subject: banjo banned @IP@ in jail @JAIL@"),
        "{ban}"
    );
}

#[test]
fn manual_pages_and_completion_are_well_formed() {
    let test = "manual_pages_and_completion_are_well_formed";
    if have(test, "groff") {
        for page in ["doc/banjo.8", "doc/banjo.toml.5"] {
            let out = Command::new("groff")
                .args(["-man", "-ww", "-z", "-Tutf8"])
                .arg(source(page))
                .env("LC_ALL", "C.UTF-8")
                .output()
                .unwrap();
            let warnings = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && warnings.is_empty(),
                "{page}: {warnings}"
            );
        }
    }
    if have(test, "bash") {
        // The completion parses, and completes the subcommands.
        let script = format!(
            "source {}; COMP_WORDS=(banjo st); COMP_CWORD=1; _banjo; echo \"${{COMPREPLY[*]}}\"",
            source("completions/banjo").display()
        );
        let (ok, text) = output(Command::new("bash").args(["-c", &script]));
        assert!(ok, "{text}");
        assert_eq!(text.trim(), "status stats");
    }
}

#[test]
fn every_file_the_package_installs_exists() {
    // debian/banjo.install and banjo.manpages name files of this tree; the
    // binary is built by debian/rules into debian/cargo-target.
    for list in ["debian/banjo.install", "debian/banjo.manpages"] {
        let text = std::fs::read_to_string(source(list)).unwrap();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let from = line.split_whitespace().next().unwrap();
            if from.starts_with("debian/cargo-target/") {
                continue;
            }
            assert!(source(from).exists(), "{list}: {from} is missing");
        }
    }
}

/// A user and group id nobody has: the test's stand-in for `_banjo`.
fn unused_id() -> Option<u32> {
    (61000..62000).find(|&id| {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(id))
            .ok()
            .flatten()
            .is_none()
            && nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(id))
                .ok()
                .flatten()
                .is_none()
    })
}

/// The unit's privileges, with setpriv(1): the user and group `id`, the
/// supplementary group `journal` and nothing else, CAP_NET_ADMIN as the
/// only capability (ambient, so that it survives exec).
fn as_banjo_user(ns: &Netns, id: u32, journal: Option<u32>) -> Command {
    let mut cmd = ns.command("setpriv");
    cmd.arg(format!("--reuid={id}"))
        .arg(format!("--regid={id}"));
    match journal {
        Some(gid) => cmd.arg(format!("--groups={gid}")),
        None => cmd.arg("--clear-groups"),
    };
    cmd.args([
        "--inh-caps=-all,+net_admin",
        "--ambient-caps=-all,+net_admin",
        "--bounding-set=-all,+net_admin",
        "--",
    ]);
    cmd
}

/// `NAME:\tVALUE` from /proc/PID/status.
fn proc_status(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

fn chown(path: &Path, uid: Option<u32>, gid: Option<u32>, mode: u32) {
    nix::unistd::chown(
        path,
        uid.map(nix::unistd::Uid::from_raw),
        gid.map(nix::unistd::Gid::from_raw),
    )
    .unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The daemon, killed on drop.
struct Unprivileged {
    child: Child,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Unprivileged {
    fn log(&self) -> String {
        self.log.lock().map(|v| v.join("\n")).unwrap_or_default()
    }
}

impl Drop for Unprivileged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn runs_as_a_journal_reader_with_only_cap_net_admin() {
    let test = "runs_as_a_journal_reader_with_only_cap_net_admin";
    if !root_or_skip(test) || !have(test, "setpriv") {
        return;
    }
    let Some(journal_gid) = nix::unistd::Group::from_name("systemd-journal")
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
    else {
        println!("skipped {test}: no group systemd-journal");
        return;
    };
    let Some(id) = unused_id() else {
        println!("skipped {test}: no unused user id in 61000..62000");
        return;
    };
    let ns = Netns::new();
    let table = unique("t");

    // Journal files as journald leaves them: root:systemd-journal, 0640, in
    // a directory only that group may enter.
    let journal = JournalDir::new();
    let now = now_micros();
    let flood = |ip: &str| format!("lost connection after AUTH from unknown[{ip}]");
    let mut entries = Vec::new();
    for i in 0..3 {
        entries.push(Entry::smtpd(
            now - (30 - i) * 1_000_000,
            &flood("203.0.113.7"),
        ));
        entries.push(Entry::smtpd(
            now - (20 - i) * 1_000_000,
            &flood("2001:db8::7"),
        ));
    }
    entries.push(Entry::smtpd(now - 10_000_000, &flood("203.0.113.8")));
    journal.write_file("system", &entries);
    chown(journal.path(), Some(0), Some(journal_gid), 0o750);
    let file = journal.path().join("system.journal");
    chown(&file, Some(0), Some(journal_gid), 0o640);

    // The group is what lets the user read them.
    let readable = |groups: Option<u32>| {
        as_banjo_user(&ns, id, groups)
            .args(["test", "-r"])
            .arg(&file)
            .status()
            .unwrap()
            .success()
    };
    assert!(!readable(None), "the journal is readable without the group");
    assert!(
        readable(Some(journal_gid)),
        "the group cannot read the journal"
    );

    // State and control socket in a directory of the user's own, as the
    // unit's StateDirectory and RuntimeDirectory are.
    let dir = TempDir::new("unprivileged");
    let config = write_config(
        dir.path(),
        journal.path(),
        &table,
        "[jail.pkg]\nfailregex = ['lost connection after AUTH from (.*)\\[<HOST>\\]']\nmaxretry = 3\nbantime = \"10m\"\nport = \"smtp\"\n",
    );
    chown(dir.path(), Some(id), Some(id), 0o700);
    chown(&config, Some(id), Some(id), 0o600);

    let notify_dir = TempDir::new("notify");
    let notify_path = notify_dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    chown(&notify_path, Some(id), Some(id), 0o600);

    let mut child = as_banjo_user(&ns, id, Some(journal_gid))
        .arg(banjo_bin())
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("BANJO_LOG_STDERR", "1")
        .env("BANJO_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let pipe = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Ok(mut v) = sink.lock() {
                v.push(line);
            }
        }
    });
    let mut banjo = Unprivileged { child, log };

    // READY=1 arrives over a socket only the user may write to.
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(n) = notify.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                break;
            }
        }
        if let Ok(Some(status)) = banjo.child.try_wait() {
            panic!("banjo exited ({status}) before READY=1:\n{}", banjo.log());
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no READY=1 within 20 s:\n{}",
            banjo.log()
        );
    }

    // `ip netns exec` and setpriv exec in place: the child is banjo, with
    // the unit's identity and nothing more.
    let pid = banjo.child.id();
    assert!(
        proc_status(pid, "Name").starts_with("banjo"),
        "{}",
        proc_status(pid, "Name")
    );
    let uid = proc_status(pid, "Uid");
    assert!(
        uid.split_whitespace().all(|u| u == id.to_string()),
        "Uid: {uid}"
    );
    assert_eq!(proc_status(pid, "Groups"), journal_gid.to_string());
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        let mask = u64::from_str_radix(&proc_status(pid, set), 16).unwrap();
        assert_eq!(mask, CAP_NET_ADMIN, "{set}");
    }

    // It read the journal it may read, and banned through netlink.
    let want: Vec<IpAddr> = vec![
        "203.0.113.7".parse().unwrap(),
        "2001:db8::7".parse().unwrap(),
    ];
    assert!(
        eventually(Duration::from_secs(10), || banned_ips(&ns, &table, "pkg")
            == want),
        "banned: {:?}\n{}",
        banned_ips(&ns, &table, "pkg"),
        banjo.log()
    );
    let log = banjo.log();
    assert!(log.contains("[pkg] Ban 203.0.113.7"), "{log}");
    assert!(
        dir.path().join("banjo.sock").exists(),
        "no control socket:\n{log}"
    );

    // SIGTERM: a clean stop that saves its state in the user's directory.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = banjo.child.wait().unwrap();
    assert!(status.success(), "{status}:\n{}", banjo.log());
    let state = dir.path().join("state");
    let saved: Vec<_> = std::fs::read_dir(&state)
        .unwrap_or_else(|e| panic!("{}: {e}", state.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!saved.is_empty(), "nothing saved in {}", state.display());
    for path in saved {
        assert_eq!(
            std::fs::metadata(&path).unwrap().uid(),
            id,
            "{}",
            path.display()
        );
    }
    // The kernel keeps the bans after banjo is gone.
    assert_eq!(banned_ips(&ns, &table, "pkg"), want);
}
