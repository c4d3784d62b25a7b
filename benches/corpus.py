#!/usr/bin/python3
"""Deterministic Postfix traffic for banjo's benchmarks (stdlib only).

  corpus.py traffic [--lines N] [--attackers K] [--seed S] [--end T] [--span SEC]
                    [--syslog FILE] [--export FILE|-] [--summary FILE]
      About 90 % benign lines (connect/disconnect, TLS, cleanup, qmgr,
      delivery, submission) and 10 % failures from K attacker addresses
      (80 % IPv4 in 10/8, 192.0.2/24, 203.0.113/24; 20 % IPv6 in
      2001:db8::/32): AUTH floods, SASL LOGIN failures and non-FQDN HELO
      rejects. The same lines go to a syslog file (`Dec 14 09:58:37 email
      postfix/smtpd[22095]: MESSAGE`) and to journal export format (feed it
      to systemd-journal-remote), with increasing __REALTIME_TIMESTAMP
      spread over SPAN seconds ending at T (default: now). The seed fixes
      every byte of every message; only the clock base moves with T.

  corpus.py flood --ips N [--net A] [--repeat R] [--end T] [--spacing US]
      N distinct addresses (10.A.x.y, or 2001:db8:A::x with --v6) with R
      `lost connection after AUTH` lines each, round-robin, as journal
      export on stdout. For the ban-throughput and memory runs.

  corpus.py entry --time US [--message TEXT]
      One export entry (a benign line unless --message): the seed entry
      that makes a journal directory non-empty before a run.

No traffic is sent anywhere: the addresses only appear in text.
"""

import argparse
import hashlib
import json
import random
import sys
import time

HOST = "email"
BOOT_ID = "6a1b2c3d4e5f40718293a4b5c6d7e8f9"
UNIT = "postfix@-.service"
# __MONOTONIC_TIMESTAMP = realtime - this, so that entries of different
# files (same boot ID) sort by time, as sd_journal orders them.
MONO_BASE = 1_700_000_000_000_000
MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


class Sink:
    """Writes each line as syslog text and/or journal export entries."""

    def __init__(self, syslog, export):
        self.syslog = syslog
        self.export = export
        self.digest = hashlib.sha256()
        self._sec = None
        self._stamp = ""

    def emit(self, usec, ident, pid, message, priority=6):
        self.digest.update(message.encode())
        self.digest.update(b"\n")
        if self.syslog is not None:
            sec = usec // 1_000_000
            if sec != self._sec:
                t = time.localtime(sec)
                self._stamp = "%s %2d %02d:%02d:%02d" % (
                    MONTHS[t.tm_mon - 1], t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)
                self._sec = sec
            self.syslog.write("%s %s %s[%d]: %s\n" % (self._stamp, HOST, ident, pid, message))
        if self.export is not None:
            self.export.write(export_entry(usec, ident, pid, message, priority))


def export_entry(usec, ident, pid, message, priority=6):
    comm = ident.rsplit("/", 1)[-1]
    return (
        "__REALTIME_TIMESTAMP=%d\n__MONOTONIC_TIMESTAMP=%d\n_BOOT_ID=%s\n"
        "_HOSTNAME=%s\n_TRANSPORT=syslog\n_PID=%d\n_COMM=%s\n_SYSTEMD_UNIT=%s\n"
        "SYSLOG_FACILITY=2\nSYSLOG_IDENTIFIER=%s\nSYSLOG_PID=%d\nPRIORITY=%d\n"
        "MESSAGE=%s\n\n"
    ) % (usec, usec - MONO_BASE, BOOT_ID, HOST, pid, comm, UNIT, ident, pid,
         priority, message)


def attackers(rng, k):
    """K distinct attacker addresses, 80 % IPv4 and 20 % IPv6."""
    seen = set()
    out = []
    v6 = k // 5
    while len(out) < k - v6:
        r = rng.random()
        if r < 0.1:
            ip = "192.0.2.%d" % rng.randrange(1, 255)
        elif r < 0.2:
            ip = "203.0.113.%d" % rng.randrange(1, 255)
        else:
            ip = "10.%d.%d.%d" % (rng.randrange(1, 255), rng.randrange(256), rng.randrange(1, 255))
        if ip not in seen:
            seen.add(ip)
            out.append(ip)
    while len(out) < k:
        ip = "2001:db8:bad:%x::%x" % (rng.randrange(1, 0xFFFF), rng.randrange(1, 0xFFFF))
        if ip not in seen:
            seen.add(ip)
            out.append(ip)
    rng.shuffle(out)
    return out


def queue_id(rng):
    return "%010X" % rng.randrange(0x1000000000, 0xFFFFFFFFFF)


WORDS = ("alice bob carol dave erin frank grace heidi ivan judy mallory "
         "niaj olivia peggy rupert sybil trent victor walter").split()
HELOS = ("ylmf-pc", "WIN-3VK1R2CQ0AS", "User", "localhost", "desktop",
         "admin-PC", "ADMIN", "hp", "ubuntu", "mail")
