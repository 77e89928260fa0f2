#!/usr/bin/env bash
# The presence demo (`make demo`): simulate 30 minutes of pings for 2,000
# drivers in 10 cities, run the dataflow in bounded mode with 2 workers and the
# segments city;city,vehicle_type;h3:8, print the report, a per-city report,
# draw the charts, write the zone map and say how to open the dashboard.
#
# Repeatable: it uses its own topic (deleted and recreated), its own database
# (dropped first) and a fresh recovery directory under demo-output/, so a
# second run gives the same rows instead of doubling them. It expects the
# local stack to be up (`make stack-up`; `make demo` does that first) and
# leaves it running (`make stack-down` stops it).
#
# Environment (optional): DEMO_DRIVERS (2000), DEMO_MINUTES (30),
# DEMO_SEED (42), DEMO_WORKERS (2), DEMO_OUT (demo-output), DEMO_START
# (ISO-8601 or epoch; default: the last DEMO_MINUTES minutes), DEMO_TOPIC
# (demo-pings), DEMO_DB (presence_demo), DEMO_CITY (Hong Kong: the per-city
# report and chart), DEMO_SEGMENTS (city;city,vehicle_type;h3:8; empty: no
# segments), and the usual PRESENCE_KAFKA_BROKERS / PRESENCE_MONGO_URI.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=.venv/bin/python
PRESENCE=.venv/bin/presence
OUT="${DEMO_OUT:-demo-output}"
DRIVERS="${DEMO_DRIVERS:-2000}"
MINUTES="${DEMO_MINUTES:-30}"
SEED="${DEMO_SEED:-42}"
WORKERS="${DEMO_WORKERS:-2}"
CITY="${DEMO_CITY:-Hong Kong}"

