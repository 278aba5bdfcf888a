#!/bin/bash
# PostgreSQL 15 test server (primary or streaming replica).
#
# Environment:
#   POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB   default opsdb/opsdb/opsdb
#   POSTGRES_HOST_AUTH_METHOD   pg_hba method for TCP clients, default trust
#                               (md5 or scram-sha-256 to enforce the password)
#   PRIMARY_HOST [PRIMARY_PORT=5432]   replica mode: on an empty data dir,
#                               clone the primary with pg_basebackup -R
#   PRIMARY_SLOT_NAME (or SLOT) physical replication slot to use on the
#                               primary; created there if missing
#   SSL_CERT_PEM / SSL_KEY_PEM  the server's certificate and key (PEM): TLS on,
#                               plain connections still accepted
#
# Prints "OPSDB-POSTGRES-READY" once the final server accepts connections.
set -euo pipefail

: "${PGDATA:=/var/lib/postgresql/data}"
POSTGRES_USER=${POSTGRES_USER:-opsdb}
POSTGRES_PASSWORD=${POSTGRES_PASSWORD:-opsdb}
POSTGRES_DB=${POSTGRES_DB:-opsdb}
AUTH=${POSTGRES_HOST_AUTH_METHOD:-trust}
PRIMARY_HOST=${PRIMARY_HOST:-}
PRIMARY_PORT=${PRIMARY_PORT:-5432}
SLOT=${PRIMARY_SLOT_NAME:-${SLOT:-}}
export PGDATA HOME=/var/lib/postgresql

# Started as root: fix ownership (e.g. of a mounted volume), then re-exec as
# postgres. setpriv execs in place (no lingering parent, unlike su/runuser).
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /run/postgresql
  chown postgres:postgres "$PGDATA" /run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

log() { echo "opsdb-entrypoint: $*"; }

init_primary() {
  log "initdb in $PGDATA"
  initdb -D "$PGDATA" -U postgres --encoding=UTF8 --locale=C.UTF-8 \
         --auth-local=trust --auth-host="$AUTH" >/dev/null
  cat >> "$PGDATA/postgresql.conf" <<CONF

# opsdb test settings
listen_addresses = '*'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
CONF
  # Test only: any TCP client, including replication connections.
  cat >> "$PGDATA/pg_hba.conf" <<HBA
host all         all all $AUTH
host replication all all $AUTH
HBA

  # Temporary socket-only server to create the role and database.
  pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start >/dev/null
  psql -v ON_ERROR_STOP=1 -q -U postgres -d postgres \
       -v user="$POSTGRES_USER" -v pass="$POSTGRES_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE %I', :'user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'user') \gexec
ALTER ROLE :"user" WITH LOGIN SUPERUSER REPLICATION PASSWORD :'pass';
SQL
  if [ "$POSTGRES_DB" != postgres ]; then
    psql -v ON_ERROR_STOP=1 -q -U postgres -d postgres \
         -c "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\""
  fi
  pg_ctl -D "$PGDATA" -w -m fast stop >/dev/null
}

init_replica() {
  export PGPASSWORD=$POSTGRES_PASSWORD
  local conn=(-h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U "$POSTGRES_USER")
  log "waiting for primary $PRIMARY_HOST:$PRIMARY_PORT"
  for _ in $(seq 120); do
    pg_isready -q "${conn[@]}" -d "$POSTGRES_DB" && break
    sleep 0.5
  done
  local slot_args=()
  if [ -n "$SLOT" ]; then
    slot_args=(-S "$SLOT")
    # -C fails if the slot exists (e.g. a re-created replica), so check first.
    exists=$(psql -Atq "${conn[@]}" -d "$POSTGRES_DB" \
             -c "SELECT 1 FROM pg_replication_slots WHERE slot_name = '$SLOT'")
    [ "$exists" = 1 ] || slot_args+=(-C)
  fi
  log "pg_basebackup from $PRIMARY_HOST:$PRIMARY_PORT ${slot_args[*]}"
  # -R writes standby.signal and primary_conninfo (+ primary_slot_name).
  pg_basebackup "${conn[@]}" -D "$PGDATA" -R -X stream --checkpoint=fast "${slot_args[@]}"
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -n "$PRIMARY_HOST" ]; then init_replica; else init_primary; fi
fi

# Announce readiness from a background child. It survives the exec below and
# must always exit 0: the postmaster (PID 1) reaps it, and a non-zero status
# from an unknown child would be treated as a crashed backend.
(
  until pg_isready -q -h /run/postgresql -p 5432 2>/dev/null; do sleep 0.2; done
  echo "OPSDB-POSTGRES-READY"
) || true &

ssl_args=()
if [ -n "${SSL_CERT_PEM:-}" ]; then
  mkdir -p "$HOME/ssl"
  printf '%s\n' "$SSL_CERT_PEM" > "$HOME/ssl/server.crt"
  # PostgreSQL refuses a key file others can read.
  (umask 077 && printf '%s\n' "${SSL_KEY_PEM:?SSL_KEY_PEM is required with SSL_CERT_PEM}" > "$HOME/ssl/server.key")
  ssl_args=(-c ssl=on -c "ssl_cert_file=$HOME/ssl/server.crt" -c "ssl_key_file=$HOME/ssl/server.key")
fi

exec postgres -D "$PGDATA" "${ssl_args[@]}" "$@"
