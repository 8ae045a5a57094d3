#!/usr/bin/env bash
# Interleaved before/after runs of the trainer and overhead benchmarks, for a change to the
# training loop: each round runs BEFORE's checkout, then AFTER's, so a drift in the machine's load
# hits both alike. Prints every value and the medians of `trainer_vs_minimal` and
# `overhead_share_service`.
#
#   bash benchmarks/before_after.sh BEFORE_DIR AFTER_DIR [ROUNDS=5]
#
# BEFORE_DIR and AFTER_DIR are checkouts of this repository (e.g. `git worktree add ../before
# <commit>`); each run imports its own checkout (PYTHONPATH) and runs that checkout's benchmarks.
set -euo pipefail
before=$(cd "$1" && pwd); after=$(cd "$2" && pwd); rounds=${3:-5}
declare -A values
for round in $(seq 1 "$rounds"); do
  for side in before after; do
    dir=${!side}
    t=$(cd "$dir" && PYTHONPATH="$dir" python benchmarks/trainer.py | tail -1)
    o=$(cd "$dir" && PYTHONPATH="$dir" python benchmarks/overhead.py | tail -1)
    tvm=$(grep -o 'trainer_vs_minimal=[0-9.]*' <<<"$t" | cut -d= -f2)
    osh=$(grep -o 'overhead_share_service=[0-9.]*' <<<"$o" | cut -d= -f2)
    echo "round $round $side trainer_vs_minimal=$tvm overhead_share_service=$osh"
    values[$side-tvm]+="$tvm "; values[$side-osh]+="$osh "
  done
done
for side in before after; do
  python - "$side" "${values[$side-tvm]}" "${values[$side-osh]}" <<'PY'
import statistics, sys
side, tvm, osh = sys.argv[1], [float(v) for v in sys.argv[2].split()], [float(v) for v in sys.argv[3].split()]
print(f"{side}: median trainer_vs_minimal={statistics.median(tvm):.3f} "
      f"median overhead_share_service={statistics.median(osh):.3f}")
PY
done
