#!/usr/bin/env bash
# PgBouncer in transaction mode in front of the compose network's PostgreSQL, configured from the
# environment: POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, and PGBOUNCER_POOL_SIZE (server
# connections it opens at most, default 20; keep it under PostgreSQL's max_connections, 100 by default,
# minus what the dashboard and other clients hold). Clients log in with the same user and password.
set -euo pipefail
dir=/tmp/pgbouncer
mkdir -p "$dir" && chmod 700 "$dir"
pool="${PGBOUNCER_POOL_SIZE:-20}"
printf '"%s" "%s"\n' "$POSTGRES_USER" "$POSTGRES_PASSWORD" > "$dir/userlist.txt"
cat > "$dir/pgbouncer.ini" <<INI
[databases]
${POSTGRES_DB} = host=${POSTGRES_HOST:-postgres} port=5432 dbname=${POSTGRES_DB}
[pgbouncer]
listen_addr = 0.0.0.0
listen_port = 6432
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = ${pool}
max_db_connections = ${pool}
max_client_conn = ${PGBOUNCER_MAX_CLIENTS:-2000}
server_reset_query =
ignore_startup_parameters = extra_float_digits
INI
exec pgbouncer "$dir/pgbouncer.ini"
