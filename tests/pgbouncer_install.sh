#!/usr/bin/env bash
# What tests/test_pooler.py and `benchmarks/scaling.py --store` need from a Debian machine: Debian's
# pgbouncer package (the tests start it themselves, from a temporary ini file, on a free port).
# Installs only what is missing; run as root.
set -euo pipefail
command -v pgbouncer >/dev/null && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq pgbouncer >/dev/null
