#!/usr/bin/env bash
# Local service stack for presence: Apache Kafka (KRaft, single node) and
# FerretDB v1 (MongoDB wire protocol over SQLite). No Docker needed.
#
#   bash stack/stack.sh up       start both (fetch/build on first use), wait until ready
#   bash stack/stack.sh down     stop both (SIGTERM, then SIGKILL), idempotent
#   bash stack/stack.sh status   one line per service; exit 0 only if both are up
#   bash stack/stack.sh reset    down, then wipe the runtime state (topics, databases, logs)
#   bash stack/stack.sh build    only fetch the Kafka jars and build the FerretDB binary
#   bash stack/stack.sh pin-kafka-jars   fetch the pom's jars, rewrite stack/kafka/jars.sha256
#   bash stack/stack.sh logs [kafka|ferretdb]   last lines of the logs
#
# Environment (all optional):
#   STACK_CACHE                  downloads/builds     (default ~/.cache/presence)
#   STACK_STATE            data, logs, pids     (default ~/.cache/presence/state)
#   STACK_KAFKA_PORT             Kafka listener       (default 9092)
#   STACK_KAFKA_CONTROLLER_PORT  KRaft controller     (default 9093)
#   STACK_MONGO_PORT             FerretDB             (default 27017)
#   STACK_FRESH=1          `up` wipes the state first (like `reset` + `up`)
#   STACK_TIMEOUT          seconds `up` waits for readiness (default 90)
#   STACK_STOP_TIMEOUT     seconds `down` waits before SIGKILL (default 30)
#   STACK_KAFKA_HEAP_OPTS        JVM heap flags       (default "-Xms256m -Xmx1g")
#   STACK_PYTHON                 a Python with confluent_kafka for the readiness probe
set -euo pipefail

STACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$STACK_DIR")"
HOME_DIR="${HOME:-$(cd ~ && pwd)}"

CACHE="${STACK_CACHE:-$HOME_DIR/.cache/presence}"
STATE="${STACK_STATE:-$HOME_DIR/.cache/presence/state}"
HOST=127.0.0.1
KAFKA_PORT="${STACK_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${STACK_KAFKA_CONTROLLER_PORT:-9093}"
MONGO_PORT="${STACK_MONGO_PORT:-27017}"
TIMEOUT="${STACK_TIMEOUT:-90}"
STOP_TIMEOUT="${STACK_STOP_TIMEOUT:-30}"
KAFKA_HEAP_OPTS="${STACK_KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"

LIBS="$CACHE/kafka-libs"
FDB_BIN="$CACHE/bin/presence-ferretdb"

LOG_DIR="$STATE/logs"
RUN_DIR="$STATE/run"
KAFKA_DIR="$STATE/kafka"
KAFKA_DATA="$KAFKA_DIR/data"
KAFKA_CONF="$KAFKA_DIR/server.properties"
KAFKA_PID="$RUN_DIR/kafka.pid"
KAFKA_LOG="$LOG_DIR/kafka.log"    # log4j2 (broker)
KAFKA_OUT="$LOG_DIR/kafka.out"    # JVM stdout/stderr (crashes, OOM)
FDB_DATA="$STATE/ferretdb"
FDB_PID="$RUN_DIR/ferretdb.pid"
FDB_LOG="$LOG_DIR/ferretdb.log"

# Fixed strings found in each process's command line: they tie a process to
# this state directory, so `down` also finds one whose pid file was lost.
KAFKA_MARK="kafka.Kafka $KAFKA_CONF"
FDB_MARK="-sqlite-dir $FDB_DATA"

