# syntax=docker/dockerfile:1
# Multi-stage build: a static binary (CGO off) on a small image, run as a
# non-root user, with the data directory on a volume.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/aggregator ./cmd/aggregator

FROM alpine:3.22
# wget (busybox) is what the HEALTHCHECK uses.
RUN addgroup -S -g 10001 aggregator \
 && adduser -S -D -H -u 10001 -G aggregator aggregator \
 && mkdir -p /data \
 && chown aggregator:aggregator /data \
 && chmod 0700 /data
COPY --from=build /out/aggregator /usr/local/bin/aggregator
USER aggregator:aggregator
# Tokens and TLS come from secrets mounted as files, never from the image:
#   -e AGG_ADMIN_TOKEN_FILE=/run/secrets/admin_token (and AGG_PUBLISH_TOKEN_FILE,
#   AGG_READ_TOKEN_FILE, AGG_TLS_CERT, AGG_TLS_KEY); see docs/security.md.
#   With TLS on, override the HEALTHCHECK below (it speaks plain HTTP).
ENV AGG_ADDR=:8080 \
    AGG_DATA_DIR=/data \
    AGG_LOG_FORMAT=json
VOLUME ["/data"]
EXPOSE 8080
# The health check probes the port of AGG_ADDR (":8080", "0.0.0.0:9090",
# "[::]:8080"; a wildcard or empty host is probed on 127.0.0.1), so set the
# address through AGG_ADDR, not --addr.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD host="${AGG_ADDR%:*}"; port="${AGG_ADDR##*:}"; \
      case "$host" in ""|0.0.0.0|"[::]") host=127.0.0.1;; esac; \
      wget -q -O /dev/null "http://${host}:${port:-8080}/healthz" || exit 1
# SIGTERM (docker stop) shuts down cleanly: in-flight requests finish, the log
# and the index are closed, exit status 0. docker stop waits 10 s before
# SIGKILL; --shutdown-timeout (default 8s) must stay below it: raise both
# together (docker stop -t 30 with --shutdown-timeout 25s).
# A bind-mounted data directory must belong to uid 10001 (the aggregator
# user): chown 10001:10001 ./data before docker run -v "$PWD/data:/data".
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/aggregator"]
