#!/usr/bin/env bash
# What tests/test_slurm.py needs from a Debian machine, from Debian's packages: Slurm's controller
# and node daemons and its client commands (slurm-wlm: slurmctld, slurmd, sbatch, squeue, scancel)
# and MUNGE, which authenticates them (the test writes its own slurm.conf and starts the daemons
# itself). Installs only what is missing; run as root.
set -euo pipefail
need=()
command -v slurmctld >/dev/null || need+=(slurm-wlm)
command -v munged >/dev/null || need+=(munge)
[ "${#need[@]}" -eq 0 ] && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
