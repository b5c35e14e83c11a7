#!/bin/sh
# The nginx stand-in's entrypoint (deploy/check/Containerfile). deploy/nginx.conf
# asks Docker's embedded DNS, 127.0.0.11, for the replicas' addresses; under
# podman the network's DNS server (aardvark-dns) listens on the network's
# gateway instead: the first nameserver in the container's /etc/resolv.conf.
# This runs the mounted config unchanged but for that one address, from a copy
# in /tmp (the mounted file is read-only). Paths can be moved for the tests.
set -eu
resolv=${RESOLV_CONF:-/etc/resolv.conf}
conf=${NGINX_CONF:-/etc/nginx/nginx.conf}
copy=${NGINX_CONF_COPY:-/tmp/nginx.conf}
dns=$(awk '$1 == "nameserver" { print $2; exit }' "$resolv")
if [ -n "$dns" ] && [ "$dns" != 127.0.0.11 ]; then
    sed "s/resolver 127\.0\.0\.11 /resolver $dns /" "$conf" > "$copy"
    echo "nginx-entrypoint: resolver 127.0.0.11 -> $dns (this network's DNS server)" >&2
    conf=$copy
fi
exec "$@" -c "$conf"
