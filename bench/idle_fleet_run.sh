#!/bin/bash
# One idle-fleet run (docs/benchmarks.md, "Idle fleet"):
#   bench/idle_fleet_run.sh <API source tree> <sqlite|postgresql> <port> <work dir> [args]
# starts one minicloud-api from the tree on a fresh database, runs bench.idle_fleet from this
# tree against it (HOSTS, SERVERS, SETTLE, WINDOW from the environment; 1000, 10000, 60 and
# 60 by default; PYSPY=<file> also samples the API with py-spy over the window; further
# args go to bench.idle_fleet, e.g. --heartbeat 30), stops it.
set -u
TREE=$1; DB=$2; PORT=$3; DIR=$4
PY=${PY:-python}
BENCH=$(cd "$(dirname "$0")/.." && pwd)
TOKEN=mcac_bench-admin-token-0123456789abcdef
rm -rf "$DIR"; mkdir -p "$DIR/data"
if [ "$DB" = sqlite ]; then URL=sqlite:///$DIR/mc.db; else
  NAME=bench_idle_$PORT
  PG=${PG:-postgresql+psycopg://minicloud:minicloud@127.0.0.1}
  $PY -c "
from sqlalchemy import create_engine, text
e = create_engine('$PG/postgres', isolation_level='AUTOCOMMIT')
with e.connect() as c:
    c.execute(text('DROP DATABASE IF EXISTS \"$NAME\" WITH (FORCE)'))
    c.execute(text('CREATE DATABASE \"$NAME\"'))"
  URL=$PG/$NAME; fi
(cd "$TREE" && MINICLOUD_DATABASE_URL=$URL MINICLOUD_DATA_DIR=$DIR/data \
  MINICLOUD_LOG_LEVEL=WARNING MINICLOUD_BOOTSTRAP_ADMIN_TOKEN=$TOKEN PYTHONPATH=$TREE \
  exec $PY -c "from api.server import run; run()" --host 127.0.0.1 --port "$PORT" \
  > "$DIR/api.log" 2>&1) &
PID=$!
for _ in $(seq 120); do curl -sf "127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 1; done
echo "== $TREE $DB $(date -u +%FT%TZ)"
(cd "$BENCH" && PYTHONPATH=$BENCH $PY -m bench.idle_fleet --api "http://127.0.0.1:$PORT" \
  --database-url "$URL" --admin-token $TOKEN --hosts "${HOSTS:-1000}" \
  --servers "${SERVERS:-10000}" --settle "${SETTLE:-60}" --window "${WINDOW:-60}" --measure-pid $PID \
  ${PYSPY:+--py-spy "$PYSPY"} "${@:5}")
kill $PID; wait $PID 2>/dev/null
