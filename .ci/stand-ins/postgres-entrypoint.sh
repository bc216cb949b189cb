#!/usr/bin/env bash
# CI only, never shipped: the part of the upstream postgres image's entrypoint that docker/compose.yaml relies on.
# On an empty data folder: initdb with POSTGRES_USER as superuser and POSTGRES_PASSWORD, then create POSTGRES_DB.
# Then run the server as the postgres user, as PID 1, so `docker compose down` stops it cleanly.
set -euo pipefail

: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
user=${POSTGRES_USER:-postgres}
database=${POSTGRES_DB:-$user}
as_postgres=(setpriv --reuid=postgres --regid=postgres --init-groups)

mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"

if [[ ! -s $PGDATA/PG_VERSION ]]; then
    echo "postgres stand-in: initialising $PGDATA for user $user, database $database"
    password_file=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$password_file"
    chown postgres "$password_file"
    "${as_postgres[@]}" initdb --username="$user" --pwfile="$password_file" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 -D "$PGDATA" >/dev/null
    rm -f "$password_file"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    if [[ $database != postgres ]]; then
        "${as_postgres[@]}" pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
        "${as_postgres[@]}" psql --username="$user" --dbname=postgres --quiet \
            --command="CREATE DATABASE \"$database\" OWNER \"$user\""
        "${as_postgres[@]}" pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    fi
fi

if [[ ${1:-} == postgres ]]; then
    shift
    exec "${as_postgres[@]}" postgres -D "$PGDATA" "$@"
fi
exec "$@"
