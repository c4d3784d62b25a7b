#!/bin/sh
# Restart with many active bans: time from `banjo run` to READY, bans lost,
# and elements removed/re-added during the restart (there must be none).
# Root; everything happens in a private network namespace.
#   sh benches/restart.sh [BANS]        (default 100000; needs a release build)
# BANJO=PATH uses that binary and skips the build (benches/run.sh does so);
# otherwise it builds into ${CARGO_TARGET_DIR:-target}.
set -eu
N=${1:-100000}
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "needs root"; exit 1; }
if [ -z "${BANJO:-}" ]; then
    cargo build --release --locked -q
    BANJO=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release/banjo
fi
NS=banjo-bench-$$
DIR=$(mktemp -d)
cleanup() {
    # banjo saves its state on SIGTERM: let it finish before removing it.
    [ -n "${PID:-}" ] && { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; } || true
    [ -n "${MON:-}" ] && kill "$MON" 2>/dev/null || true
    ip netns delete "$NS" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
ip netns add "$NS"
mkdir -p "$DIR/journal"
cat > "$DIR/banjo.toml" <<TOML
[daemon]
state_dir = "$DIR/state"
socket = "$DIR/banjo.sock"
[journal]
directory = "$DIR/journal"
[firewall]
table = "bench"
[jail.bench]
failregex = ['x <HOST>']
bantime = "1d"
port = "smtp"
TOML
start() {
    ip netns exec "$NS" "$BANJO" run --config "$DIR/banjo.toml" 2>>"$DIR/log" &
    PID=$!
    until "$BANJO" status --config "$DIR/banjo.toml" >/dev/null 2>&1; do sleep 0.01; done
}
start
python3 - "$N" > "$DIR/ips" <<'PY'
import sys
n = int(sys.argv[1])
for i in range(n):
    print(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}")
PY
t0=$(date +%s.%N)
xargs -n 20000 "$BANJO" ban bench --config "$DIR/banjo.toml" < "$DIR/ips" >/dev/null
t1=$(date +%s.%N)
before=$(ip netns exec "$NS" nft list set inet bench bench_v4 | grep -o 'expires' | wc -l)
kill -TERM "$PID"; wait "$PID" || true
ip netns exec "$NS" nft monitor ruleset > "$DIR/monitor" 2>&1 &
MON=$!
sleep 0.2
s0=$(date +%s.%N)
ip netns exec "$NS" "$BANJO" run --config "$DIR/banjo.toml" 2>>"$DIR/log" &
PID=$!
until "$BANJO" status --config "$DIR/banjo.toml" >/dev/null 2>&1; do sleep 0.005; done
s1=$(date +%s.%N)
sleep 0.5
kill "$MON"; MON=
after=$(ip netns exec "$NS" nft list set inet bench bench_v4 | grep -o 'expires' | wc -l)
churn=$(grep -c 'element' "$DIR/monitor" || true)
echo "bans applied:        $before of $N via banjo ban in $(echo "$t1 - $t0" | bc) s"
echo "restart to ready:    $(echo "($s1 - $s0) * 1000" | bc) ms with $before active bans"
echo "bans after restart:  $after (lost: $((before - after)))"
echo "element changes seen by nft monitor during the restart: $churn"
