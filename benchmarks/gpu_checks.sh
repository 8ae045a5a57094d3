#!/usr/bin/env bash
# The GPU figures of the user guide (docs/guide/benchmarks.md): trainer throughput, horizons and
# fused training against runs alone, fused trials per hour, the probe, an OOM-recovery sweep and
# memory release over 100 trials. Run on a machine with an NVIDIA GPU: bash benchmarks/gpu_checks.sh
set -u
export PYTHONUNBUFFERED=1
out=${OUT:-/tmp/gpu_checks}; mkdir -p "$out"
work=$(mktemp -d)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "== trainer benchmark, resnet_synthetic, batch 256"
python3 benchmarks/trainer.py --task resnet_synthetic --batch-size 256 --updates 300 --repeats 3
echo "== trainer benchmark, digits_mlp, batch 64 (launch-bound)"
python3 benchmarks/trainer.py --task digits_mlp --batch-size 64 --updates 2000 --repeats 3
echo "== horizons: branch against dedicated run on CUDA, fp32 and bf16 (docs/guide/horizons_and_prediction.md, "On CUDA")"
python3 benchmarks/horizons_device.py --device cuda --precision fp32 bf16
echo "== fused: each member against its run alone on CUDA, fp32 and bf16, with and without horizons (docs/guide/fused_training.md)"
python3 benchmarks/fused_device.py --device cuda --precision fp32 bf16
echo "== fused: trials per hour against the best --trials-per-gpu setting (issue 26: at least 5 on the MLPs, 2 on the ResNet)"
python3 benchmarks/fused.py --device cuda --batch-sizes 32 128 --ks 1 4 16 64 --trials 64 --resnet --resnet-trials 16 --resnet-updates 20
echo "== probe (whole GPU)"
python3 -m sweeps.probe examples/resnet_gpu.yaml --storage "sqlite:///$work/probe.db" --limit 65536
echo "== OOM recovery: the same study capped at 4% of GPU memory, no probe"
sed 's/precision: bf16,/precision: bf16, gpu_memory_fraction: 0.04,/' examples/resnet_gpu.yaml > "$work/capped.yaml"
python3 -m sweeps.run "$work/capped.yaml" --storage "sqlite:///$work/capped.db" --n-trials 8 --quiet
python3 - "$work/capped.db" <<'PY'
import sys, optuna
study = optuna.load_study(study_name="resnet-gpu", storage=f"sqlite:///{sys.argv[1]}")
keys = ["batch_size", "micro_batch", "accumulation_steps", "updates", "planned_updates", "peak_memory_mb",
        "examples_per_second", "stop_reason"]
for t in study.trials:
    print(t.number, t.state.name, round(t.value, 4) if t.value is not None else None,
          {k: t.user_attrs.get(k) for k in keys})
PY
echo "== memory over 100 trials in one process"
python3 - <<'PY'
import torch, optuna
from sweeps.config.study_file import parse_config
from sweeps.loop.runner import run_sweep, target_of
cfg = parse_config({
    "study": {"name": "mem", "metric": "val_accuracy", "n_trials": 100},
    "objective": {"task": "resnet_synthetic", "device": "cuda", "fuse": "off",  # the solo trainer, as first checked
                  "options": {"n_train": 2048, "n_val": 256, "width": 16, "blocks": 1}},
    "budget": {"unit": "updates", "per_trial": 4, "eval_every": 2},
    "search": {"batch_size": [64, 256, 1024], "base_lr": {"low": 0.01, "high": 0.5, "log": True}},
    "pruner": {"name": "none"}}, "/tmp")
for n in (5, 100):  # the second call resumes the first: 95 more trials in the same process
    study = run_sweep(cfg, target_of(cfg, "sqlite:////tmp/mem.db", n_trials=n), show_progress=False)
    print(f"after {len(study.trials)} trials: allocated {torch.cuda.memory_allocated() / 2**20:.1f} MB, "
          f"reserved {torch.cuda.memory_reserved() / 2**20:.1f} MB")
PY
