#!/bin/bash
# Runs once, at InfluxDB's first start, after the image's setup created the org, the
# bucket and the admin token (DOCKER_INFLUXDB_INIT_*). InfluxDB chooses token values
# itself, so the two scoped tokens are written to files for the containers that need
# them: one directory each, mounted into that container only.
set -euo pipefail
out=/var/lib/stadtpuls-tokens
umask 022

create_token() {  # description, permission flags...
  influx auth create --org "$DOCKER_INFLUXDB_INIT_ORG" --description "$1" "${@:2}" --json \
    | sed -n 's/^[[:space:]]*"token":[[:space:]]*"\([^"]*\)".*/\1/p'
}

write_token() {  # directory name, token
  mkdir -p "$out/$1"
  [ -n "$2" ] || { echo "create-tokens: no token for $1" >&2; exit 1; }
  printf '%s' "$2" > "$out/$1/$1.token.tmp"
  mv "$out/$1/$1.token.tmp" "$out/$1/$1.token"
}

bucket_id="$DOCKER_INFLUXDB_INIT_BUCKET_ID"
# The service writes readings and nothing else; Grafana only reads them.
write_token stadtpuls "$(create_token "stadtpuls service: write $DOCKER_INFLUXDB_INIT_BUCKET" \
  --write-bucket "$bucket_id")"
write_token grafana "$(create_token "grafana: read $DOCKER_INFLUXDB_INIT_BUCKET" \
  --read-bucket "$bucket_id")"
echo "create-tokens: wrote the service's and Grafana's tokens"
