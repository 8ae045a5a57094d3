#!/usr/bin/env bash
# What tests/test_compose_up.py needs from a Debian machine, from Debian's packages: a Docker
# engine (docker.io: dockerd, which the test starts itself), a compose tool (Debian's
# docker-compose, v1, unless `docker compose` v2 is there; the static checks in
# tests/test_compose.py use docker-compose too) and debootstrap (for the stand-in base images).
# Installs only what is missing; run as root.
set -euo pipefail
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v debootstrap >/dev/null || need+=(debootstrap)
[ "${#need[@]}" -eq 0 ] && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
