#!/bin/sh
# Entrypoint of the edge (docker-compose.yml): export EDGE_RESOLVER, the container's
# first DNS server, for templates/default.conf.template, then hand over to the nginx
# image's own entrypoint (which renders the templates and starts nginx).
#
# Only the first: Docker lists just its embedded DNS (127.0.0.11), but podman lists the
# network's DNS (which knows the service names) followed by the host's, and nginx asks
# all of them in turn, so a "gateway: not found" from the host's DNS would fail requests.
set -eu
EDGE_RESOLVER=$(awk '$1 == "nameserver" { print ($2 ~ /:/) ? "[" $2 "]" : $2; exit }' /etc/resolv.conf)
export EDGE_RESOLVER="${EDGE_RESOLVER:-127.0.0.11}"
exec /docker-entrypoint.sh "$@"
