#!/bin/bash
# One large-fleet run (bench/fleet_10k.py):
#   bench/fleet_10k_run.sh <API source tree> <first port> <work dir> [args]
# makes a fresh PostgreSQL database, starts APIS (default 2) minicloud-api processes from the
# tree on ports <first port>, +1, ..., runs bench.fleet_10k from this tree against them
# (HOSTS, SERVERS, SETTLE, WINDOW, HEARTBEAT, WAIT from the environment; 10000, 100000, 60,
# 600, 30 and 30 by default; further args go to bench.fleet_10k, e.g. --create-rate 2), stops
# them and prints their logs' errors. The API processes are told the heartbeat interval and
# call a host down after DOWN_AFTER seconds of silence (default: four intervals, at least
# 60 s), so a host heartbeating every HEARTBEAT seconds is always up on their fast path.
set -u
TREE=$1; PORT=$2; DIR=$3
PY=${PY:-python}
APIS=${APIS:-2}
HB=${HEARTBEAT:-30}
DOWN_AFTER=${DOWN_AFTER:-$(( ${HB%.*} * 4 > 60 ? ${HB%.*} * 4 : 60 ))}
BENCH=$(cd "$(dirname "$0")/.." && pwd)
TOKEN=mcac_bench-admin-token-0123456789abcdef
rm -rf "$DIR"; mkdir -p "$DIR/data"
NAME=bench_fleet_$PORT
PG=${PG:-postgresql+psycopg://minicloud:minicloud@127.0.0.1}
$PY -c "
from sqlalchemy import create_engine, text
e = create_engine('$PG/postgres', isolation_level='AUTOCOMMIT')
with e.connect() as c:
    c.execute(text('DROP DATABASE IF EXISTS \"$NAME\" WITH (FORCE)'))
    c.execute(text('CREATE DATABASE \"$NAME\"'))"
URL=$PG/$NAME
PIDS=(); APIARGS=(); MEASURE=()
trap 'kill "${PIDS[@]}" 2>/dev/null' EXIT  # the API processes never outlive the run
for i in $(seq 0 $((APIS - 1))); do
  P=$((PORT + i))
  # The first process migrates the fresh database; the others start on it afterwards.
  (cd "$TREE" && MINICLOUD_DATABASE_URL=$URL MINICLOUD_DATA_DIR=$DIR/data \
    MINICLOUD_LOG_LEVEL=WARNING MINICLOUD_BOOTSTRAP_ADMIN_TOKEN=$TOKEN PYTHONPATH=$TREE \
    MINICLOUD_HEARTBEAT_INTERVAL_SECONDS=${HB%.*} MINICLOUD_HOST_DOWN_AFTER_SECONDS=$DOWN_AFTER \
    exec $PY -c "from api.server import run; run()" --host 127.0.0.1 --port "$P" \
    $([ "$i" -gt 0 ] && echo --no-migrate) > "$DIR/api-$P.log" 2>&1) &
  PIDS+=($!); APIARGS+=(--api "http://127.0.0.1:$P"); MEASURE+=(--measure-pid $!)
  for _ in $(seq 120); do curl -sf "127.0.0.1:$P/healthz" >/dev/null && break; sleep 1; done
done
echo "== $TREE $APIS API processes, PostgreSQL $NAME, heartbeat ${HB} s, down after" \
  "${DOWN_AFTER} s, $(date -u +%FT%TZ)"
echo "open files: soft $(ulimit -Sn), hard $(ulimit -Hn);" \
  "$(grep 'Max open files' /proc/${PIDS[0]}/limits)"
(cd "$BENCH" && PYTHONPATH=$BENCH $PY -m bench.fleet_10k "${APIARGS[@]}" "${MEASURE[@]}" \
  --database-url "$URL" --admin-token $TOKEN --hosts "${HOSTS:-10000}" \
  --servers "${SERVERS:-100000}" --settle "${SETTLE:-60}" --window "${WINDOW:-600}" \
  --heartbeat "$HB" --long-poll-wait "${WAIT:-30}" "${@:4}")
RC=$?
for P in "${PIDS[@]}"; do kill "$P"; done
for P in "${PIDS[@]}"; do wait "$P" 2>/dev/null; done
grep -h -m 20 -E "ERROR|Traceback|Too many open files" "$DIR"/api-*.log
exit $RC
