#!/bin/sh
# banjo against fail2ban and fail2ban-rs, side by side: prints one table
# (see BENCHMARKS.md). Root on Debian 12; about 20-25 minutes.
#
#   sh benches/run.sh [--runs N] [--only matching,ingestion,latency,throughput,memory,restart,criterion]
#                     [--max-load 0.8] [--out results.json] ...   (python3 benches/bench.py --help)
#
# Installs what is missing, without starting any daemon on the host:
#   * fail2ban 1.0.2 (Debian 12): `apt-get download` + `dpkg -x` into the cache,
#     run from there with Debian's python3 (never installed, never started by apt);
#   * python3-systemd (fail2ban's systemd backend), systemd-journal-remote, nftables: apt-get;
#   * fail2ban-rs: `cargo install --locked --version $FAIL2BAN_RS_VERSION --root <cache>`.
# The cache is $BANJO_BENCH_CACHE (default /var/tmp/banjo-bench): peers, the
# generated corpus (about 500 MB) and the run's scratch files.
# Every daemon runs in a network namespace this script creates and deletes;
# the host's firewall and journal are never touched.
set -eu
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "benches/run.sh: needs root (network namespaces, nftables)" >&2; exit 1; }

CACHE=${BANJO_BENCH_CACHE:-/var/tmp/banjo-bench}
FAIL2BAN_RS_VERSION=${FAIL2BAN_RS_VERSION:-1.5.4}
TARGET=$(mkdir -p "${CARGO_TARGET_DIR:-target}" && cd "${CARGO_TARGET_DIR:-target}" && pwd)
mkdir -p "$CACHE"
say() { echo "[run.sh] $*" >&2; }

apt_install() {
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 \
        --no-install-recommends "$@" >&2
}

command -v nft >/dev/null || apt_install nftables
command -v ip >/dev/null || apt_install iproute2
[ -x /lib/systemd/systemd-journal-remote ] || apt_install systemd-journal-remote
/usr/bin/python3 -c 'import systemd.journal' 2>/dev/null || apt_install python3-systemd

if [ ! -f "$CACHE/fail2ban/usr/lib/python3/dist-packages/fail2ban/__init__.py" ]; then
    say "fetching fail2ban (apt-get download; unpacked, not installed)"
    rm -rf "$CACHE/debs" "$CACHE/fail2ban"
    mkdir -p "$CACHE/debs"
    # _apt cannot write into root's directories: download where it can, then move.
    tmp=$(mktemp -d)
    chmod 777 "$tmp"
    (cd "$tmp" && apt-get download -q fail2ban >&2)
    mv "$tmp"/fail2ban_*.deb "$CACHE/debs/"
    rm -rf "$tmp"
    dpkg -x "$CACHE"/debs/fail2ban_*.deb "$CACHE/fail2ban"
fi

F2BRS=$CACHE/fail2ban-rs/bin/fail2ban-rs
if [ ! -x "$F2BRS" ] || ! "$F2BRS" --version | grep -q " $FAIL2BAN_RS_VERSION\$"; then
    say "cargo install fail2ban-rs $FAIL2BAN_RS_VERSION"
    cargo install --locked --quiet --version "$FAIL2BAN_RS_VERSION" \
        --root "$CACHE/fail2ban-rs" --target-dir "$TARGET/fail2ban-rs" fail2ban-rs >&2
fi

say "building banjo and the measuring tools (release)"
cargo build --release --locked --quiet
# The tools build banjo as a path dependency: with banjo's own lock file,
# so that both builds use the same versions of every crate.
cp Cargo.lock benches/tools/Cargo.lock
cargo build --release --quiet --manifest-path benches/tools/Cargo.toml --target-dir "$TARGET"

exec /usr/bin/python3 benches/bench.py --cache "$CACHE" \
    --banjo "$TARGET/release/banjo" --tool "$TARGET/release/banjo-bench" "$@"
