#!/bin/sh
# The demo service's endpoints; VERSION and MODE were fixed at build time in /etc/demo.conf.
. /etc/demo.conf

reply() {  # reply STATUS CONTENT-TYPE BODY
  printf 'Status: %s\r\nContent-Type: %s\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' \
    "$1" "$2" "${#3}" "$3"
}

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
