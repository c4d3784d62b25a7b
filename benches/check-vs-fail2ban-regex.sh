#!/bin/sh
# banjo check against fail2ban-regex, side by side, on the same generated
# Postfix log (1,000,000 lines by default) with fail2ban's own
# `postfix[mode=aggressive]` filter from Debian's fail2ban package.
#
#   sh benches/check-vs-fail2ban-regex.sh [LINES]
#
# Not a test: it prints both rates and their ratio. Needs apt-get (to
# download, not install, the fail2ban package), dpkg and python3;
# fail2ban-regex runs from the unpacked package.
set -eu
cd "$(dirname "$0")/.."
LINES=${1:-1000000}
TARGET=${CARGO_TARGET_DIR:-target}
WORK="$TARGET/bench-check"
mkdir -p "$WORK"

# Debian's fail2ban package, unpacked (shared with the conformance test).
F2B="$TARGET/tmp/fail2ban-deb/root"
if [ ! -d "$F2B/etc/fail2ban/filter.d" ]; then
    mkdir -p "$TARGET/tmp/fail2ban-deb"
    (cd "$TARGET/tmp/fail2ban-deb" && { apt-get download -q fail2ban || { apt-get update -qq && apt-get download -q fail2ban; }; })
    rm -rf "$F2B.tmp"
    dpkg -x "$TARGET"/tmp/fail2ban-deb/fail2ban_*.deb "$F2B.tmp"
    mv "$F2B.tmp" "$F2B"
fi

# A Postfix log: mostly ordinary traffic, about 12 % failures of the kinds
# postfix[mode=aggressive] counts (SASL failures, rejects, AUTH floods).
LOG="$WORK/postfix-$LINES.log"
if [ ! -s "$LOG" ]; then
    awk -v n="$LINES" 'BEGIN {
        srand(42);
        split("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec", mon, " ");
        for (i = 0; i < n; i++) {
            t = i * 3; s = t % 60; m = int(t / 60) % 60; h = int(t / 3600) % 24;
            d = 1 + int(t / 86400) % 28;
            ts = sprintf("%s %2d %02d:%02d:%02d", mon[1 + int(t / 2419200) % 12], d, h, m, s);
            ip = sprintf("%d.%d.%d.%d", 1 + int(rand() * 223), int(rand() * 256), int(rand() * 256), 1 + int(rand() * 254));
            pid = 1000 + int(rand() * 30000);
            q = sprintf("%X%04X", int(rand() * 65536), int(rand() * 65536));
            r = rand();
            if (r < 0.22)      msg = sprintf("postfix/smtpd[%d]: connect from unknown[%s]", pid, ip);
            else if (r < 0.44) msg = sprintf("postfix/smtpd[%d]: disconnect from unknown[%s] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5", pid, ip);
            else if (r < 0.54) msg = sprintf("postfix/smtpd[%d]: %s: client=mail.example.net[%s]", pid, q, ip);
            else if (r < 0.64) msg = sprintf("postfix/cleanup[%d]: %s: message-id=<%s@example.net>", pid, q, q);
            else if (r < 0.74) msg = sprintf("postfix/qmgr[%d]: %s: from=<user@example.net>, size=%d, nrcpt=1 (queue active)", pid, q, 1000 + int(rand() * 90000));
            else if (r < 0.82) msg = sprintf("postfix/smtp[%d]: %s: to=<bob@example.org>, relay=mx.example.org[%s]:25, delay=0.5, delays=0.1/0/0.2/0.2, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued)", pid, q, ip);
            else if (r < 0.88) msg = sprintf("postfix/smtpd[%d]: Anonymous TLS connection established from unknown[%s]: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)", pid, ip);
            else if (r < 0.92) msg = sprintf("postfix/smtpd[%d]: warning: unknown[%s]: SASL LOGIN authentication failed: UGFzc3dvcmQ6", pid, ip);
            else if (r < 0.95) msg = sprintf("postfix/smtpd[%d]: NOQUEUE: reject: RCPT from unknown[%s]: 554 5.7.1 <spam@example.org>: Relay access denied; from=<x@example.net> to=<spam@example.org> proto=ESMTP helo=<example.net>", pid, ip);
            else if (r < 0.98) msg = sprintf("postfix/smtpd[%d]: lost connection after AUTH from unknown[%s]", pid, ip);
            else               msg = sprintf("postfix/smtpd[%d]: disconnect from unknown[%s] ehlo=1 auth=0/1 commands=1/2", pid, ip);
            printf "%s mail %s\n", ts, msg;
        }
    }' > "$LOG"
fi
echo "log: $LOG ($(wc -l < "$LOG") lines)"

cargo build --release --quiet --bin banjo
BANJO="$TARGET/release/banjo"
FILTER='postfix[mode=aggressive]'

# banjo: median of RUNS runs (it takes well under a second); fail2ban-regex
# once (it takes most of a minute). Rates are wall clock, start-up included.
RUNS=${RUNS:-5}
RATES=""
i=0
while [ "$i" -lt "$RUNS" ]; do
    OUT=$("$BANJO" check --filter "$FILTER" --filter-dir "$F2B/etc/fail2ban/filter.d" "$LOG")
    [ "$i" = 0 ] && echo "$OUT" | sed -n '2p' | sed 's/^/banjo check:    /'
    START=$(date +%s.%N)
    "$BANJO" check --filter "$FILTER" --filter-dir "$F2B/etc/fail2ban/filter.d" "$LOG" >/dev/null
    END=$(date +%s.%N)
    RATES="$RATES $(echo "$START $END $LINES" | awk '{ printf "%d", $3 / ($2 - $1) }')"
    i=$((i + 1))
done
BANJO_RATE=$(echo $RATES | tr ' ' '\n' | sort -n | awk '{ a[NR] = $1 } END { printf "%d", a[int((NR + 1) / 2)] }')
BANJO_RANGE=$(echo $RATES | tr ' ' '\n' | sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%d-%d", lo, hi }')

START=$(date +%s.%N)
F2B_OUT=$(PYTHONPATH="$F2B/usr/lib/python3/dist-packages" python3 "$F2B/usr/bin/fail2ban-regex" \
    --config "$F2B/etc/fail2ban" "$LOG" "$FILTER" 2>&1)
END=$(date +%s.%N)
echo "$F2B_OUT" | grep -E '^Lines:' | sed 's/^/fail2ban-regex: /'
F2B_RATE=$(echo "$START $END $LINES" | awk '{ printf "%d", $3 / ($2 - $1) }')

echo "banjo check:    $BANJO_RATE lines/s (median of $RUNS, $BANJO_RANGE; wall clock, including start-up)"
echo "fail2ban-regex: $F2B_RATE lines/s (wall clock, including start-up)"
echo "$BANJO_RATE $F2B_RATE" | awk '{ printf "ratio:          %.0fx\n", $1 / $2 }'
echo "load average:   $(cut -d' ' -f1-3 /proc/loadavg)"
