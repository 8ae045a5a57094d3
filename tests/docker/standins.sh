#!/usr/bin/env bash
# Local stand-ins for the base images that the project's Dockerfile and docker-compose.yml name
# (python:3.11-slim, postgres:16), for machines that reach no container registry: a minimal
# Debian bookworm root file system made with debootstrap from the host's Debian mirror, imported,
# and the two small images in this folder built on it (label sweeps.test.standin). An image of
# either name that this script did not build (the real one, pulled) is left as it is: on a machine
# that can pull, `docker pull python:3.11-slim postgres:16` first, and the test runs on the real
# images; `docker rmi python:3.11-slim postgres:16` removes the stand-ins. The root file system
# is cached under $SWEEPS_TEST_CACHE (default /var/cache/sweeps-test), keyed by this script's
# content; the images are rebuilt when this folder's files change.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${SWEEPS_TEST_CACHE:-/var/cache/sweeps-test}"
packages=python3,python3-venv,postgresql,ca-certificates
rootfs_key="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)"
key="$(cat "${BASH_SOURCE[0]}" "$here"/*.Dockerfile "$here"/postgres-entrypoint.sh | sha256sum | cut -c1-12)"
base="sweeps-test/bookworm:$rootfs_key"

mirror() {  # the Debian mirror apt uses here (deb822 or one-line sources), else deb.debian.org
  local url
  url="$(grep -hs -A3 '^Types: *deb$' /etc/apt/sources.list.d/*.sources \
         | sed -n 's/^URIs: *\([^ ]*\/debian\)\/\{0,1\}$/\1/p' | head -n1)"
  [ -n "$url" ] || url="$(sed -n 's/^deb  *\(\[[^]]*\]  *\)\{0,1\}\([^ ]*\/debian\)\/\{0,1\}  *bookworm .*/\2/p' \
                          /etc/apt/sources.list 2>/dev/null | head -n1)"
  echo "${url:-http://deb.debian.org/debian}"
}

base_image() {  # import the root file system as $base, debootstrapping it unless cached
  docker image inspect "$base" >/dev/null 2>&1 && return 0
  local rootfs="$cache/rootfs-$rootfs_key" start=$SECONDS
  if [ ! -d "$rootfs" ]; then
    command -v debootstrap >/dev/null || { echo "standins: debootstrap is not installed" >&2; return 1; }
    mkdir -p "$cache"
    rm -rf "$cache"/rootfs-*  # other keys and half-made ones
    debootstrap --variant=minbase --include="$packages" bookworm "$rootfs.tmp" "$(mirror)" \
      > "$cache/debootstrap.log" 2>&1 || { tail -n 20 "$cache/debootstrap.log" >&2; return 1; }
    # What an image needs none of: package archives and lists, docs, the Debian default cluster.
    rm -rf "$rootfs.tmp"/var/cache/apt/archives/*.deb "$rootfs.tmp"/var/lib/apt/lists/* \
      "$rootfs.tmp"/usr/share/doc/* "$rootfs.tmp"/usr/share/man/* "$rootfs.tmp"/var/lib/postgresql/*
    mv "$rootfs.tmp" "$rootfs"
    echo "standins: debootstrap took $((SECONDS - start)) s" >&2
  fi
  tar -C "$rootfs" -c . | docker import --change 'CMD ["bash"]' - "$base" >/dev/null
}

standin() {  # NAME DOCKERFILE: build NAME on $base unless it is current or not ours
  local name=$1 dockerfile=$2 label
  if label="$(docker image inspect -f '{{ index .Config.Labels "sweeps.test.standin" }}' "$name" 2>/dev/null)"; then
    [ "$label" = "$key" ] && return 0
    case "$label" in ""|"<no value>") echo "standins: $name is not a stand-in; kept" >&2; return 0;; esac
  fi
  base_image
  docker build -q --label "sweeps.test.standin=$key" --build-arg "BASE=$base" \
    -f "$here/$dockerfile" -t "$name" "$here" >/dev/null 2> >(grep -v -e DEPRECATED -e buildx -e '^ *$' >&2)
}
standin python:3.11-slim python.Dockerfile
standin postgres:16 postgres.Dockerfile