say() { printf 'stack: %s\n' "$*"; }
warn() { printf 'stack: %s\n' "$*" >&2; }
die() { printf 'stack: ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

# ---------------------------------------------------------------- helpers

hash_files() { cat "$@" | sha256sum | cut -d' ' -f1; }

port_open() { # host port
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

# True if pid runs (not a zombie) and its command line contains the mark.
pid_is_ours() { # pid mark
  local pid="$1" mark="$2" st cmd
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/stat" ]] || return 1
  st="$(sed -E 's/^.*\) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
  [[ -n "$st" && "$st" != Z && "$st" != X ]] || return 1
  cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmd" == *"$mark"* ]]
}

# Pids of live processes whose command line contains the mark (pid file first).
find_pids() { # pidfile mark
  local pidfile="$1" mark="$2" pid re out=()
  if [[ -f "$pidfile" ]]; then
    pid="$(tr -dc '0-9' <"$pidfile")"
    if pid_is_ours "$pid" "$mark"; then out+=("$pid"); fi
  fi
  re="$(printf '%s' "$mark" | sed 's/[][\.*^$+?(){}|]/\\&/g')"
  for pid in $(pgrep -f -- "$re" || true); do
    [[ " ${out[*]:-} " == *" $pid "* ]] && continue
    if pid_is_ours "$pid" "$mark"; then out+=("$pid"); fi
  done
  echo "${out[*]:-}"
}

main_pid() { # pidfile mark -> the service's pid, or nothing
  local pid p
  if [[ -f "$1" ]]; then
    pid="$(tr -dc '0-9' <"$1")"
    if pid_is_ours "$pid" "$2"; then echo "$pid"; return 0; fi
  fi
  p="$(find_pids "$1" "$2")"
  echo "${p%% *}"
}

port_owner() { # port -> "users:(...)" text from ss, if any
  ss -ltnpH "sport = :$1" 2>/dev/null | sed -E 's/.*(users:.*)/\1/' | head -n1 || true
}

show_log() { # file [lines]
  local f="$1" n="${2:-20}"
  if [[ -s "$f" ]]; then
    echo "----- last $n lines of $f -----"
    tail -n "$n" "$f"
    echo "-----"
  else
    echo "(no log yet: $f)"
  fi
  return 0
}

# Serialises up/down/reset. The services must not inherit fd 9 (see launch),
# or they would hold the lock for their whole life.
take_lock() {
  mkdir -p "$STATE"
  exec 9>"$STATE/stack.lock"
  flock -w 300 9 || die "another stack.sh has held $STATE/stack.lock for 5 minutes"
}

# ---------------------------------------------------------------- build / fetch

# Maven runs with --strict-checksums (a download whose .sha1/.md5 from the
# repository does not match is an error, not a warning), and the jars it copies
# must then be exactly those listed, with their sha256, in stack/kafka/jars.sha256
# (like go.sum for the FerretDB build): a changed or extra jar, from the network
# or from a tampered ~/.m2, stops `up`. After changing versions in the pom, run
# `bash stack/stack.sh pin-kafka-jars` to fetch them and rewrite that list.
KAFKA_SUMS="$STACK_DIR/kafka/jars.sha256"

kafka_libs_match() { # dir -> 0 if its jars are exactly those in jars.sha256
  local dir="$1"
  [[ -f "$KAFKA_SUMS" ]] || return 1
  diff -q <(awk '!/^#/ && NF {print $2}' "$KAFKA_SUMS" | sort) \
    <(cd "$dir" 2>/dev/null && ls -1 -- *.jar 2>/dev/null | sort) >/dev/null || return 1
  (cd "$dir" && sha256sum --quiet --strict -c "$KAFKA_SUMS") >/dev/null 2>&1
}

fetch_kafka_jars() { # into dir
  command -v mvn >/dev/null || die "mvn not found (needed once to fetch the Kafka jars from Maven Central)"
  say "fetching Kafka jars from Maven Central into $1 (first time only; log: $CACHE/mvn.log)..."
  if ! mvn -q -B --strict-checksums -f "$STACK_DIR/kafka/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$1" >"$CACHE/mvn.log" 2>&1; then
    rm -rf "$1"
    show_log "$CACHE/mvn.log" 30 >&2
    die "maven could not fetch the Kafka jars (log: $CACHE/mvn.log)"
  fi
}

ensure_kafka_libs() {
  local want tmp bad
  want="$(hash_files "$STACK_DIR/kafka/pom.xml")"
  # Checked on every `up` (a fraction of a second): jars already there and
  # exactly the pinned ones, nothing to fetch. (.stamp: the pom it came from.)
  if kafka_libs_match "$LIBS"; then
    [[ -f "$LIBS/.stamp" && "$(cat "$LIBS/.stamp")" == "$want" ]] || echo "$want" >"$LIBS/.stamp"
    return 0
  fi
  mkdir -p "$CACHE"
  tmp="$CACHE/kafka-libs.tmp.$$"
  rm -rf "$tmp"
  fetch_kafka_jars "$tmp"
  if ! kafka_libs_match "$tmp"; then
    bad="$(cd "$tmp" && { sha256sum --strict -c "$KAFKA_SUMS" 2>&1 | grep -v ': OK$' | head -n 5;
      diff <(awk '!/^#/ && NF {print $2}' "$KAFKA_SUMS" | sort) <(ls -1 -- *.jar | sort) | grep '^[<>]' | head -n 5; } || true)"
    rm -rf "$tmp"
    die "the fetched Kafka jars differ from stack/kafka/jars.sha256 (a changed download, or the pom changed without 'bash stack/stack.sh pin-kafka-jars'): $(echo "$bad" | tr '\n' ' ')"
  fi
  echo "$want" >"$tmp/.stamp"
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
}