# Event time of the first simulated instant, epoch seconds (default: the last $MINUTES
# minutes, as `presence simulate --fast` chooses it).
START=$(.venv/bin/python -c '
import sys
from presence.tools.reports import parse_time
from presence.tools.simulate import default_start
given, minutes = sys.argv[1], float(sys.argv[2])
print(int(parse_time(given) if given else default_start(True, minutes)))
' "${DEMO_START:-}" "$MINUTES")

export PRESENCE_TOPIC="${DEMO_TOPIC:-demo-pings}"
export PRESENCE_MONGO_DB="${DEMO_DB:-presence_demo}"
export PRESENCE_LOG_ROWS="${PRESENCE_LOG_ROWS:-0}"
export PRESENCE_SEGMENTS="${DEMO_SEGMENTS-city;city,vehicle_type;h3:8}"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
began=$(date +%s)

[[ -x "$PRESENCE" ]] || { echo "demo: run 'make install' first" >&2; exit 1; }

step "Fresh start: database $PRESENCE_MONGO_DB dropped, recovery directory $OUT/recovery reset"
"$PY" - <<'EOF'
import os, sys
from pymongo import MongoClient
from pymongo.errors import PyMongoError
from presence.settings import load_settings
s = load_settings()
try:
    MongoClient(s.mongo_uri, serverSelectionTimeoutMS=5000).drop_database(s.mongo_db)
except PyMongoError as exc:
    sys.exit(f"demo: MongoDB unreachable ({type(exc).__name__}); is the stack up? (make stack-up)")
EOF
"$PRESENCE" recovery reset --partitions 4 "$OUT/recovery" >/dev/null

step "Simulating $MINUTES minutes of pings for $DRIVERS drivers in 10 cities (topic $PRESENCE_TOPIC recreated)"
"$PRESENCE" simulate --fast --recreate-topic --partitions 4 --seed "$SEED" --start "$START" \
  --drivers "$DRIVERS" --minutes "$MINUTES" --late-fraction 0.02 --bad-fraction 0.005

run_dataflow() { # log file
  local log="$1" flow_began
  flow_began=$(date +%s)
  if ! PRESENCE_STOP_AT_END=1 PRESENCE_PROGRESS_SECONDS=5 "$PY" -m bytewax.run dataflow \
       -w "$WORKERS" -r "$OUT/recovery" -s 5 -b 0 >"$log" 2>&1; then
    echo "demo: the dataflow failed; last lines of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
  grep -E "WARNING|ERROR" "$log" | tail -n 5 || true
  echo "dataflow finished in $(( $(date +%s) - flow_began )) s"
}

step "Running the dataflow, bounded, $WORKERS workers, segments ${PRESENCE_SEGMENTS:-none} (log: $OUT/dataflow.log)"
run_dataflow "$OUT/dataflow.log"

step "Late arrivals: pings of 300 drivers from minutes 10-20, delivered late; the bounded run goes on from its state"
"$PRESENCE" simulate --fast --seed "$(( SEED + 1 ))" --start "$(( START + 600 ))" \
  --drivers 300 --minutes 10 --late-fraction 1 --bad-fraction 0
run_dataflow "$OUT/dataflow-late.log"

step "Report (presence report)"
"$PRESENCE" report

step "Pipeline status"
"$PY" - <<'EOF'
from presence.tools.reports import mongo_client, store_status
from presence.settings import load_settings
s = load_settings()
client = mongo_client(s)
st = store_status(client[s.mongo_db])
t = st["totals"]
print(f"valid {t['valid']:,} | invalid {t['invalid']:,} | corrected late {t['correctedLate']:,}"
      f" | too late {t['tooLate']:,} | rows written {t['rowsWritten']:,} | watermark {st['watermark']}")
print("dead letters by reason: " + ", ".join(f"{k} {v:,}" for k, v in st["deadLetters"]["byReason"].items()))
if "unlocated" in t or t.get("segments"):
    print(f"unlocated {t.get('unlocated', 0):,} | segments: " + "; ".join(
        f"{name} rows {c.get('rowsWritten', 0):,}, other {c.get('otherPings', 0):,}"
        for name, c in (t.get("segments") or {}).items()))
EOF

step "Chart"
"$PRESENCE" plot -o "$OUT/chart.png"

# Segments (PRESENCE_SEGMENTS): a per-city report and chart, and the zone map.
SEGMENT_OUTPUT=""
if [[ -n "$PRESENCE_SEGMENTS" ]]; then
  SEGMENT_OUTPUT=1
  slug=$(tr '[:upper:] ' '[:lower:]-' <<<"$CITY")
  step "Report for one city (presence report --segment \"city=$CITY\")"
  "$PRESENCE" report --segment "city=$CITY"

  step "Chart for one city"
  "$PRESENCE" plot --segment "city=$CITY" -o "$OUT/chart-$slug.png"

  step "Zone map: drivers per H3 cell at resolution 8, latest bucket (GeoJSON and a picture)"
  "$PRESENCE" zones --resolution 8 -o "$OUT/zones.geojson"
  "$PRESENCE" zones --resolution 8 -o "$OUT/zones.png"
fi

cat <<EOF

Done in $(( $(date +%s) - began )) s. The stack is still running.

  Dashboard:  PRESENCE_TOPIC=$PRESENCE_TOPIC PRESENCE_MONGO_DB=$PRESENCE_MONGO_DB .venv/bin/presence serve
              then open http://127.0.0.1:8000/?range=all
  Report:     PRESENCE_MONGO_DB=$PRESENCE_MONGO_DB .venv/bin/presence report --format json
  Chart:      $OUT/chart.png
EOF
if [[ -n "$SEGMENT_OUTPUT" ]]; then
  cat <<EOF
  By city:    PRESENCE_MONGO_DB=$PRESENCE_MONGO_DB .venv/bin/presence report --segment "city=$CITY"
  City chart: $OUT/chart-$slug.png
  Zone map:   $OUT/zones.png, and $OUT/zones.geojson (GeoJSON: any map tool reads it)
EOF
fi
echo "  Stop:       make stack-down"
