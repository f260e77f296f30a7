#!/bin/sh
# The demo service's endpoints; VERSION and MODE were fixed at build time in /etc/demo.conf.
. /etc/demo.conf

reply() {  # reply STATUS CONTENT-TYPE BODY
  # Count what was answered for /metrics (not the scrapes themselves).
  [ "$PATH_INFO" = /metrics ] || echo "${1%% *}" >>/tmp/demo-requests 2>/dev/null
  printf 'Status: %s\r\nContent-Type: %s\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' \
    "$1" "$2" "${#3}" "$3"
}

# slow: every answer takes 0.25 s longer (the other modes answer in a few ms).
[ "$MODE" = slow ] && sleep 0.25
# log-errors: each request writes an error line of a pattern the other modes never write,
# to PID 1's stdout so that `docker logs` shows it.
if [ "$MODE" = log-errors ] && [ "$PATH_INFO" != /metrics ]; then
  echo "ERROR payment provider rejected order $RANDOM: signature mismatch" >/proc/1/fd/1 2>/dev/null
fi

database=ok
cache=ok
[ "$MODE" = unhealthy ] && database=down
[ "$MODE" = degraded ] && cache=down

case "$PATH_INFO" in
  /health)
    if [ "$MODE" = unhealthy ]; then
      reply "500 Internal Server Error" text/plain "database unreachable"
    else
      reply "200 OK" text/plain ok
    fi
    ;;
  /health/detailed)
    status=ok code="200 OK"
    [ "$MODE" = unhealthy ] && status=down code="503 Service Unavailable"
    reply "$code" application/json \
      "{\"status\":\"$status\",\"version\":\"$VERSION\",\"components\":{\"database\":\"$database\",\"cache\":\"$cache\"}}"
    ;;
  /version)
    reply "200 OK" text/plain "$VERSION"
    ;;
  /api/ping)
    if [ "$MODE" = smoke-broken ]; then
      reply "500 Internal Server Error" text/plain "ping handler crashed"
    else
      reply "200 OK" text/plain pong
    fi
    ;;
  /api/integrity)
    if [ "$MODE" = integrity-broken ]; then
      reply "200 OK" text/plain "corrupt: 3 orders without a customer"
    else
      reply "200 OK" text/plain ok
    fi
    ;;
  /metrics)
    body="# HELP http_requests_total Requests answered, by status code.
# TYPE http_requests_total counter"
    for code in 200 404 500 503; do
      n=$(grep -c "^$code\$" /tmp/demo-requests 2>/dev/null)
      body="$body
http_requests_total{code=\"$code\"} ${n:-0}"
    done
    reply "200 OK" "text/plain; version=0.0.4" "$body
"
    ;;
  /api/greeting)
    if [ -n "${GREETING+set}" ]; then
      reply "200 OK" text/plain "$GREETING"
    else
      reply "404 Not Found" text/plain "GREETING is not set"
    fi
    ;;
  *)
    reply "404 Not Found" text/plain "no such endpoint: $PATH_INFO"
    ;;
esac
