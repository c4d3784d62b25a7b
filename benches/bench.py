#!/usr/bin/python3
"""banjo against fail2ban and fail2ban-rs, side by side (run it through
benches/run.sh, which installs the peers and builds everything first).

Every daemon runs inside a network namespace made here and deleted at the
end; nothing touches the host's firewall or its journal. Each figure is
the median of --runs runs with their min-max. See BENCHMARKS.md.
"""

import argparse
import atexit
import glob
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
JOURNALD = "/lib/systemd/systemd-journald"
PY = "/usr/bin/python3"  # Debian's python: fail2ban's and python3-systemd's

FLOOD_RE = r"lost connection after AUTH from (.*)\[<HOST>\]"
FLOOD_PORTS = "http,https,smtp,submission,pop3,pop3s,imap,imaps,sieve"
FLOOD_PORTNUMS = ["80", "443", "25", "587", "110", "995", "143", "993", "4190"]
UNIT_MATCH = "_SYSTEMD_UNIT=postfix@-.service"
IDENT_MATCH = "SYSLOG_IDENTIFIER=postfix/smtpd"
# A burst of 10 000 bans takes banjo and `nft -f` well under a second, so
# they get this many runs at least: their spread on this 2-vCPU VM comes
# from the host (CPU steal, which vCPU the committing thread wakes on,
# the kernel's per-CPU allocator), and three runs' median swung by a
# third between back-to-back runs.
BURST_RUNS = 9
# A banjo latency trial slower than this (the p99 target) keeps the run's
# files (the daemon's log, the trials' samples) in the cache, to tell a
# stalled read from a host that took the CPU away.
SLOW_TRIAL_MS = 5.0
# fail2ban's filter.d/postfix.conf (mode=more) as fail2ban expands it, for
# fail2ban-rs, which matches the whole syslog line and has no prefregex.
# Split in four: fail2ban-rs takes the longest literal before <HOST> as a
# required word (its Aho-Corasick prefilter), even inside an alternation or
# an optional group, so `(?:\w+: (?:milter-)?reject:|(?:improper ...|too
# many errors) after \S+)` in one pattern would never match.
_F2B_TAIL = (r"(?::\d+)?: [45][50][04] [45]\.\d\.\d+ (?:(?:<[^>]*>)?: )?(?:(?:Helo command|"
             r"(?:Sender|Recipient) address) rejected: )?(?:Service unavailable|(?:Client host|"
             r"Command|Data command) rejected|Relay access denied|(?:Host|Domain) not found|"
             r"need fully-qualified hostname|match|[Uu](?:ser unknown|ndeliverable address))\b")
_F2B_PRE = r"postfix(?:-\w+)?/\w+(?:/smtp[ds])?\[\d+\]: "
_F2B_MID = r" [A-Z]{4} from [^\[]*\[<HOST>\]"
F2BRS_POSTFIX = [_F2B_PRE + head + _F2B_MID + _F2B_TAIL for head in (
    r"\w+: reject:", r"\w+: milter-reject:",
    r"improper command pipelining after \S+", r"too many errors after \S+")]

PROCS = []
NETNS = []
RESTORE = []  # (from, to) renames to undo
JOURNALDS = []  # (proc, storage dir)
LOG = sys.stderr


def say(msg):
    LOG.write("[bench %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    LOG.flush()


# ---------------------------------------------------------------- plumbing

def run(argv, check=True, **kw):
    return subprocess.run(argv, check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **kw)


def spawn(argv, ns=None, env=None, log=None, stdin=subprocess.DEVNULL):
    if ns:
        argv = ["ip", "netns", "exec", ns] + argv
    out = open(log, "ab") if log else subprocess.DEVNULL
    p = subprocess.Popen(argv, stdin=stdin, stdout=out, stderr=out, env=env,
                         start_new_session=True)
    PROCS.append(p)
    return p


def group_members(pgid):
    pids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rfind(")") + 2:].split()
        if int(fields[2]) == pgid:
            pids.append(int(stat.split("/")[2]))
    return pids


def stop(p, timeout=15):
    """Stops `p` and the helpers it forked (nft, journalctl): SIGTERM to the
    process group `spawn` created for it, SIGKILL after `timeout`. Once the
    leader is gone, only processes still in that group are signalled (a
    group exists as long as a member does, so its id is still ours)."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    for _ in range(50):
        left = group_members(p.pid)
        if not left:
            break
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
    if p in PROCS:
        PROCS.remove(p)


_NS_SEQ = [0]


def netns():
    while True:
        _NS_SEQ[0] += 1
        name = "bjb%d-%d" % (os.getpid() % 100000, _NS_SEQ[0])
        if not os.path.exists("/run/netns/" + name):
            break
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])
    NETNS.append(name)
    return name


def drop_netns(name):
    run(["ip", "netns", "delete", name], check=False)
    if name in NETNS:
        NETNS.remove(name)


def move(src, dst_dir):
    dst = os.path.join(dst_dir, os.path.basename(src))
    os.rename(src, dst)
    RESTORE.append((dst, src))
    return dst


def restore_moves():
    while RESTORE:
        dst, src = RESTORE.pop()
        if os.path.exists(dst):
            os.rename(dst, src)


def cleanup():
    for p in list(PROCS):
        stop(p, timeout=5)
    restore_moves()
    for p, storage in list(JOURNALDS):
        stop(p, timeout=5)
        shutil.rmtree(storage, ignore_errors=True)
    JOURNALDS.clear()
    for n in list(NETNS):
        drop_netns(n)


def wait_until(pred, timeout, interval=0.05, what="condition"):
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise TimeoutError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def mem(pid):
    """VmRSS, VmHWM, RssAnon, RssFile of /proc/PID/status, in MiB."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) / 1024
    return out


def children(pid):
    kids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rfind(")") + 2:].split()
        if int(fields[1]) == pid:
            kids.append((int(stat.split("/")[2]), s[s.find("(") + 1:s.rfind(")")]))
    return kids


def tree_rss(pid):
    total = mem(pid)["VmRSS"]
    for kid, _ in children(pid):
        try:
            total += tree_rss(kid)
        except OSError:
            pass
    return total


def cpu_seconds(pid):
    """utime + stime of a process, its reaped children and its live
    descendants, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        st = f.read()
    fields = st[st.rfind(")") + 2:].split()
    own = sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    # and its live helpers (fail2ban-rs's journalctl processes)
    for kid, _ in children(pid):
        try:
            own += cpu_seconds(kid)
        except OSError:
            pass
    return own


def cpu_times():
    """The machine's CPU time counters (/proc/stat's first line)."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def steal_percent(before, after):
    """The share of CPU time the hypervisor gave to others between two
    cpu_times(): on a shared VM, what stretches latencies regardless of
    the guest's load."""
    d = [b - a for a, b in zip(before, after)]
    return 100.0 * d[7] / max(1, sum(d)) if len(d) > 7 else float("nan")


