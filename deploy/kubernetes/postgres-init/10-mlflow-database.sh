#!/bin/sh
# Runs once, when the postgres volume is first initialised: a second database for MLflow.
# Optuna and MLflow both keep an `alembic_version` table, so they cannot share a database.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -c "CREATE DATABASE \"${MLFLOW_DB:-mlflow}\";"
