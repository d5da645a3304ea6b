#!/bin/sh
# The image's entrypoint: PGPASSWORD from the file in PGPASSWORD_FILE, then the command.
#
# Docker Compose hands the database password over as a secrets file
# (/run/secrets/postgres_password), so it is in no container's configuration and
# `docker inspect` shows none. libpq (psycopg, under tunetrack, `mlflow server` and
# optuna-dashboard alike) reads a password from PGPASSWORD, not from a file holding only the
# password, so this sets it for the one process it starts. Trailing newlines are dropped, as
# the postgres image does for POSTGRES_PASSWORD_FILE: both read the same file.
# Without PGPASSWORD_FILE (Kubernetes, `docker run`) it only runs the command.
set -eu
if [ -n "${PGPASSWORD_FILE:-}" ]; then
  PGPASSWORD="$(cat "$PGPASSWORD_FILE")"
  export PGPASSWORD
  unset PGPASSWORD_FILE
fi
exec "$@"