CIPHERS = (
    "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 "
    "server-signature RSA-PSS (2048 bits) server-digest SHA256",
    "TLSv1.2 with cipher ECDHE-RSA-AES256-GCM-SHA384 (256/256 bits)",
    "TLSv1.3 with cipher TLS_AES_128_GCM_SHA256 (128/128 bits) key-exchange X25519 "
    "server-signature RSA-PSS (2048 bits) server-digest SHA256",
)


def traffic(args):
    rng = random.Random(args.seed)
    bad = attackers(rng, args.attackers)
    # Zipf-like: a few addresses do most of the attacking.
    cum = []
    total = 0.0
    for i in range(len(bad)):
        total += 1.0 / (i + 1) ** 0.8
        cum.append(total)
    good = ["mx%d.example.%s[198.51.100.%d]" % (i, ("com", "net", "org")[i % 3], i % 254 + 1)
            for i in range(120)]
    good += ["mail%d.example.com[2001:db8:1::%x]" % (i, i + 1) for i in range(40)]
    users = ["%s@example.test" % w for w in WORDS]
    smtpd_pids = [rng.randrange(2000, 60000) for _ in range(40)]
    sub_pids = [rng.randrange(2000, 60000) for _ in range(8)]
    qmgr, cleanup, local, smtp = (rng.randrange(2000, 60000) for _ in range(4))

    syslog = open(args.syslog, "w", buffering=1 << 20) if args.syslog else None
    if args.export == "-":
        export = sys.stdout
    elif args.export:
        export = open(args.export, "w", buffering=1 << 20)
    else:
        export = None
    sink = Sink(syslog, export)
    n = args.lines
    end = int((args.end if args.end is not None else time.time()) * 1_000_000)
    start = end - int(args.span * 1_000_000)
    step = (end - start) / n
    counts = {"lines": 0, "flood": 0, "sasl": 0, "helo": 0}
    per_ip = {}

    def line(ident, pid, message, priority=6):
        i = counts["lines"]
        if i >= n:
            return
        sink.emit(start + int(i * step), ident, pid, message, priority)
        counts["lines"] = i + 1

    def failure(kind, ip):
        if counts["lines"] < n:
            counts[kind] += 1
            per_ip[ip] = per_ip.get(ip, 0) + 1

    while counts["lines"] < n:
        r = rng.random()
        pid = rng.choice(smtpd_pids)
        if r < 0.55:
            ip = rng.choices(bad, cum_weights=cum)[0]
            who = "unknown[%s]" % ip
            line("postfix/smtpd", pid, "connect from %s" % who)
            if r < 0.275:
                failure("flood", ip)
                line("postfix/smtpd", pid, "lost connection after AUTH from %s" % who)
                line("postfix/smtpd", pid, "disconnect from %s ehlo=1 auth=0/1 commands=1/2" % who)
            elif r < 0.4125:
                line("postfix/smtpd", pid,
                     "warning: SASL authentication failure: Password verification failed", 4)
                failure("sasl", ip)
                line("postfix/smtpd", pid,
                     "warning: %s: SASL LOGIN authentication failed: authentication failure, "
                     "sasl_username=%s" % (who, rng.choice(users)), 4)
                line("postfix/smtpd", pid,
                     "disconnect from %s ehlo=1 auth=0/1 quit=1 commands=2/3" % who)
            else:
                helo = rng.choice(HELOS)
                failure("helo", ip)
                line("postfix/smtpd", pid,
                     "NOQUEUE: reject: RCPT from %s: 504 5.5.2 <%s>: Helo command rejected: "
                     "need fully-qualified hostname; from=<%s@example.net> to=<%s> "
                     "proto=ESMTP helo=<%s>" % (who, helo, rng.choice(WORDS), rng.choice(users), helo))
                line("postfix/smtpd", pid,
                     "disconnect from %s ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4" % who)
        elif r < 0.85:
            # Inbound delivery.
            who = rng.choice(good)
            q = queue_id(rng)
            sender = "%s@%s" % (rng.choice(WORDS), who.split("[")[0].split(".", 1)[1])
            line("postfix/smtpd", pid, "connect from %s" % who)
            line("postfix/smtpd", pid, "Anonymous TLS connection established from %s: %s"
                 % (who, rng.choice(CIPHERS)))
            line("postfix/smtpd", pid, "%s: client=%s" % (q, who))
            line("postfix/cleanup", cleanup, "%s: message-id=<%d.%s@%s>"
                 % (q, rng.randrange(10 ** 9), q.lower(), who.split("[")[0]))
            line("postfix/qmgr", qmgr, "%s: from=<%s>, size=%d, nrcpt=1 (queue active)"
                 % (q, sender, rng.randrange(900, 90000)))
            line("postfix/smtpd", pid, "disconnect from %s ehlo=2 starttls=1 mail=1 rcpt=1 "
                 "data=1 quit=1 commands=7" % who)
            d = rng.randrange(1, 99)
            line("postfix/local", local, "%s: to=<%s>, relay=local, delay=0.%02d, "
                 "delays=0.%02d/0.01/0/0.01, dsn=2.0.0, status=sent (delivered to mailbox)"
                 % (q, rng.choice(users), d, d))
            line("postfix/qmgr", qmgr, "%s: removed" % q)
        elif r < 0.93:
            # Outbound mail from an authenticated user (submission).
            spid = rng.choice(sub_pids)
            who = "client%d.example.test[198.51.100.%d]" % (rng.randrange(50), rng.randrange(1, 254))
            q = queue_id(rng)
            user = rng.choice(users)
            line("postfix/submission/smtpd", spid, "connect from %s" % who)
            line("postfix/submission/smtpd", spid, "%s: client=%s, sasl_method=PLAIN, "
                 "sasl_username=%s" % (q, who, user))
            line("postfix/cleanup", cleanup, "%s: message-id=<%d@example.test>"
                 % (q, rng.randrange(10 ** 9)))
            line("postfix/qmgr", qmgr, "%s: from=<%s>, size=%d, nrcpt=1 (queue active)"
                 % (q, user, rng.randrange(900, 90000)))
            line("postfix/submission/smtpd", spid, "disconnect from %s ehlo=1 auth=1 mail=1 "
                 "rcpt=1 data=1 quit=1 commands=6" % who)
            d = rng.randrange(10, 99)
            line("postfix/smtp", smtp, "%s: to=<%s@example.org>, relay=mx.example.org"
                 "[198.51.100.200]:25, delay=0.%d, delays=0.01/0.01/0.1/0.%d, dsn=2.0.0, "
                 "status=sent (250 2.0.0 OK %d)" % (q, rng.choice(WORDS), d, d, rng.randrange(10 ** 9)))
            line("postfix/qmgr", qmgr, "%s: removed" % q)
        else:
            # Noise that no filter here counts.
            who = rng.choice(good)
            pick = rng.random()
            if pick < 0.4:
                line("postfix/smtpd", pid, "lost connection after EHLO from %s" % who)
            elif pick < 0.7:
                line("postfix/smtpd", pid, "warning: hostname %s does not resolve to address %s"
                     % (who.split("[")[0], who.split("[")[1].rstrip("]")))
            else:
                line("postfix/anvil", 811, "statistics: max connection rate 3/60s for "
                     "(smtp:%s) at %s" % (who.split("[")[1].rstrip("]"), "Dec 14 09:58:37"))

    for f in (syslog, export):
        if f is not None and f is not sys.stdout:
            f.close()
    if export is sys.stdout:
        sys.stdout.flush()
    summary = dict(counts)
    summary.update({
        "seed": args.seed,
        "attackers": len(bad),
        "attacking": len(per_ip),
        "failures": counts["flood"] + counts["sasl"] + counts["helo"],
        "start_usec": start,
        "end_usec": start + int((n - 1) * step),
        "sha256": sink.digest.hexdigest(),
    })
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(summary, f, indent=1)
            f.write("\n")
    else:
        sys.stderr.write(json.dumps(summary) + "\n")


