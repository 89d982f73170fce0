#!/usr/bin/env bash
# GPU check of the train loop, for a machine with CUDA: trains briefly with bf16 autocast (what
# ganops.training does on CUDA) at the params.yaml batch and at 4x it, and prints img/s, peak GPU
# memory and whether the losses stayed finite under AMP (exit 1 if not).
#   bash bench/gpu_check.sh [STEPS]        (default 200; PYTHON=... to pick the interpreter)
# Uses data/prepared when present, else 60k synthetic images. Writes only under a temp dir.
set -euo pipefail
STEPS="${1:-200}"
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=true DO_NOT_TRACK=true
export PYTHONPATH="${PWD}/src${PYTHONPATH:+:$PYTHONPATH}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db"

"$PYTHON" - "$STEPS" "$WORK" <<'EOF'
import csv, dataclasses, math, sys, time
from pathlib import Path

import numpy as np
import torch

steps, work = int(sys.argv[1]), Path(sys.argv[2])
if not torch.cuda.is_available():
    print("gpu_check: no CUDA device visible to torch; nothing to check", file=sys.stderr)
    sys.exit(1)

from ganops import params as params_mod
from ganops.prepared import write_prepared
from ganops.training import train

prepared = Path("data/prepared")
if not (prepared / "manifest.json").exists():
    rng = np.random.default_rng(0)
    split = (rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8), (np.arange(60000) % 10).astype(np.uint8))
    prepared = work / "prepared"
    write_prepared(prepared, splits={"train": split, "test": split}, dataset="synthetic", num_classes=10, sources={})

p = params_mod.load("params.yaml") if Path("params.yaml").exists() else params_mod.Params()
print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, bf16 autocast, "
      f"{p.model.arch} width {p.model.width}, batch {p.train.batch_size}, {steps} steps", flush=True)
for batch in (p.train.batch_size, 4 * p.train.batch_size):
    tp = dataclasses.replace(p.train, batch_size=batch, max_steps=steps, epochs=1000,
                             checkpoint_every=max(1, steps // 2), log_every=max(1, steps // 10))
    run = work / f"b{batch}"
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    s = train(params=dataclasses.replace(p, train=tp), prepared_dir=prepared, model_dir=run / "gan",
              checkpoint_dir=run / "ckpt", report_dir=run / "reports")
    wall = time.perf_counter() - t
    rows = list(csv.DictReader(open(run / "reports" / "losses.csv")))
    finite = all(math.isfinite(float(r[k])) for r in rows for k in ("loss_d", "loss_g"))
    print(f"gpu_check: batch {batch}: {s['img_per_s']:.0f} img/s (loop), {wall:.1f}s wall incl. setup, "
          f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB, device {s['device']}, "
          f"last loss_d {float(rows[-1]['loss_d']):.3f} loss_g {float(rows[-1]['loss_g']):.3f}, "
          f"losses finite: {finite}", flush=True)
    if not finite:
        sys.exit(1)
print("gpu_check: ok")
EOF
