#!/bin/sh
# The compose stack's one-shot set-up, run in the stadtpuls image before the broker,
# Grafana and the service start. Everything it writes follows from the registry and the
# secrets, so it runs again at every `docker compose up` and picks up registry changes.
set -eu

# No default passwords: every secret must be set, and not to a placeholder.
for name in grafana_admin_password influxdb_admin_password influxdb_admin_token mqtt_master_secret stadtpuls_admin_token; do
  value=$(cat "/run/secrets/$name" 2>/dev/null || true)
  case "$(printf '%s' "$value" | tr '[:upper:]' '[:lower:]')" in
    ""|changeme|change-me|secret|password|token|xxx|todo)
      echo "stack-init: the secret $name is empty or a placeholder: set it in .env" >&2
      exit 2 ;;
  esac
done

stadtpuls broker-auth write --registry /etc/stadtpuls/registry.yaml \
  --master-secret-file /run/secrets/mqtt_master_secret \
  --out /broker-auth --credentials /mqtt-credentials
# Mosquitto runs as uid 1883 in its image, the service as 10001 in ours.
chown -R 1883:1883 /broker-auth
chown -R 10001:10001 /mqtt-credentials

stadtpuls dashboards build --registry /etc/stadtpuls/registry.yaml \
  --influx-url http://influxdb:8086 --prometheus-url http://prometheus:9090 \
  --out /grafana-build
chmod -R a+rX /grafana-build

# InfluxDB's first-start script runs as the image's influxdb user (uid 1000) and writes
# each scoped token into its own directory, which only its one consumer mounts.
mkdir -p /influx-tokens/stadtpuls /influx-tokens/grafana
chown 1000:1000 /influx-tokens/stadtpuls /influx-tokens/grafana
