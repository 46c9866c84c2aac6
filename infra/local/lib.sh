# shellcheck shell=bash
# Shared settings and helpers for infra/local/{install,up,down,env,test}. Sourced, never run.
# Every address is on loopback; every wait is bounded by a deadline.

RECON_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
INFRA_DIR="$RECON_ROOT/infra/local"
STATE_DIR="${RECON_STATE_DIR:-$INFRA_DIR/.state}"
RECON_CACHE="${RECON_CACHE:-$RECON_ROOT/.cache}"

# --- versions -----------------------------------------------------------------
KAFKA_VERSION="${RECON_KAFKA_VERSION:-4.1.2}"
MOTO_REQUIREMENT="moto[server]==5.2.5"

# --- ports (chosen away from every service's default; overridable to run a second set beside the first,
# together with RECON_STATE_DIR) --------------------------------------------------------------------------
KAFKA_PORT="${RECON_LOCAL_KAFKA_PORT:-19092}"                 # PLAINTEXT listener (clients)
KAFKA_CONTROLLER_PORT="${RECON_LOCAL_KAFKA_CONTROLLER_PORT:-19093}" # KRaft controller listener
PG_PORT="${RECON_LOCAL_PG_PORT:-15432}"
S3_PORT="${RECON_LOCAL_S3_PORT:-19000}"
KAFKA_HEAP="${RECON_KAFKA_HEAP:-1g}"                          # -Xmx of the broker JVM

# --- credentials and names (local only) ---------------------------------------------
PG_USER=recon
PG_PASSWORD=recon
PG_CATALOG_DB=recon_catalog
PG_TRUTH_DB=recon_truth
S3_ACCESS_KEY_ID=recon-access-key
S3_SECRET_ACCESS_KEY=recon-secret-key
S3_REGION=us-east-1
S3_WAREHOUSE_BUCKET=recon-warehouse
S3_CHECKPOINT_BUCKET=recon-checkpoints

# --- derived paths -------------------------------------------------------------------
KAFKA_HOME="$RECON_CACHE/kafka-$KAFKA_VERSION"
KAFKA_LIB="$KAFKA_HOME/lib"
VENV_DIR="$RECON_CACHE/venv"
LOG_DIR="$STATE_DIR/logs"
KAFKA_STATE="$STATE_DIR/kafka"
PG_STATE="$STATE_DIR/postgres"
S3_STATE="$STATE_DIR/s3"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

# Milliseconds since the epoch, for phase timings.
now_ms() { date +%s%3N; }
# elapsed START_MS -> "12.3s"
elapsed() { local d=$(( $(now_ms) - $1 )); printf '%d.%01ds' $((d / 1000)) $(((d % 1000) / 100)); }

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pid_alive PIDFILE [PATTERN]: true when the pid file names a live process (whose command line contains PATTERN,
# so that a recycled pid is never taken for one of ours).
pid_alive() {
  local f="$1" pattern="${2:-}" pid
  [[ -s "$f" ]] || return 1
  pid="$(cat "$f")"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  [[ -z "$pattern" ]] || tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$pattern"
}

# Markers that identify our processes in /proc/PID/cmdline.
KAFKA_MARKER="kafka.Kafka"
S3_MARKER="infra/local/s3/server.py"
PG_MARKER="postgres"

# wait_for NAME SECONDS LOGFILES PIDFILE CMD...: poll CMD every 0.2s until it succeeds or the deadline passes.
# Fails early (with the logs' tails) when the process named by PIDFILE dies. PIDFILE may be "-". LOGFILES is one
# path or several separated by spaces.
show_logs() {
  local f
  for f in $1; do
    [[ -s "$f" ]] || continue
    printf -- '--- last lines of %s:\n' "$f" >&2
    tail -n 25 "$f" >&2 || true
  done
}
wait_for() {
  local name="$1" secs="$2" logfile="$3" pidfile="$4"; shift 4
  local deadline=$(( $(date +%s) + secs ))
  while true; do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if [[ "$pidfile" != "-" ]] && ! pid_alive "$pidfile"; then
      log "$name: process exited before it was ready"
      show_logs "$logfile"
      die "$name failed to start (log: ${logfile// / and })"
    fi
    if (( $(date +%s) >= deadline )); then
      log "$name: not ready after ${secs}s"
      show_logs "$logfile"
      die "$name did not become ready within ${secs}s (log: ${logfile// / and })"
    fi
    sleep 0.2
  done
}

# The newest PostgreSQL server installed from Debian's packages, or nothing.
pg_bindir() {
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  [[ -n "$d" && -x "$d/pg_ctl" && -x "$d/initdb" ]] && printf '%s\n' "$d"
}

# The server runs as the `postgres` user, so its data directory must be reachable by that user. A clone under
# a private folder (e.g. /root) is not: then the data directory moves to /var/tmp, keyed by the repo path.
pg_datadir() {
  if (cd / && runuser -u postgres -- test -x "$STATE_DIR") 2>/dev/null; then
    printf '%s\n' "$PG_STATE/data"
  else
    printf '/var/tmp/recon-pg-%s/data\n' "$(printf '%s' "$RECON_ROOT" | sha256sum | cut -c1-12)"
  fi
}