# Fetch the pom's jars (strict checksums) and write their sha256 list: run after
# changing a version in stack/kafka/pom.xml, and review the diff of jars.sha256.
cmd_pin_kafka_jars() {
  local tmp="$CACHE/kafka-libs.pin.$$"
  mkdir -p "$CACHE"
  rm -rf "$tmp"
  fetch_kafka_jars "$tmp"
  {
    echo "# sha256 of every jar stack/stack.sh runs Kafka with (mvn --strict-checksums, then"
    echo "# checked here). Written by 'bash stack/stack.sh pin-kafka-jars' from stack/kafka/pom.xml."
    (cd "$tmp" && sha256sum -- *.jar)
  } >"$KAFKA_SUMS"
  rm -rf "$tmp"
  say "wrote $KAFKA_SUMS ($(grep -vc '^#' "$KAFKA_SUMS") jars)"
}

# The binary is built from stack/ferretdb (main.go, go.mod, go.sum) against a
# copy of the FerretDB module with stack/ferretdb/patches/*.patch applied; the
# copy lives in the cache and is wired in with `go build -modfile` (a go.mod
# with a replace directive), so the repo's go.mod stays plain.
ensure_ferretdb_bin() {
  local src="$STACK_DIR/ferretdb" want tmp b="$CACHE/ferretdb-build" mod p
  want="$(hash_files "$src/go.mod" "$src/go.sum" "$src"/*.go "$src"/patches/*.patch)"
  if [[ -x "$FDB_BIN" && -f "$FDB_BIN.stamp" && "$(cat "$FDB_BIN.stamp")" == "$want" ]]; then
    return 0
  fi
  command -v go >/dev/null || die "go not found (needed once to build $FDB_BIN)"
  command -v patch >/dev/null || die "patch not found (apt-get install patch)"
  mkdir -p "$CACHE/bin"
  say "building FerretDB v1 (SQLite) into $FDB_BIN (first time only; log: $CACHE/go-build.log)..."
  {
    rm -rf "$b" && mkdir -p "$b" &&
      (cd "$src" && go mod download github.com/FerretDB/FerretDB) &&
      mod="$(cd "$src" && go list -m -f '{{.Dir}}' github.com/FerretDB/FerretDB)" &&
      [[ -n "$mod" && -d "$mod" ]] &&
      cp -R "$mod" "$b/FerretDB" && chmod -R u+w "$b/FerretDB"
  } >"$CACHE/go-build.log" 2>&1 || die "could not get the FerretDB module source (log: $CACHE/go-build.log)"
  for p in "$src"/patches/*.patch; do
    echo "applying $p" >>"$CACHE/go-build.log"
    patch -d "$b/FerretDB" -p1 --forward --batch <"$p" >>"$CACHE/go-build.log" 2>&1 ||
      die "patch $p does not apply to FerretDB (log: $CACHE/go-build.log)"
  done
  cp "$src/go.mod" "$src/go.sum" "$b/"
  printf '\nreplace github.com/FerretDB/FerretDB => %s\n' "$b/FerretDB" >>"$b/go.mod"
  tmp="$FDB_BIN.tmp.$$"
  if ! (cd "$src" && CGO_ENABLED=0 go build -modfile="$b/go.mod" -trimpath -buildvcs=false -o "$tmp" .) \
    >>"$CACHE/go-build.log" 2>&1; then
    rm -f "$tmp"
    show_log "$CACHE/go-build.log" 30 >&2
    die "go build of stack/ferretdb failed (log: $CACHE/go-build.log)"
  fi
  mv "$tmp" "$FDB_BIN"
  echo "$want" >"$FDB_BIN.stamp"
}

# ---------------------------------------------------------------- start

# setsid: own session, so the service outlives the shell that started it and a
# Ctrl-C in that terminal does not reach it. The wrapper writes its own pid,
# then execs the service, so the pid file holds the service's real pid.
launch() { # pidfile logfile cmd...
  local pidfile="$1" logfile="$2" what="$3"
  shift 2
  rm -f "$pidfile"
  setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" \
    </dev/null >>"$logfile" 2>&1 9>&- &
  local i
  for i in $(seq 1 50); do
    [[ -s "$pidfile" ]] && return 0
    sleep 0.1
  done
  die "could not start $what (no pid file $pidfile)"
}

check_port_free() { # name port
  if port_open "$HOST" "$2"; then
    die "$1: port $HOST:$2 is already in use by another process $(port_owner "$2") - stop it or set the STACK_*_PORT variables"
  fi
}

start_kafka() {
  local pid cid
  pid="$(main_pid "$KAFKA_PID" "$KAFKA_MARK")"
  if [[ -n "$pid" ]]; then
    echo "$pid" >"$KAFKA_PID"
    say "kafka: already running (pid $pid) on $HOST:$KAFKA_PORT"
    return 0
  fi
  check_port_free kafka "$KAFKA_PORT"
  check_port_free kafka-controller "$CONTROLLER_PORT"
  mkdir -p "$KAFKA_DATA" "$LOG_DIR" "$RUN_DIR"

  sed -e "s|@KAFKA_HOST@|$HOST|g" -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" \
    -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" -e "s|@DATA_DIR@|$KAFKA_DATA|g" \
    "$STACK_DIR/kafka/server.properties.in" >"$KAFKA_CONF"
  cp "$STACK_DIR/kafka/log4j2.properties" "$KAFKA_DIR/log4j2.properties"

  local jvm=(-Dkafka.logs.dir="$LOG_DIR" -Dlog4j2.configurationFile="file:$KAFKA_DIR/log4j2.properties"
    -Djava.awt.headless=true -cp "$LIBS/*")

  # Format the storage once (KRaft needs a cluster id and a bootstrap checkpoint).
  if [[ ! -f "$KAFKA_DATA/meta.properties" ]]; then
    cid="$("$JAVA" "${jvm[@]}" kafka.tools.StorageTool random-uuid 2>>"$KAFKA_OUT" | tail -n1)"
    [[ -n "$cid" ]] || die "kafka: could not make a cluster id (see $KAFKA_OUT)"
    say "kafka: formatting $KAFKA_DATA (cluster id $cid)"
    if ! "$JAVA" "${jvm[@]}" kafka.tools.StorageTool format --standalone -t "$cid" -c "$KAFKA_CONF" \
      >>"$KAFKA_OUT" 2>&1; then
      show_log "$KAFKA_OUT" >&2
      die "kafka: storage format failed (log: $KAFKA_OUT)"
    fi
    echo "$HOST:$CONTROLLER_PORT" >"$KAFKA_DIR/formatted-controller"
  fi
  # The standalone format records the controller's address in the metadata log.
  if [[ -f "$KAFKA_DIR/formatted-controller" &&
    "$(cat "$KAFKA_DIR/formatted-controller")" != "$HOST:$CONTROLLER_PORT" ]]; then
    die "kafka: data in $KAFKA_DATA was formatted for controller $(cat "$KAFKA_DIR/formatted-controller"), not $HOST:$CONTROLLER_PORT; run 'bash stack/stack.sh reset' (wipes topics)"
  fi

  echo "=== stack.sh up $(date -u +%FT%TZ) ===" >>"$KAFKA_OUT"
  # shellcheck disable=SC2086  # heap opts are deliberately word-split
  launch "$KAFKA_PID" "$KAFKA_OUT" "$JAVA" $KAFKA_HEAP_OPTS \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError \
    "${jvm[@]}" kafka.Kafka "$KAFKA_CONF"
  say "kafka: started (pid $(cat "$KAFKA_PID")) on $HOST:$KAFKA_PORT, log $KAFKA_LOG"
}

start_ferretdb() {
  local pid
  pid="$(main_pid "$FDB_PID" "$FDB_MARK")"
  # A rebuild replaces the binary file; a process still running the old one
  # shows "(deleted)" after its exe link. Restart it (takes a second).
  if [[ -n "$pid" && "$(readlink "/proc/$pid/exe" 2>/dev/null)" == *" (deleted)" ]]; then
    say "ferretdb: pid $pid runs an older build of $FDB_BIN; restarting it"
    stop_service ferretdb "$FDB_PID" "$FDB_MARK"
    pid=""
  fi
  if [[ -n "$pid" ]]; then
    echo "$pid" >"$FDB_PID"
    say "ferretdb: already running (pid $pid) on $HOST:$MONGO_PORT"
    return 0
  fi
  check_port_free ferretdb "$MONGO_PORT"
  mkdir -p "$FDB_DATA" "$LOG_DIR" "$RUN_DIR"
  echo "=== stack.sh up $(date -u +%FT%TZ) ===" >>"$FDB_LOG"
  launch "$FDB_PID" "$FDB_LOG" "$FDB_BIN" -listen-addr "$HOST:$MONGO_PORT" -sqlite-dir "$FDB_DATA"
  say "ferretdb: started (pid $(cat "$FDB_PID")) on $HOST:$MONGO_PORT, log $FDB_LOG"
}

# ---------------------------------------------------------------- readiness

PROBE_PY=""
find_probe_python() {
  local c
  for c in "${STACK_PYTHON:-}" "${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}" \
    "$REPO_DIR/.venv/bin/python" python3; do
    [[ -n "$c" ]] || continue
    command -v "$c" >/dev/null 2>&1 || continue
    if "$c" -c 'import confluent_kafka' >/dev/null 2>&1; then
      PROBE_PY="$c"
      return 0
    fi
  done
  return 1
}

# One metadata request through librdkafka; exit 0 if the broker lists itself.
kafka_metadata_py() {
  timeout 10 "$PROBE_PY" - "$HOST:$KAFKA_PORT" <<'EOF' >/dev/null 2>&1
import sys
from confluent_kafka.admin import AdminClient
md = AdminClient({"bootstrap.servers": sys.argv[1], "log_level": 0}).list_topics(timeout=5)
sys.exit(0 if md.brokers else 1)
EOF
}

# Same through Kafka's own Java client (no Python needed); waits up to $1 s.
kafka_metadata_java() {
  timeout $(($1 + 15)) "$JAVA" -Xmx128m -Dlog4j2.level=OFF -cp "$LIBS/*" \
    "$STACK_DIR/kafka/KafkaProbe.java" "$HOST:$KAFKA_PORT" "$1" >/dev/null 2>>"$LOG_DIR/kafka-probe.log"
}

fail_start() { # name why log...
  local name="$1" why="$2" f
  shift 2
  {
    printf 'stack: ERROR: %s did not become ready: %s\n' "$name" "$why"
    for f in "$@"; do
      echo "stack: log: $f"
      show_log "$f" 20
    done
  } >&2
  if [[ "$name" == kafka ]]; then
    stop_service kafka "$KAFKA_PID" "$KAFKA_MARK" >&2
  else
    stop_service ferretdb "$FDB_PID" "$FDB_MARK" >&2
  fi
  exit 1
}

wait_ready() {
  local deadline=$((SECONDS + TIMEOUT)) kafka_port=0 kafka_meta=0 fdb=0 probe=port
  if find_probe_python; then probe=python; else probe=java; fi
  while :; do
    if ((fdb == 0)); then
      [[ -n "$(main_pid "$FDB_PID" "$FDB_MARK")" ]] || fail_start ferretdb "the process exited" "$FDB_LOG"
      if port_open "$HOST" "$MONGO_PORT"; then fdb=1; fi
    fi
    if ((kafka_meta == 0)); then
      [[ -n "$(main_pid "$KAFKA_PID" "$KAFKA_MARK")" ]] ||
        fail_start kafka "the process exited" "$KAFKA_LOG" "$KAFKA_OUT"
      if ((kafka_port == 0)) && port_open "$HOST" "$KAFKA_PORT"; then kafka_port=1; fi
      if ((kafka_port == 1)); then
        if [[ "$probe" == python ]]; then
          if kafka_metadata_py; then kafka_meta=1; fi
        else
          local left=$((deadline - SECONDS))
          ((left > 0)) || left=1
          if kafka_metadata_java "$left"; then kafka_meta=1; fi
        fi
      fi
    fi
    ((fdb == 1 && kafka_meta == 1)) && break
    if ((SECONDS >= deadline)); then
      if ((fdb == 0)); then
        fail_start ferretdb "port $HOST:$MONGO_PORT not open after ${TIMEOUT}s" "$FDB_LOG"
      fi
      if ((kafka_port == 0)); then
        fail_start kafka "port $HOST:$KAFKA_PORT not open after ${TIMEOUT}s" "$KAFKA_LOG" "$KAFKA_OUT"
      fi
      fail_start kafka "no answer to a metadata request ($probe probe) after ${TIMEOUT}s" "$KAFKA_LOG" "$KAFKA_OUT"
    fi
    sleep 0.5
  done
  say "ready: kafka $HOST:$KAFKA_PORT (metadata ok, $probe probe), mongodb://$HOST:$MONGO_PORT (FerretDB)"
}

# ---------------------------------------------------------------- stop

stop_service() { # name pidfile mark
  local name="$1" pidfile="$2" mark="$3" pids p i left=""
  pids="$(find_pids "$pidfile" "$mark")"
  if [[ -z "$pids" ]]; then
    rm -f "$pidfile"
    say "$name: not running"
    return 0
  fi
  say "$name: stopping (pid $pids)"
  for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
  left=" $pids"
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    left=""
    for p in $pids; do pid_is_ours "$p" "$mark" && left+=" $p"; done
    [[ -z "$left" ]] && break
    sleep 0.1
  done
  if [[ -n "$left" ]]; then
    warn "$name: still running after ${STOP_TIMEOUT}s, sending SIGKILL to$left"
    for p in $left; do
      kill -KILL -- "-$p" 2>/dev/null || true # its process group (setsid made it a leader)
      kill -KILL "$p" 2>/dev/null || true
    done
    for ((i = 0; i < 50; i++)); do
      left=""
      for p in $pids; do pid_is_ours "$p" "$mark" && left+=" $p"; done
      [[ -z "$left" ]] && break
      sleep 0.1
    done
    [[ -z "$left" ]] || die "$name: could not stop pid$left"
  fi
  # The process is dead; give its parent (init) up to 3 s to reap the zombie,
  # so that `pgrep` right after `down` shows nothing.
  for ((i = 0; i < 30; i++)); do
    left=""
    for p in $pids; do [[ -e "/proc/$p" ]] && left+=" $p"; done
    [[ -z "$left" ]] && break
    sleep 0.1
  done
  rm -f "$pidfile"
  say "$name: stopped"
}

wipe_state() {
  [[ -n "$STATE" && "$STATE" != / && "$STATE" != "$HOME_DIR" ]] || die "refusing to wipe STATE=$STATE"
  rm -rf "$KAFKA_DIR" "$FDB_DATA" "$LOG_DIR" "$RUN_DIR"
  say "wiped runtime state in $STATE (topics, databases, logs)"
}

# ---------------------------------------------------------------- commands

cmd_build() {
  take_lock
  ensure_kafka_libs
  ensure_ferretdb_bin
  say "cache ready: $LIBS, $FDB_BIN"
}

cmd_up() {
  take_lock
  if [[ "${STACK_FRESH:-0}" == 1 ]]; then
    stop_service kafka "$KAFKA_PID" "$KAFKA_MARK"
    stop_service ferretdb "$FDB_PID" "$FDB_MARK"
    wipe_state
  fi
  ensure_kafka_libs
  ensure_ferretdb_bin
  # Check every port before starting anything, so a clash starts nothing.
  if [[ -z "$(main_pid "$FDB_PID" "$FDB_MARK")" ]]; then check_port_free ferretdb "$MONGO_PORT"; fi
  if [[ -z "$(main_pid "$KAFKA_PID" "$KAFKA_MARK")" ]]; then
    check_port_free kafka "$KAFKA_PORT"
    check_port_free kafka-controller "$CONTROLLER_PORT"
  fi
  start_ferretdb
  start_kafka
  wait_ready
}

cmd_down() {
  take_lock
  stop_service kafka "$KAFKA_PID" "$KAFKA_MARK"
  stop_service ferretdb "$FDB_PID" "$FDB_MARK"
}

cmd_reset() {
  cmd_down
  wipe_state
}

status_line() { # name pidfile mark port log
  local name="$1" pidfile="$2" mark="$3" port="$4" log="$5" pid
  pid="$(main_pid "$pidfile" "$mark")"
  if [[ -n "$pid" ]] && port_open "$HOST" "$port"; then
    printf '%-9s up        pid %-7s %s:%-5s log %s\n' "$name" "$pid" "$HOST" "$port" "$log"
    return 0
  elif [[ -n "$pid" ]]; then
    printf '%-9s starting  pid %-7s %s:%-5s (port not open yet) log %s\n' "$name" "$pid" "$HOST" "$port" "$log"
  elif port_open "$HOST" "$port"; then
    printf '%-9s down      port %s:%s is used by another process %s\n' "$name" "$HOST" "$port" "$(port_owner "$port")"
  else
    printf '%-9s down      %s:%-5s log %s\n' "$name" "$HOST" "$port" "$log"
  fi
  return 1
}

cmd_status() {
  local rc=0
  status_line kafka "$KAFKA_PID" "$KAFKA_MARK" "$KAFKA_PORT" "$KAFKA_LOG" || rc=1
  status_line ferretdb "$FDB_PID" "$FDB_MARK" "$MONGO_PORT" "$FDB_LOG" || rc=1
  echo "state: $STATE   cache: $CACHE"
  return "$rc"
}

cmd_logs() {
  case "${1:-all}" in
  kafka) show_log "$KAFKA_LOG" 50; show_log "$KAFKA_OUT" 20 ;;
  ferretdb | mongo) show_log "$FDB_LOG" 50 ;;
  all) show_log "$KAFKA_LOG" 30; show_log "$KAFKA_OUT" 10; show_log "$FDB_LOG" 30 ;;
  *) die "logs: unknown service '$1' (kafka, ferretdb)" ;;
  esac
}

# Sourced (tests): define the functions only.
[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0

case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
reset) cmd_reset ;;
build) cmd_build ;;
pin-kafka-jars) cmd_pin_kafka_jars ;;
logs) shift; cmd_logs "$@" ;;
-h | --help | help) usage ;;
*) usage >&2; exit 2 ;;
esac