def flood_ips(count, net, v6):
    for i in range(count):
        if v6:
            yield "2001:db8:%x::%x" % (net, i + 1)
        else:
            j = i + 1
            yield "10.%d.%d.%d" % (net + (j >> 16), (j >> 8) & 255, j & 255)


def flood(args):
    end = int((args.end if args.end is not None else time.time()) * 1_000_000)
    n = args.ips * args.repeat
    out = sys.stdout
    ips = list(flood_ips(args.ips, args.net, args.v6))
    t = end - n * args.spacing
    pid = 30000 + args.net
    buf = []
    for r in range(args.repeat):
        for ip in ips:
            t += args.spacing
            buf.append(export_entry(t, "postfix/smtpd", pid,
                                    "lost connection after AUTH from unknown[%s]" % ip))
            if len(buf) >= 4096:
                out.write("".join(buf))
                buf.clear()
    out.write("".join(buf))
    out.flush()


def entry(args):
    msg = args.message or "connect from mx0.example.com[198.51.100.1]"
    sys.stdout.write(export_entry(args.time, "postfix/smtpd", 4242, msg))
    sys.stdout.flush()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("traffic")
    t.add_argument("--lines", type=int, default=1_000_000)
    t.add_argument("--attackers", type=int, default=3000)
    t.add_argument("--seed", type=int, default=7)
    t.add_argument("--end", type=float, default=None, help="epoch seconds of the last line")
    t.add_argument("--span", type=float, default=6 * 3600, help="seconds the traffic covers")
    t.add_argument("--syslog")
    t.add_argument("--export")
    t.add_argument("--summary")
    t.set_defaults(func=traffic)
    f = sub.add_parser("flood")
    f.add_argument("--ips", type=int, required=True)
    f.add_argument("--net", type=int, default=100)
    f.add_argument("--v6", action="store_true")
    f.add_argument("--repeat", type=int, default=1)
    f.add_argument("--end", type=float, default=None)
    f.add_argument("--spacing", type=int, default=10, help="microseconds between entries")
    f.set_defaults(func=flood)
    e = sub.add_parser("entry")
    e.add_argument("--time", type=int, required=True, help="__REALTIME_TIMESTAMP (usec)")
    e.add_argument("--message")
    e.set_defaults(func=entry)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
