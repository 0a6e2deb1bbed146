#!/usr/bin/env bash
# One-command local backup/restore drill (SPEC §6), on the single-node default
# (embedded Postgres from the pgserver wheel, local object store).
#
#   . .venv/bin/activate && bash ops/backup/restore-drill.sh [WORKDIR]
#
# 1. starts `duckmesh serve` on a scratch data dir, creates a table, ingests
#    3 records (waiting for visibility) and queries them;
# 2. backs up: pg_dump of the catalog through the embedded server's Unix
#    socket, THEN a copy of the object store;
# 3. stops that server (by PID);
# 4. restores into a fresh data dir: starts a bare embedded Postgres there,
#    pg_restore, copies the objects back;
# 5. checks: `duckmesh replay verify`, ops/backup/verify_objects.py --checksum,
#    then `duckmesh serve` on the restored dir, the same query, and one more
#    ingest to prove the restored bus/lease state commits;
# 6. stops everything it started, by PID, and leaves WORKDIR for inspection.
#
# Exit status 0 only when every check passed. Docs: docs/OPERATIONS.md#restore-drill
set -euo pipefail

WORK=${1:-$(mktemp -d /tmp/dmdrill.XXXXXX)}
SRC=$WORK/src
DST=$WORK/dst
BACKUP=$WORK/backup
KEY=${DRILL_API_KEY:-drill-$(python -c 'import secrets; print(secrets.token_hex(20))')}
PGBIN=$(python -W ignore -c "import pgserver, pathlib; print(pathlib.Path(pgserver.__file__).parent/'pginstall'/'bin')")
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$BACKUP"

free_port() {
    python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# DSN (with the password from $1/pg-password) of the embedded Postgres running in $1/pg.
embedded_dsn() {
    python -W ignore -c "
import sys
from pathlib import Path
from duckmesh.embedded import running_dsn
dsn = running_dsn(Path(sys.argv[1]))
assert dsn is not None, 'embedded Postgres is not running'
print(dsn)" "$1"
}

postmaster_pid() { [ -f "$1/pg/postmaster.pid" ] && head -1 "$1/pg/postmaster.pid" || true; }

stop_pid() {  # stop_pid PID SIGNAL: signal one process we started and wait for it
    local pid=$1 sig=$2
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill "-$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
    echo "drill: process $pid did not stop after SIG$sig" >&2
}

SERVE_PID=""
DST_PG_PID=""
cleanup() {
    stop_pid "$SERVE_PID" TERM
    # The restored dir's Postgres was started by this script (and only adopted
    # by `duckmesh serve`, which leaves adopted servers running): stop it.
    stop_pid "$DST_PG_PID" INT
    # If the source server died abnormally its embedded Postgres may remain.
    stop_pid "$(postmaster_pid "$SRC")" INT
}
trap cleanup EXIT

start_serve() {  # start_serve DATA_DIR PORT LOG
    DUCKMESH_DATA_DIR=$1 DUCKMESH_HTTP_PORT=$2 DUCKMESH_BOOTSTRAP_API_KEY=$KEY \
        DUCKMESH_LOG_FORMAT=json duckmesh serve >"$3" 2>&1 &
    SERVE_PID=$!
    for _ in $(seq 1 120); do
        curl -fsS "http://127.0.0.1:$2/v1/ready" >/dev/null 2>&1 && return 0
        kill -0 "$SERVE_PID" 2>/dev/null || { cat "$3" >&2; return 1; }
        sleep 0.5
    done
    echo "drill: server on port $2 never became ready" >&2
    return 1
}

api() {  # api PORT METHOD PATH [JSON]
    curl -fsS -X "$2" "http://127.0.0.1:$1$3" -H "Authorization: Bearer $KEY" \
        -H 'Content-Type: application/json' ${4:+-d "$4"}
}

QUERY='{"sql":"select count(*) as n, sum(amount) as total from orders","min_visibility_token":3}'

echo "== 1. source system in $SRC"
PORT=$(free_port)
start_serve "$SRC" "$PORT" "$WORK/src-serve.log"
api "$PORT" POST /v1/tables '{"name":"orders","columns":[{"name":"order_id","type":"BIGINT","nullable":false},{"name":"status","type":"VARCHAR"},{"name":"amount","type":"DOUBLE"}],"primary_key":["order_id"]}' >/dev/null
api "$PORT" POST /v1/ingest/orders '{"records":[{"idempotency_key":"o-1","op":"upsert","payload":{"order_id":1,"status":"new","amount":9.5}},{"idempotency_key":"o-2","op":"upsert","payload":{"order_id":2,"status":"paid","amount":20}},{"idempotency_key":"o-3","op":"upsert","payload":{"order_id":3,"status":"new","amount":1.25}}],"wait_for_visibility":true}'
echo
BEFORE=$(api "$PORT" POST /v1/query "$QUERY")
echo "query before backup: $BEFORE"

echo "== 2. backup: catalog first, then objects"
SRC_DSN=$(embedded_dsn "$SRC")
"$PGBIN/pg_dump" --format=custom --file="$BACKUP/catalog.dump" "$SRC_DSN"
cp -a "$SRC/objects" "$BACKUP/objects"
echo "catalog.dump $(stat -c %s "$BACKUP/catalog.dump") bytes;" \
    "$(find "$BACKUP/objects" -name '*.parquet' | wc -l) parquet file(s) copied"

echo "== 3. stop the source server (pid $SERVE_PID)"
stop_pid "$SERVE_PID" TERM
SERVE_PID=""

echo "== 4. restore into $DST"
DST_DSN=$(python -W ignore -c "
import contextlib, sys
from pathlib import Path
from duckmesh.embedded import EmbeddedPostgres
with contextlib.redirect_stdout(sys.stderr):  # log lines; stdout carries the DSN only
    dsn = EmbeddedPostgres(Path(sys.argv[1])).start()
print(dsn)" "$DST")
DST_PG_PID=$(postmaster_pid "$DST")
"$PGBIN/pg_restore" --exit-on-error --no-owner --dbname="$DST_DSN" "$BACKUP/catalog.dump"
cp -a "$BACKUP/objects" "$DST/objects"
echo "restored catalog and objects (embedded Postgres pid $DST_PG_PID)"

echo "== 5. verify"
DUCKMESH_DATA_DIR=$DST duckmesh migrate status
DUCKMESH_DATA_DIR=$DST duckmesh replay verify 2>/dev/null
DUCKMESH_DATA_DIR=$DST python -W ignore "$HERE/verify_objects.py" --checksum
PORT=$(free_port)
start_serve "$DST" "$PORT" "$WORK/dst-serve.log"
AFTER=$(api "$PORT" POST /v1/query "$QUERY")
echo "query after restore:  $AFTER"
python - "$BEFORE" "$AFTER" <<'EOF'
import json, sys
before, after = (json.loads(a) for a in sys.argv[1:3])
keys = ("rows", "snapshot_id", "max_visibility_token")
assert all(before[k] == after[k] for k in keys), (before, after)
print("same rows, snapshot_id and watermark as before the backup")
EOF
api "$PORT" POST /v1/ingest/orders '{"records":[{"idempotency_key":"o-4","op":"upsert","payload":{"order_id":4,"status":"new","amount":5}}],"wait_for_visibility":true,"visibility_timeout_ms":30000}'
echo
echo "== 6. stop (server pid $SERVE_PID, restored Postgres pid $DST_PG_PID)"
stop_pid "$SERVE_PID" TERM
SERVE_PID=""
stop_pid "$DST_PG_PID" INT
DST_PG_PID=""
echo "restore drill passed; files kept in $WORK"
