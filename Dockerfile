# The Stadtpuls service: `docker build -t stadtpuls .`; used by docker-compose.yml for the
# service, the simulator and the stack's set-up step.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PATH=/app/.venv/bin:$PATH

RUN pip install --no-cache-dir uv
WORKDIR /app

# Dependencies first, from the lock alone, so a code change does not reinstall them.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project

COPY devices ./devices
COPY ingest ./ingest
COPY alerts ./alerts
COPY dashboards ./dashboards
COPY export ./export
COPY stadtpuls ./stadtpuls
RUN uv sync --frozen --no-dev

# A fixed uid: the stack's set-up step gives this uid the files the service must read.
RUN useradd --system --uid 10001 --home-dir /var/lib/stadtpuls stadtpuls \
    && mkdir -p /var/lib/stadtpuls \
    && chown stadtpuls:stadtpuls /var/lib/stadtpuls
USER stadtpuls
VOLUME /var/lib/stadtpuls
EXPOSE 8080

ENTRYPOINT ["stadtpuls"]
CMD ["run", "--config", "/etc/stadtpuls/stadtpuls.yaml"]