def warm(paths):
    """Reads `paths` once, so that the first timed run does not read them
    from disk and the next ones from the page cache. (On this VM pages
    untouched for a minute are paged out: the first `banjo check` of a full
    run took 0.46 s instead of 0.1.)"""
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 20):
                pass


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def summary(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
            "runs": len(vals), "values": vals}


# ---------------------------------------------------------------- corpus

class Corpus:
    """The cached corpus: syslog file, journal files and helper files."""

    MAX_AGE = 12 * 3600  # journal entries must stay within the runs' findtime (1 d)

    def __init__(self, cache, lines, peer_lines, peer_burst):
        self.dir = os.path.join(cache, "corpus")
        self.lines = lines
        self.peer_lines = peer_lines
        self.peer_burst = peer_burst
        self.meta_path = os.path.join(self.dir, "meta.json")

    def ensure(self):
        with open(os.path.join(HERE, "corpus.py"), "rb") as f:
            gen = hashlib.sha256(f.read()).hexdigest()[:16]
        meta = None
        if os.path.exists(self.meta_path):
            with open(self.meta_path) as f:
                meta = json.load(f)
        want = {"lines": self.lines, "generator": gen, "peer_burst": self.peer_burst,
                "peer_lines": self.peer_lines}
        if meta and all(meta.get(k) == v for k, v in want.items()) \
                and time.time() - meta["made"] < self.MAX_AGE:
            self.meta = meta
            return
        say("generating the corpus (%d lines; journal files via systemd-journal-remote)" % self.lines)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        now = time.time()
        gen_py = [PY, os.path.join(HERE, "corpus.py")]
        self._journal("journal", gen_py + [
            "traffic", "--lines", str(self.lines), "--end", "%.6f" % (now - 120),
            "--syslog", self.path("postfix.log"), "--export", "-",
            "--summary", self.path("summary.json")])
        with open(self.path("summary.json")) as f:
            s = json.load(f)
        # fail2ban and fail2ban-rs read the journal at 6k and 12k entries/s:
        # they get the first PEER_LINES lines of the same traffic, so that
        # three runs of each fit in the time budget.
        self._journal("journal-peer", gen_py + [
            "traffic", "--lines", str(self.peer_lines), "--end", "%.6f" % (now - 120),
            "--export", "-", "--summary", self.path("summary-peer.json")])
        with open(self.path("summary-peer.json")) as f:
            s_peer = json.load(f)
        self._journal("seed", gen_py + ["entry", "--time", str(s["start_usec"] - 10_000_000)])
        # Ban throughput: N addresses with maxretry-1 = 3 failures, then the 4th.
        for tag, n, net in (("burst", 10000, 100), ("peerburst", self.peer_burst, 110)):
            self._journal(tag + "-a", gen_py + ["flood", "--ips", str(n), "--net", str(net),
                                                "--repeat", "3", "--end", "%.6f" % (now - 90)])
            self._journal(tag + "-b", gen_py + ["flood", "--ips", str(n), "--net", str(net),
                                                "--repeat", "1", "--end", "%.6f" % (now - 60)])
        # Memory: 100 000 addresses with one failure each (tracked, not banned).
        self._journal("tracked", gen_py + ["flood", "--ips", "100000", "--net", "120",
                                           "--end", "%.6f" % (now - 30)])
        meta = dict(want)
        meta.update({"made": now, "summary": s, "summary_peer": s_peer})
        with open(self.meta_path, "w") as f:
            json.dump(meta, f, indent=1)
        self.meta = meta

    def _journal(self, name, argv):
        d = self.path(name)
        os.makedirs(d, exist_ok=True)
        gen = subprocess.Popen(argv, stdout=subprocess.PIPE)
        jr = subprocess.run([JOURNAL_REMOTE, "--output=%s/%s.journal" % (d, name), "-"],
                            stdin=gen.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        gen.stdout.close()
        if gen.wait() != 0 or jr.returncode != 0:
            raise RuntimeError("writing %s failed: %s" % (name, jr.stderr.decode()[-500:]))

    def path(self, *p):
        return os.path.join(self.dir, *p)

    def files(self, name):
        """The journal files of `name`, oldest entries first: archived files
        (`NAME@SEQNUMID-SEQNUM-TIME.journal`) by sequence number, then the
        active one. A follower skips entries older than the newest it has
        read, so files must appear in this order (as journald's do)."""
        return sorted(glob.glob(self.path(name, "*.journal")),
                      key=lambda p: ("@" not in os.path.basename(p), os.path.basename(p)))

    @property
    def summary(self):
        return self.meta["summary"]


# ---------------------------------------------------------------- daemons

class Daemon:
    """One daemon under test inside its own network namespace, reading a
    journal directory (or a journald namespace)."""

    name = "?"

    def __init__(self, b, jdir=None, namespace=None, match=UNIT_MATCH, maxretry_flood=4,
                 findtime="1d", noop_action=False):
        self.b = b
        self.work = tempfile.mkdtemp(prefix=self.name + "-", dir=b.work)
        self.jdir = jdir
        self.namespace = namespace
        self.match = match
        self.maxretry_flood = maxretry_flood
        self.findtime = findtime
        self.noop_action = noop_action
        self.ns = None
        self.proc = None

    def launch(self, argv, env, log):
        self.ns = netns()
        self.proc = spawn(argv, ns=self.ns, env=env, log=os.path.join(self.work, log))

    def close(self):
        if self.proc:
            stop(self.proc)
            self.proc = None
        if self.ns:
            drop_netns(self.ns)
            self.ns = None

    @property
    def pid(self):
        return self.proc.pid

    def mem(self):
        return mem(self.pid)


class Banjo(Daemon):
    name = "banjo"

    def config(self):
        src = ('directory = "%s"' % self.jdir) if self.jdir else ('namespace = "%s"' % self.namespace)
        field, value = self.match.split("=", 1)
        path = os.path.join(self.work, "banjo.toml")
        with open(path, "w") as f:
            f.write("""[daemon]
state_dir = "{w}/state"
socket = "{w}/banjo.sock"
[journal]
{src}
[firewall]
table = "banjo"
[defaults]
findtime = "{findtime}"
journalmatch = ["{field}={value}"]
ignoreself = false
[jail.postfix-flood-attack]
failregex = ['{flood}']
maxretry = {mr}
bantime = "10m"
port = "{ports}"
[jail.postfix]
filter = "postfix"
maxretry = 3
bantime = "1h"
port = "smtp,submission,submissions"
""".format(w=self.work, src=src, findtime=self.findtime, field=field, value=value,
           flood=FLOOD_RE, mr=self.maxretry_flood, ports=FLOOD_PORTS))
        return path

    def start(self):
        self.conf = self.config()
        sock_path = os.path.join(self.work, "notify.sock")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(sock_path)
        notify.settimeout(0.1)
        env = dict(os.environ, NOTIFY_SOCKET=sock_path, BANJO_LOG_STDERR="1")
        t0 = time.monotonic()
        self.launch([self.b.banjo, "run", "--config", self.conf], env, "banjo.log")
        try:
            while time.monotonic() - t0 < 30:
                try:
                    if b"READY=1" in notify.recv(4096):
                        return time.monotonic() - t0
                except socket.timeout:
                    pass
                if self.proc.poll() is not None:
                    break
            raise RuntimeError("banjo did not become ready; log: %s" % self.tail())
        finally:
            notify.close()

    def tail(self):
        try:
            with open(os.path.join(self.work, "banjo.log"), errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def ctl(self, *args):
        r = run([self.b.banjo] + list(args) + ["--config", self.conf], check=False)
        if r.returncode != 0:
            raise RuntimeError("banjo %s: %s" % (" ".join(args[:2]), r.stderr.strip()))
        return r.stdout

    def stats(self):
        # The control socket's protocol spoken directly: the ingestion runs
        # ask every 20 ms, and a `banjo stats` process each time took a
        # tenth of a core from the daemon under test.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(os.path.join(self.work, "banjo.sock"))
            s.sendall(b'{"command":"stats"}\n')
            answer = s.makefile("rb").readline()
        r = json.loads(answer)
        if not r.get("ok"):
            raise RuntimeError("banjo stats: %s" % r.get("error"))
        return r["data"]

    def lines(self):
        return self.stats()["lines"]

    def failures(self):
        return self.stats()["failures"]

    def ban_many(self, jail, ips, chunk=20000):
        for i in range(0, len(ips), chunk):
            self.ctl("ban", jail, *ips[i:i + chunk])


class Fail2ban(Daemon):
    name = "fail2ban"

    def config(self):
        conf = os.path.join(self.work, "conf")
        shutil.copytree(os.path.join(self.b.f2b_root, "etc", "fail2ban"), conf)
        self.sock = os.path.join(self.work, "f2b.sock")
        with open(os.path.join(conf, "fail2ban.local"), "w") as f:
            f.write("[Definition]\nloglevel = INFO\nlogtarget = %s/fail2ban.log\nsocket = %s\n"
                    "pidfile = %s/f2b.pid\ndbfile = %s/f2b.sqlite3\n"
                    % (self.work, self.sock, self.work, self.work))
        with open(os.path.join(conf, "filter.d", "postfix-flood-attack.conf"), "w") as f:
            f.write("[Definition]\nfailregex = %s\nignoreregex =\n" % FLOOD_RE)
        with open(os.path.join(conf, "action.d", "bench-noop.conf"), "w") as f:
            f.write("[Definition]\nactionstart =\nactionstop =\nactioncheck =\n"
                    "actionban =\nactionunban =\n")
        if self.jdir:
            backend = "systemd[journalpath=%s]" % self.jdir
        else:
            backend = "systemd[namespace=%s]" % self.namespace
        action = "action = bench-noop\n" if self.noop_action else ""
        with open(os.path.join(conf, "jail.local"), "w") as f:
            f.write("""[DEFAULT]
banaction = nftables-multiport
banaction_allports = nftables-allports
findtime = {ft}
ignoreself = false
[sshd]
enabled = false
[postfix-flood-attack]
enabled = true
filter = postfix-flood-attack
backend = {be}
journalmatch = {m}
maxretry = {mr}
bantime = 10m
port = {ports}
{action}
[postfix]
enabled = true
filter = postfix
backend = {be}
journalmatch = {m}
maxretry = 3
bantime = 1h
port = smtp,submission,submissions
{action}
""".format(ft=self.findtime, be=backend, m=self.match, mr=self.maxretry_flood,
           ports=FLOOD_PORTS, action=action))
        return conf

    def env(self):
        return dict(os.environ, PYTHONPATH=os.path.join(
            self.b.f2b_root, "usr", "lib", "python3", "dist-packages"))

    def start(self):
        self.conf = self.config()
        t0 = time.monotonic()
        self.launch([PY, os.path.join(self.b.f2b_root, "usr", "bin", "fail2ban-server"),
                     "-c", self.conf, "-xf", "start"], self.env(), "server.out")

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError("fail2ban-server exited: %s" % self.tail())
            try:
                st = dict(self.cmd("status"))
            except OSError:
                return False
            return st.get("Number of jail") == 2
        wait_until(ready, 60, 0.1, "fail2ban's jails")
        return time.monotonic() - t0

    def tail(self):
        out = ""
        for n in ("server.out", "fail2ban.log"):
            try:
                with open(os.path.join(self.work, n), errors="replace") as f:
                    out += f.read()[-1500:]
            except OSError:
                pass
        return out

    def cmd(self, *msg):
        if self.b.f2b_py not in sys.path:
            sys.path.insert(0, self.b.f2b_py)
        from fail2ban.client.csocket import CSocket  # noqa: E402 (fail2ban's own client)
        c = CSocket(self.sock, timeout=30)
        try:
            code, result = c.send(list(msg))
        finally:
            c.close()
        if code != 0:
            raise RuntimeError("fail2ban %s: %r" % (msg, result))
        return result

    def jail_status(self, jail):
        filt, acts = self.cmd("status", jail, "short")
        return dict(filt[1]), dict(acts[1])

    def failures(self):
        return sum(self.jail_status(j)[0]["Total failed"]
                   for j in ("postfix-flood-attack", "postfix"))

    def banned(self):
        return sum(self.jail_status(j)[1]["Currently banned"]
                   for j in ("postfix-flood-attack", "postfix"))

    def ban_many(self, jail, ips, chunk=10000):
        for i in range(0, len(ips), chunk):
            self.cmd("set", jail, "banip", *ips[i:i + chunk])


class Fail2banRs(Daemon):
    name = "fail2ban-rs"

    def config(self):
        self.bin = os.path.join(self.work, "bin")
        os.makedirs(self.bin)
        # fail2ban-rs reads the journal through `journalctl` found on PATH and
        # has no directory option: this wrapper adds journalctl's own.
        where = ("--directory=%s" % self.jdir) if self.jdir else ("--namespace=%s" % self.namespace)
        jc = os.path.join(self.bin, "journalctl")
        with open(jc, "w") as f:
            f.write("#!/bin/sh\nexec /bin/journalctl %s \"$@\"\n" % where)
        os.chmod(jc, 0o755)
        path = os.path.join(self.work, "config.toml")
        if self.noop_action:
            backend = '[jail.{j}.backend.script]\nban_cmd = "true"\nunban_cmd = "true"\n'
        else:
            backend = 'backend = "nftables"\n'
        jails = [("postfix-flood-attack", [FLOOD_RE], self.maxretry_flood, "10m", FLOOD_PORTNUMS),
                 ("postfix", F2BRS_POSTFIX, 3, "1h", ["25", "587", "465"])]
        with open(path, "w") as f:
            f.write('[global]\nstate_dir = "%s/state"\nsocket_path = "%s/f2brs.sock"\n\n'
                    '[logging]\nlevel = "info"\n\n' % (self.work, self.work))
            for name, pats, mr, bt, ports in jails:
                f.write('[jail.%s]\nlog_backend = "systemd"\njournalmatch = ["%s"]\n'
                        'date_format = "syslog"\nfilter = [\n%s\n]\nport = [%s]\n'
                        'protocol = "tcp"\nmax_retry = %d\nfind_time = "%s"\nban_time = "%s"\n'
                        'ignoreself = false\n'
                        % (name, self.match, ",\n".join("  '%s'" % p for p in pats),
                           ", ".join('"%s"' % p for p in ports), mr, self.findtime, bt))
                f.write(backend.format(j=name) + "\n")
        return path

    def start(self):
        self.conf = self.config()
        env = dict(os.environ, PATH=self.bin + ":" + os.environ.get("PATH", "/usr/bin:/bin"))
        t0 = time.monotonic()
        self.launch([self.b.f2brs, "-c", self.conf, "run"], env, "fail2ban-rs.log")

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError("fail2ban-rs exited: %s" % self.tail())
            try:
                self.stats()
            except RuntimeError:
                return False
            # Both journal watchers must be following before anything arrives:
            # each starts `journalctl --lines=0`, i.e. at the tail.
            return sum(1 for _, comm in children(self.pid) if comm == "journalctl") >= 2
        wait_until(ready, 60, 0.05, "fail2ban-rs's journal watchers")
        elapsed = time.monotonic() - t0
        time.sleep(0.5)  # let journalctl reach the tail
        return elapsed

    def tail(self):
        try:
            with open(os.path.join(self.work, "fail2ban-rs.log"), errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stats(self):
        r = run([self.b.f2brs, "-c", self.conf, "stats"], check=False)
        if r.returncode != 0:
            raise RuntimeError("fail2ban-rs stats: " + r.stderr.strip()[-300:])
        return json.loads(r.stdout[r.stdout.index("{"):])

    def failures(self):
        return self.stats()["total_failures"]

    def mem(self):
        m = mem(self.pid)
        m["tree"] = tree_rss(self.pid)
        return m


# ---------------------------------------------------------------- the bench

class Bench:
    def __init__(self, a):
        self.a = a
        self.banjo = a.banjo
        self.tool = a.tool
        self.f2b_root = os.path.join(a.cache, "fail2ban")
        self.f2b_py = os.path.join(self.f2b_root, "usr", "lib", "python3", "dist-packages")
        self.f2brs = os.path.join(a.cache, "fail2ban-rs", "bin", "fail2ban-rs")
        os.makedirs(a.cache, exist_ok=True)
        self.work = tempfile.mkdtemp(prefix="run-", dir=a.cache)
        self.corpus = Corpus(a.cache, a.lines, a.peer_lines, a.peer_burst)
        self.results = {}
        self.notes = []

    def record(self, key, tool, values, unit, better, **extra):
        s = summary(values)
        if s:
            s.update(unit=unit, better=better, **extra)
        self.results.setdefault(key, {})[tool] = s
        if s:
            say("  %s / %s: %s %s (%s-%s)" % (key, tool, fmt(s["median"]), unit,
                                             fmt(s["min"]), fmt(s["max"])))

    def note(self, text):
        self.notes.append(text)
        say("note: " + text)

    def jdir(self, tag):
        d = tempfile.mkdtemp(prefix="journal-%s-" % tag, dir=self.work)
        for f in self.corpus.files("seed"):
            shutil.copy(f, d)
        return d

    def daemon(self, cls, **kw):
        return cls(self, **kw)

    # -- matching -------------------------------------------------------
    def matching(self):
        say("matching: 1M-line syslog file, fail2ban's postfix filter and the tutorial's flood filter")
        log = self.corpus.path("postfix.log")
        n = self.corpus.meta["lines"]
        s = self.corpus.summary
        fdir = os.path.join(self.work, "filter.d")
        os.makedirs(fdir, exist_ok=True)
        flood_conf = os.path.join(fdir, "postfix-flood-attack.conf")
        with open(flood_conf, "w") as f:
            f.write("[Definition]\nfailregex = %s\nignoreregex =\n" % FLOOD_RE)
        postfix_conf = os.path.join(self.f2b_root, "etc", "fail2ban", "filter.d", "postfix.conf")
        # fail2ban-rs: the same patterns in its TOML
        f2brs_conf = os.path.join(self.work, "f2brs-match.toml")
        with open(f2brs_conf, "w") as f:
            f.write('[global]\nstate_dir = "%s/f2brs-state"\nsocket_path = "%s/f2brs.sock"\n'
                    % (self.work, self.work))
            for name, pats in (("flood", [FLOOD_RE]), ("postfix", F2BRS_POSTFIX)):
                f.write('[jail.%s]\nlog_path = "%s"\ndate_format = "syslog"\nfilter = [\n%s\n]\n'
                        'port = ["25"]\nmax_retry = 3\nfind_time = "1d"\nban_time = "1h"\n'
                        'ignoreself = false\n' % (name, log, ",\n".join("  '%s'" % p for p in pats)))
        # banjo check on the same filter files; the engine alone if `banjo check` is missing.
        check = self.banjo_check_available()
        banjo_confs = {}
        for name, spec in (("flood", "postfix-flood-attack"), ("postfix", "postfix[mode=more]")):
            c = os.path.join(self.work, "banjo-match-%s.toml" % name)
            d = fdir if name == "flood" else os.path.dirname(postfix_conf)
            with open(c, "w") as f:
                f.write('[daemon]\nstate_dir = "%s/bm-state"\nsocket = "%s/bm.sock"\n'
                        '[fail2ban]\nfilter_dir = "%s"\n[jail.%s]\nfilter = "%s"\n'
                        % (self.work, self.work, d, name, spec))
            banjo_confs[name] = c
        if not check:
            self.note("`banjo check` is not in this build: banjo's matching figures come from "
                      "`banjo-bench scan-file` (the same Filter, the same fail2ban filter files).")
        expected = {"flood": s["flood"], "postfix": s["helo"]}
        env = dict(os.environ, PYTHONPATH=self.f2b_py)
        for fname, fconf in (("postfix", postfix_conf), ("flood", flood_conf)):
            warm([log])
            times = {"banjo": [], "fail2ban": [], "fail2ban-rs": []}
            cpu = {"banjo": [], "fail2ban": [], "fail2ban-rs": []}
            hits = {}
            for r in range(self.a.runs):
                # banjo
                if check:
                    argv = [self.banjo, "check", log, "--filter", fconf]
                else:
                    argv = [self.tool, "scan-file", "--file", log, "--config", banjo_confs[fname]]
                t, out = timed(argv)
                times["banjo"].append(n / t)
                cpu["banjo"].append(n / CPU["last"])
                hits["banjo"] = parse_hits_banjo(out)
                # fail2ban-regex
                t, out = timed([PY, os.path.join(self.f2b_root, "usr", "bin", "fail2ban-regex"),
                                "--no-check-all", log, fconf], env=env)
                times["fail2ban"].append(n / t)
                cpu["fail2ban"].append(n / CPU["last"])
                m = re.search(r"Lines: (\d+) lines, (\d+) ignored, (\d+) matched", out)
                hits["fail2ban"] = int(m.group(3)) if m else None
                # fail2ban-rs
                t, out = timed([self.f2brs, "-c", f2brs_conf, "dry-run", log, "-j", fname])
                times["fail2ban-rs"].append(n / t)
                cpu["fail2ban-rs"].append(n / CPU["last"])
                m = re.search(r"Matches:\s+(\d+)", out)
                hits["fail2ban-rs"] = int(m.group(1)) if m else None
            for tool, v in times.items():
                self.record("match_" + fname, tool, v, "lines/s", "higher",
                            hits=hits.get(tool), expected=expected[fname])
                self.record("match_cpu_" + fname, tool, cpu[tool], "lines per CPU-s", "higher")
            for tool, h in hits.items():
                if h is None:
                    self.note("matching %s: could not read %s's hit count" % (fname, tool))
                elif h != expected[fname]:
                    self.note("matching %s: %s found %s lines, the corpus has %s"
                              % (fname, tool, h, expected[fname]))

    def banjo_check_available(self):
        r = run([self.banjo, "check", "--help"], check=False)
        text = r.stdout + r.stderr
        return "unknown command" not in text

    # -- ingestion ------------------------------------------------------
    def ingestion(self):
        n = self.corpus.meta["lines"]
        s = self.corpus.summary
        say("ingestion: %d journal entries moved into a followed directory" % n)
        sp = self.corpus.meta["summary_peer"]
        ceiling = []

        def ceiling_run():
            # the ceiling: banjo's Filter behind a bare sd_journal loop
            conf = Banjo(self, jdir=self.corpus.path("journal")).config()
            out = json.loads(run([self.tool, "ceiling", "--dir", self.corpus.path("journal"),
                                  "--config", conf]).stdout)
            ceiling.append(out["rate"])
            say("  sd_journal loop run %d: %.2f s" % (len(ceiling), out["secs"]))
        # banjo counts entries; the peers only count failures (their filters
        # find the flood and HELO lines: fail2ban's postfix.conf skips SASL).
        for cls, corpus, done, total, timeout in (
                (Banjo, "journal", lambda d: d.lines(), n, 120),
                (Fail2ban, "journal-peer", lambda d: d.failures(), sp["flood"] + sp["helo"],
                 self.a.peer_timeout),
                (Fail2banRs, "journal-peer", lambda d: d.failures(), sp["flood"] + sp["helo"],
                 self.a.peer_timeout)):
            files = self.corpus.files(corpus)
            warm(files)
            entries = n if corpus == "journal" else sp["lines"]
            rates = []
            for r in range(self.a.runs):
                if cls is Banjo:
                    # Each daemon run right after a loop run: this VM's speed
                    # drifts by a third within minutes, and the ratio is
                    # what the target is about.
                    ceiling_run()
                jd = self.jdir("ingest")
                d = cls(self, jdir=jd)
                try:
                    d.start()
                    time.sleep(0.3)
                    base = done(d)
                    t0 = time.monotonic()
                    for f in files:
                        move(f, jd)
                    interval = 0.02 if cls is Banjo else 0.25
                    wait_until(lambda: done(d) >= base + total, timeout, interval,
                               "%s to process the corpus" % d.name)
                    secs = time.monotonic() - t0
                    rates.append(entries / secs)
                    say("  %s run %d: %.2f s" % (d.name, r + 1, secs))
                except (TimeoutError, RuntimeError) as e:
                    self.note("ingestion, %s: %s" % (d.name, e))
                    rates.append(None)
                finally:
                    d.close()
                    restore_moves()
                    shutil.rmtree(jd, ignore_errors=True)
            if cls is Banjo:
                self.record("ingest", "sd_journal loop", ceiling, "entries/s", "higher")
            self.record("ingest", cls.name, rates, "entries/s", "higher", entries=entries)

    # -- latency --------------------------------------------------------
    def latency(self):
        for mode in self.a.latency_modes:
            say("latency via %s: journal write -> element in an nftables set" % mode)
            for k, cls in enumerate((Banjo, Fail2ban, Fail2banRs)):
                trials = self.a.trials if cls is Banjo else self.a.peer_trials
                p50, p99, all_samples, cpu = [], [], [], []
                for r in range(self.a.runs):
                    jd, ns_name, jproc = None, None, None
                    if mode == "remote":
                        jd = self.jdir("lat")
                        d = cls(self, jdir=jd, findtime="10m")
                        spec = "remote:" + jd
                    else:
                        ns_name = "bjb%d%d%d" % (os.getpid() % 10000, k, r)
                        jproc = start_journald(ns_name)
                        d = cls(self, namespace=ns_name, match=IDENT_MATCH, findtime="10m")
                        spec = "journald:" + ns_name
                    try:
                        d.start()
                        time.sleep(0.3)
                        c0, w0 = cpu_seconds(d.pid), time.monotonic()
                        out = run(["ip", "netns", "exec", d.ns, self.tool, "latency",
                                   "--journal", spec, "--trials", str(trials), "--maxretry", "4",
                                   "--gap-ms", "50", "--pause-ms", str(self.a.pause_ms),
                                   "--timeout-s", "10", "--net", str(200 + 10 * k + r),
                                   "--background-ms", str(self.a.background_ms)]).stdout
                        cpu.append(100 * (cpu_seconds(d.pid) - c0) / (time.monotonic() - w0))
                        res = json.loads(out)
                        slowest = max(res["samples_ms"], default=0.0)
                        if res["timeouts"] or (cls is Banjo and slowest > SLOW_TRIAL_MS):
                            # Keep the daemon's own account of the run: the
                            # scratch directory goes at the end.
                            kept = os.path.join(self.a.cache, "latency-slow-%s-%s-%d-%d"
                                                % (mode, d.name, r + 1, int(time.time())))
                            os.makedirs(kept, exist_ok=True)
                            with open(os.path.join(kept, "trials.json"), "w") as f:
                                f.write(out)
                            shutil.copytree(d.work, kept, dirs_exist_ok=True,
                                            ignore=shutil.ignore_patterns("*.sock"))
                            self.note("latency %s %s run %d: %d of %d trials saw no ban within 10 s, "
                                      "the slowest of the others took %.1f ms (its files kept in %s)"
                                      % (mode, d.name, r + 1, res["timeouts"], trials, slowest,
                                         kept))
                        p50.append(res["p50_ms"])
                        p99.append(res["p99_ms"])
                        all_samples += res["samples_ms"]
                        slow = max(range(len(res["samples_ms"])), default=0,
                                   key=lambda i: res["samples_ms"][i])
                        # Through journald: how long journald took to stamp
                        # that trial's entry, the rest is the reader's.
                        stamped = res.get("journald_ms") or []
                        share = ""
                        if slow < len(stamped) and stamped[slow] is not None:
                            share = ", journald stamped its entry after %.2f ms" % stamped[slow]
                        say("  %s run %d: p50 %.2f ms, p99 %.2f ms (slowest: trial %d of %d, "
                            "%.2f ms%s)"
                            % (d.name, r + 1, res["p50_ms"], res["p99_ms"], slow + 1,
                               len(res["samples_ms"]), res["samples_ms"][slow] if res["samples_ms"]
                               else float("nan"), share))
                    except (TimeoutError, RuntimeError, subprocess.CalledProcessError) as e:
                        self.note("latency %s, %s: %s" % (mode, d.name, getattr(e, "stderr", e)))
                    finally:
                        d.close()
                        if jd:
                            shutil.rmtree(jd, ignore_errors=True)
                        if jproc:
                            stop_journald(jproc)
                self.record("lat_p50_" + mode, cls.name, p50, "ms", "lower",
                            samples=len(all_samples))
                self.record("lat_p99_" + mode, cls.name, p99, "ms", "lower")
                self.record("lat_cpu_" + mode, cls.name, cpu, "% CPU", "lower")

    # -- ban throughput -------------------------------------------------
    def throughput(self):
        say("ban throughput: addresses crossing maxretry in one journal file")
        if self.a.runs < BURST_RUNS:
            self.note("ban throughput: banjo and nft -f ran %d times each (BURST_RUNS), "
                      "the peers %d" % (BURST_RUNS, self.a.runs))
        for cls in (Banjo, Fail2ban, Fail2banRs):
            tag = "burst" if cls is Banjo else "peerburst"
            n = 10000 if cls is Banjo else self.a.peer_burst
            runs = max(self.a.runs, BURST_RUNS) if cls is Banjo else self.a.runs
            rates = []
            for r in range(runs):
                jd = self.jdir("burst")
                d = cls(self, jdir=jd)
                try:
                    d.start()
                    time.sleep(0.3)
                    base = d.failures()
                    for f in self.corpus.files(tag + "-a"):
                        move(f, jd)
                    wait_until(lambda: d.failures() >= base + 3 * n, self.a.peer_timeout, 0.1,
                               "%s to count the first failures" % d.name)
                    time.sleep(0.5)
                    bfiles = self.corpus.files(tag + "-b")
                    out = run(["ip", "netns", "exec", d.ns, self.tool, "burst", "--expect", str(n),
                               "--timeout-s", str(self.a.peer_timeout), "--into", jd] + bfiles).stdout
                    for f in bfiles:  # moved by the tool: undo later
                        RESTORE.append((os.path.join(jd, os.path.basename(f)), f))
                    res = json.loads(out)
                    if res["seen"] < n:
                        self.note("throughput %s: only %d of %d bans within %d s"
                                  % (d.name, res["seen"], n, self.a.peer_timeout))
                        rates.append(None)
                    else:
                        rates.append(n / (res["last_ms"] / 1e3))
                        say("  %s run %d: %d bans in %.1f ms (the first after %.1f ms)"
                            % (d.name, r + 1, n, res["last_ms"], res["first_ms"]))
                except (TimeoutError, RuntimeError, subprocess.CalledProcessError) as e:
                    self.note("throughput, %s: %s" % (d.name, getattr(e, "stderr", e)))
                finally:
                    d.close()
                    restore_moves()
                    shutil.rmtree(jd, ignore_errors=True)
            self.record("bans_per_s", cls.name, rates, "bans/s", "higher", addresses=n)
        # the floor of the kernel path: nft -f with the same 10 000 elements
        rates = []
        nft_file = os.path.join(self.work, "elements.nft")
        with open(nft_file, "w") as f:
            f.write("add element inet t s { %s }\n" % ", ".join(
                "10.100.%d.%d timeout 10m" % ((i + 1) >> 8, (i + 1) & 255) for i in range(10000)))
        for r in range(max(self.a.runs, BURST_RUNS)):
            ns = netns()
            try:
                run(["ip", "netns", "exec", ns, "nft",
                     "add table inet t; add set inet t s { type ipv4_addr; flags timeout; }"])
                out = run(["ip", "netns", "exec", ns, self.tool, "burst", "--expect", "10000",
                           "--timeout-s", "60", "--", "nft", "-f", nft_file]).stdout
                res = json.loads(out)
                rates.append(10000 / (res["last_ms"] / 1e3))
            finally:
                drop_netns(ns)
        self.record("bans_per_s", "nft -f", rates, "bans/s", "higher", addresses=10000)

    # -- memory ---------------------------------------------------------
    def memory(self):
        say("memory: idle, 100k tracked addresses, 100k active bans")
        ips = ["10.%d.%d.%d" % (130 + (i >> 16), (i >> 8) & 255, i & 255) for i in range(1, 100001)]
        for cls in (Banjo, Fail2ban, Fail2banRs):
            got = {}

            def take(stage, m):
                for k in ("VmRSS", "RssAnon", "VmHWM", "tree"):
                    if k in m:
                        got.setdefault((stage, k), []).append(m[k])
            for r in range(self.a.runs):
                jd = self.jdir("mem")
                d = cls(self, jdir=jd, maxretry_flood=5, noop_action=(cls is not Banjo))
                try:
                    d.start()
                    time.sleep(1.0)
                    take("idle", d.mem())
                    base = d.failures()
                    for f in self.corpus.files("tracked"):
                        move(f, jd)
                    wait_until(lambda: d.failures() >= base + 100000, self.a.peer_timeout, 0.1,
                               "%s to track 100k addresses" % d.name)
                    time.sleep(0.5)
                    take("tracked", d.mem())
                    if cls is Fail2banRs:
                        continue  # no bulk ban in fail2ban-rs: see BENCHMARKS.md
                    t0 = time.monotonic()
                    d.ban_many("postfix-flood-attack", ips)
                    if cls is Banjo:
                        wait_until(lambda: d.stats()["active_bans"] >= 100000, 120, 0.2, "bans")
                    say("  %s run %d: 100k bans applied in %.1f s" % (d.name, r + 1,
                                                                      time.monotonic() - t0))
                    time.sleep(1.0)
                    take("banned", d.mem())
                except (TimeoutError, RuntimeError, subprocess.CalledProcessError) as e:
                    self.note("memory, %s: %s" % (d.name, getattr(e, "stderr", e)))
                finally:
                    d.close()
                    restore_moves()
                    shutil.rmtree(jd, ignore_errors=True)
            for stage in ("idle", "tracked", "banned"):
                self.record("rss_" + stage, cls.name, got.get((stage, "VmRSS"), []), "MB", "lower")
                self.record("anon_" + stage, cls.name, got.get((stage, "RssAnon"), []), "MB",
                            "lower")
            last = "tracked" if cls is Fail2banRs else "banned"
            self.record("rss_hwm", cls.name, got.get((last, "VmHWM"), []), "MB", "lower")
            if cls is Fail2banRs:
                self.record("rss_tree_tracked", cls.name, got.get(("tracked", "tree"), []), "MB",
                            "lower")

    # -- restart --------------------------------------------------------
    def restart(self):
        say("restart: time to READY with 100 000 active bans (benches/restart.sh)")
        ready, lost, churn = [], [], []
        for r in range(self.a.runs):
            env = dict(os.environ, BANJO=self.banjo)
            out = run(["sh", os.path.join(HERE, "restart.sh"), "100000"], env=env).stdout
            m = re.search(r"restart to ready:\s+([\d.]+) ms", out)
            ready.append(float(m.group(1)) if m else None)
            m = re.search(r"lost: (\d+)", out)
            lost.append(int(m.group(1)) if m else None)
            m = re.search(r"during the restart: (\d+)", out)
            churn.append(int(m.group(1)) if m else None)
            say("  run %d: %s" % (r + 1, " / ".join(out.strip().splitlines()[1:])))
        self.record("restart_ms", "banjo", ready, "ms", "lower", lost=max(x or 0 for x in lost),
                    churn=max(x or 0 for x in churn))

    # -- criterion --------------------------------------------------------
    def criterion(self):
        say("criterion: benches/matcher.rs and benches/netlink.rs")
        for bench, filt in (("matcher", "scan/one"), ("netlink", "")):
            argv = ["cargo", "bench", "--locked", "--bench", bench, "--",
                    "--warm-up-time", "1", "--measurement-time", "3", "--noplot"]
            if filt:
                argv.append(filt)
            r = subprocess.run(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
            if r.returncode != 0:
                self.note("cargo bench --bench %s failed: %s" % (bench, r.stdout[-800:]))
                continue
            for m in re.finditer(r"^(\S+)\s*\n?\s+time:\s+\[([\d.]+) (\S+) ([\d.]+) (\S+) ([\d.]+) (\S+)\]",
                                 r.stdout, re.M):
                name = m.group(1)
                lo, mid, hi = (to_us(float(m.group(i)), m.group(i + 1)) for i in (2, 4, 6))
                self.results.setdefault("criterion", {})[name] = {
                    "median": mid, "min": lo, "max": hi, "unit": "us", "runs": "criterion"}
                say("  %s: %.1f us [%.1f %.1f]" % (name, mid, lo, hi))
            if "skipped" in r.stdout:
                self.note(next(l for l in r.stdout.splitlines() if "skipped" in l).strip())


def to_us(v, unit):
    return v * {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}[unit]


CPU = {}


def timed(argv, env=None):
    """Runs argv; returns (wall seconds, output) and leaves its CPU seconds
    (user + system, all threads and children) in CPU["last"]."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    t = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU["last"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if r.returncode != 0:
        raise RuntimeError("%s failed: %s" % (argv[:3], r.stdout[-800:]))
    return t, r.stdout


def parse_hits_banjo(out):
    try:
        last = json.loads(out.strip().splitlines()[-1])
        return last["summary"]["matched"] if "summary" in last else last["hits"]
    except (ValueError, KeyError, IndexError, TypeError):
        pass
    for pat in (r"(\d+) matched", r"matched:?\s+(\d+)", r"failures:?\s+(\d+)", r"(\d+) failures",
                r"hits:?\s+(\d+)", r"(\d+) hits"):
        m = re.search(pat, out, re.I)
        if m:
            return int(m.group(1))
    return None


def start_journald(name):
    """A private journald instance (journalctl --namespace=NAME); its
    storage is removed when it stops."""
    with open("/etc/machine-id") as f:
        mid = f.read().strip()
    p = subprocess.Popen([JOURNALD, name], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    for base in ("/var/log/journal", "/run/log/journal"):
        JOURNALDS.append((p, os.path.join(base, "%s.%s" % (mid, name))))
    sock = "/run/systemd/journal.%s/socket" % name
    wait_until(lambda: os.path.exists(sock), 10, 0.02, "journald %s" % name)
    JOURNALDS.append((p, "/run/systemd/journal.%s" % name))
    # One entry, so that no reader starts on an empty journal (journalctl
    # --follow exits on one, and fail2ban-rs would retry with a backoff).
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(b"MESSAGE=connect from mx0.example.com[198.51.100.1]\n"
             b"SYSLOG_IDENTIFIER=postfix/smtpd\nSYSLOG_PID=4242\nPRIORITY=6\n", sock)
    s.close()
    time.sleep(0.2)
    return p


def stop_journald(p):
    stop(p, timeout=5)
    for q, storage in [x for x in JOURNALDS if x[0] is p]:
        shutil.rmtree(storage, ignore_errors=True)
        JOURNALDS.remove((q, storage))


# ---------------------------------------------------------------- the table

def fmt(v):
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1e6:
        return "%.2fM" % (v / 1e6)
    if a >= 1e4:
        return "%.0fk" % (v / 1e3)
    if a >= 1e3:
        return "%.1fk" % (v / 1e3)
    if a >= 100:
        return "%.0f" % v
    if a >= 10:
        return "%.1f" % v
    return "%.2f" % v


def cell(s):
    if not s:
        return "n/a"
    if s["runs"] == 1 or s["min"] == s["max"]:
        return fmt(s["median"])
    return "%s (%s–%s)" % (fmt(s["median"]), fmt(s["min"]), fmt(s["max"]))


def ratio(a, b):
    """How many times better banjo's `a` is than `b`."""
    if not a or not b or not a["median"] or not b["median"]:
        return "–"
    r = a["median"] / b["median"] if a["better"] == "higher" else b["median"] / a["median"]
    return ("%.0f×" % r) if r >= 100 else ("%.1f×" % r) if r >= 10 else ("%.2f×" % r)


ROWS = [
    # key, label, unit, baseline tool
    ("match_postfix", "matching, fail2ban postfix.conf (lines/s)", None),
    ("match_flood", "matching, tutorial flood filter (lines/s)", None),
    ("match_cpu_postfix", "  same, per CPU-second (postfix.conf)", None),
    ("match_cpu_flood", "  same, per CPU-second (flood)", None),
    ("ingest", "journal ingestion, 1M entries (entries/s)", "sd_journal loop"),
    ("lat_p50_remote", "ban latency p50, journal-remote files (ms)", None),
    ("lat_p99_remote", "ban latency p99, journal-remote files (ms)", None),
    ("lat_cpu_remote", "  daemon CPU during those runs (%)", None),
    ("lat_p50_journald", "ban latency p50, journald socket (ms)", None),
    ("lat_p99_journald", "ban latency p99, journald socket (ms)", None),
    ("lat_cpu_journald", "  daemon CPU during those runs (%)", None),
    ("bans_per_s", "ban throughput (bans/s)", "nft -f"),
    ("rss_idle", "VmRSS idle (MB)", None),
    ("anon_idle", "  of which private (RssAnon)", None),
    ("rss_tracked", "VmRSS, 100k tracked addresses (MB)", None),
    ("anon_tracked", "  of which private (RssAnon)", None),
    ("rss_tree_tracked", "  + helper processes (journalctl)", None),
    ("rss_banned", "VmRSS, + 100k active bans (MB)", None),
    ("anon_banned", "  of which private (RssAnon)", None),
    ("rss_hwm", "peak RSS, VmHWM (MB)", None),
    ("restart_ms", "restart to READY, 100k bans (ms)", None),
]


def table(b):
    res = b.results
    head = ["measurement", "banjo", "fail2ban", "fail2ban-rs", "baseline",
            "banjo vs fail2ban", "banjo vs fail2ban-rs", "target", "met"]
    rows = []
    for key, label, base in ROWS:
        r = res.get(key)
        if not r:
            continue
        bj = r.get("banjo")
        bl = r.get(base) if base else None
        target, met = target_of(key, r, bl)
        rows.append([label, cell(bj), cell(r.get("fail2ban")), cell(r.get("fail2ban-rs")),
                     ("%s: %s" % (base, cell(bl))) if base else "",
                     ratio(bj, r.get("fail2ban")), ratio(bj, r.get("fail2ban-rs")), target, met])
    crit = res.get("criterion", {})
    one, fifty = crit.get("scan/one/1"), crit.get("scan/one/50")
    if one and fifty:
        f = fifty["median"] / one["median"]
        rows.append(["matcher.rs: per-line cost, 50 jails / 1 jail", "%.2f×" % f, "", "", "",
                     "", "", "≤ 1.5×", "yes" if f <= 1.5 else "NO"])
    for n in ("1000", "10000"):
        c = crit.get("firewall_add/%s" % n)
        if c:
            rows.append(["netlink.rs: Firewall::add of %s elements" % n,
                         "%s (%s–%s) elements/s" % (fmt(int(n) / c["median"] * 1e6),
                                                    fmt(int(n) / c["max"] * 1e6),
                                                    fmt(int(n) / c["min"] * 1e6)),
                         "", "", "", "", "", "", ""])
    widths = [max(len(str(x[i])) for x in rows + [head]) for i in range(len(head))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
    return "\n".join(lines)


def target_of(key, r, baseline):
    bj = r.get("banjo")
    if not bj:
        return "", ""
    m = bj["median"]

    def times(peer):
        p = r.get(peer)
        return m / p["median"] if p and p["median"] else None
    if key.startswith("match_cpu_"):
        return "", ""
    if key.startswith("match_"):
        a, c = times("fail2ban"), times("fail2ban-rs")
        ok = (a is None or a >= 100) and (c is None or c >= 3)
        return "≥ 100× fail2ban-regex, ≥ 3× fail2ban-rs", "yes" if ok else "NO"
    if key == "ingest":
        if not baseline:
            return "≥ 80 % of sd_journal loop", ""
        f = m / baseline["median"]
        return "≥ 80 % of sd_journal loop", "%s (%.0f %%)" % ("yes" if f >= 0.8 else "NO", 100 * f)
    if key.startswith("lat_p50"):
        return "≤ 1 ms", "yes" if m <= 1 else "NO"
    if key.startswith("lat_p99"):
        return "≤ 5 ms", "yes" if m <= 5 else "NO"
    if key == "bans_per_s":
        return "≥ 200k/s", "yes" if m >= 200000 else "NO"
    if key == "rss_idle":
        return "≤ 4 MB", "yes" if m <= 4 else "NO"
    if key == "rss_tracked":
        return "≤ 40 MB", "yes" if m <= 40 else "NO"
    return "", ""


# ---------------------------------------------------------------- main

SECTIONS = ["matching", "ingestion", "latency", "throughput", "memory", "restart", "criterion"]


def main():
    global LOG
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", required=True)
    p.add_argument("--banjo", required=True, help="the banjo binary")
    p.add_argument("--tool", required=True, help="the banjo-bench binary")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--only", default=",".join(SECTIONS))
    p.add_argument("--trials", type=int, default=30, help="latency trials per run, banjo")
    p.add_argument("--peer-trials", type=int, default=15, help="latency trials per run, peers")
    p.add_argument("--pause-ms", type=int, default=250, help="pause between latency trials")
    p.add_argument("--latency-modes", default="remote,journald")
    p.add_argument("--background-ms", type=int, default=100,
                   help="a benign journal line this often during the latency runs (0: none)")
    p.add_argument("--peer-lines", type=int, default=200_000,
                   help="journal entries the peers ingest (banjo and the loop: --lines)")
    p.add_argument("--peer-burst", type=int, default=2000,
                   help="addresses in the peers' ban-throughput runs (banjo: 10 000)")
    p.add_argument("--peer-timeout", type=float, default=240)
    p.add_argument("--max-load", type=float, default=None,
                   help="before each section, wait until the 1-minute load average is below this")
    p.add_argument("--load-wait", type=float, default=15,
                   help="minutes to wait for --max-load, at most, before each section")
    p.add_argument("--out", default=None, help="write the results (JSON) here")
    a = p.parse_args()
    a.latency_modes = [m for m in a.latency_modes.split(",") if m]
    only = [s for s in a.only.split(",") if s]
    for s in only:
        if s not in SECTIONS:
            p.error("unknown section %r (sections: %s)" % (s, ", ".join(SECTIONS)))
    if os.geteuid() != 0:
        p.error("needs root (network namespaces, nftables)")

    atexit.register(cleanup)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))

    def settle():
        # The peers' matching runs alone keep a core busy for minutes: the
        # next section would start on a machine busy with the last one's
        # aftermath (its latencies most of all).
        if a.max_load is None:
            return
        end = time.time() + 60 * a.load_wait
        while loadavg() >= a.max_load and time.time() < end:
            say("load %.2f >= %.2f: waiting" % (loadavg(), a.max_load))
            time.sleep(15)

    settle()
    load0 = open("/proc/loadavg").read().split()[:3]
    say("load average at start: %s" % " ".join(load0))
    b = Bench(a)
    t_start = time.monotonic()
    try:
        if any(s in only for s in ("matching", "ingestion", "throughput", "memory", "latency")):
            b.corpus.ensure()
        for s in SECTIONS:
            if s in only:
                settle()
                load = open("/proc/loadavg").read().split()[:3]
                say("section %s, load average %s" % (s, " ".join(load)))
                t0 = cpu_times()
                getattr(b, s)()
                b.note("section %s: load average %s at its start, CPU steal %.1f %% during it"
                       % (s, "/".join(load), steal_percent(t0, cpu_times())))
    finally:
        cleanup()
        shutil.rmtree(b.work, ignore_errors=True)
    load1 = open("/proc/loadavg").read().split()[:3]
    uname = os.uname()
    with open("/etc/debian_version") as f:
        debian = f.read().strip()
    header = ("banjo benchmarks: %d CPUs, Linux %s, Debian %s; load average %s at start, %s at end; "
              "%.0f s; median of %d runs (min–max)"
              % (os.cpu_count(), uname.release, debian, "/".join(load0), "/".join(load1),
                 time.monotonic() - t_start, a.runs))
    print(header)
    print()
    print(table(b))
    if b.notes:
        print()
        for n in b.notes:
            print("* " + n)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"header": header, "results": b.results, "notes": b.notes,
                       "corpus": b.corpus.meta if hasattr(b.corpus, "meta") else None},
                      f, indent=1, default=str)


if __name__ == "__main__":
    main()
