# shellcheck shell=bash
# Shared settings of infra/trino/{install,up,down,test}. Sourced, never run.
source "$(dirname "${BASH_SOURCE[0]}")/../local/lib.sh"

TRINO_DIR="$RECON_ROOT/infra/trino"
TRINO_VERSION="${RECON_TRINO_VERSION:-476}"        # io.trino:trino-server:<v>:tar.gz on Maven Central
TRINO_HOME="$RECON_CACHE/trino-server-$TRINO_VERSION"
TRINO_PORT="${RECON_TRINO_PORT:-18080}"
TRINO_STATE="$STATE_DIR/trino"
TRINO_PID="$STATE_DIR/trino.pid"
TRINO_LOG="$LOG_DIR/trino.log"
TRINO_MARKER="io.trino.server.TrinoServer"
# Trino 476 needs Java 24+; the machine's default is 17. The Temurin JDK under /usr/lib/jvm, or $RECON_TRINO_JAVA_HOME.
trino_java_home() {
  local d
  for d in "${RECON_TRINO_JAVA_HOME:-}" /usr/lib/jvm/temurin-25-jdk-amd64 /usr/lib/jvm/temurin-24-jdk-amd64; do
    [[ -n "$d" && -x "$d/bin/java" ]] && { printf '%s\n' "$d"; return 0; }
  done
  return 1
}
