#!/bin/sh
# Front door of the demo service: hands every request to busybox httpd as the CGI /cgi-bin/app.
#
# Why not `httpd -f -p 8080 -h /www` alone: busybox httpd (Debian's 1.35, built without its
# proxy feature) maps a URL straight onto the file tree, so /health is either a file (then
# /health/detailed cannot exist) or a directory (then /health answers "302 Found" to /health/),
# and only paths under /cgi-bin/ or with a configured suffix run a script. So `nc -ll -e` accepts
# the connection, this script rewrites "GET /health/detailed" to "GET /cgi-bin/app/health/detailed"
# and busybox httpd in inetd mode (-i) answers it: the CGI gets the path as PATH_INFO and its
# "Status:" line becomes the real HTTP status (so /health can answer 500).
# Only the request line and headers are forwarded (GET/HEAD; request bodies are not).
cr=$(printf '\r')
IFS=' ' read -r -t 10 method target version || exit 0
version=${version%"$cr"}
{
  printf '%s /cgi-bin/app%s %s\r\n' "$method" "$target" "${version:-HTTP/1.0}"
  while IFS= read -r -t 10 header; do
    printf '%s\n' "$header"
    [ -z "${header%"$cr"}" ] && break
  done
} | exec httpd -i -h /www
