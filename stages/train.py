"""Stage train: data/prepared -> models/gan (EMA G), models/checkpoints, reports/train (ganops.training.loop).

The classifier and the reference statistics score the per-epoch quality curve (train.curve_samples).

Re-running after a crash resumes from models/checkpoints/last.pt. Multi-process:
`torchrun --nproc_per_node=N stages/train.py ...` (gloo on CPU, nccl on CUDA).
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from ganops import params
from ganops.training.loop import train


def main(argv: list[str]) -> int:
    if len(argv) != 6:
        print("usage: python stages/train.py PREPARED_DIR CLASSIFIER_DIR REFERENCE_DIR MODEL_DIR "
              "CHECKPOINT_DIR REPORT_DIR", file=sys.stderr)
        return 2
    prepared_dir, classifier_dir, reference_dir, model_dir, checkpoint_dir, report_dir = (Path(a) for a in argv)
    # `kill` and `dvc queue kill` send SIGTERM: take it as Ctrl-C, so the MLflow run is closed as
    # KILLED instead of staying RUNNING, and the last checkpoint is left for the next run to resume.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    start = time.perf_counter()
    try:
        # All sections: lineage hashes data, prepare, model and train; MLflow logs every param.
        p = params.load("params.yaml")
        summary = train(params=p, prepared_dir=prepared_dir, classifier_dir=classifier_dir,
                        reference_dir=reference_dir, model_dir=model_dir,
                        checkpoint_dir=checkpoint_dir, report_dir=report_dir)
    except (params.ParamsError, ValueError, FileNotFoundError) as e:
        print(f"train failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"train: interrupted; `dvc repro` resumes from {checkpoint_dir}'s last checkpoint", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        resumed = f", resumed at step {summary['resumed_at']}" if summary["resumed_at"] else ""
        curve = f", fid_curve {summary['fid_curve']:.2f}" if summary["fid_curve"] is not None else ""
        print(f"train: wrote {model_dir} after {summary['steps']} steps ({summary['epochs']:.2f} epochs"
              f"{resumed}) at {summary['img_per_s']:.0f} img/s on {summary['device']}"
              f" x{summary['world_size']} in {summary['precision']}{curve}, MLflow run {summary['run_id']}, "
              f"in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
