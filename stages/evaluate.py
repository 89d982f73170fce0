"""Stage evaluate: models/gan -> reports/evaluate (metrics.json, plots), logged into the training run."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ganops import params
from ganops.metrics.evaluate import QualityGateError, evaluate
from ganops.tracking import TrackingError


def main(argv: list[str]) -> int:
    if len(argv) != 6:
        print("usage: python stages/evaluate.py MODEL_DIR CLASSIFIER_DIR REFERENCE_DIR "
              "INCEPTION_REFERENCE_DIR MLFLOW_RUN_JSON OUT_DIR", file=sys.stderr)
        return 2
    model_dir, classifier_dir, reference_dir, inception_reference_dir, run_file, out_dir = (Path(a) for a in argv)
    start = time.perf_counter()
    try:
        p = params.load("params.yaml").evaluate
        r = evaluate(model_dir=model_dir, classifier_dir=classifier_dir, reference_dir=reference_dir,
                     inception_reference_dir=inception_reference_dir, run_id_path=run_file,
                     out_dir=out_dir, params=p)
    except QualityGateError as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 1
    except (params.ParamsError, ValueError, FileNotFoundError, TrackingError) as e:
        print(f"evaluate failed: {e}", file=sys.stderr)
        return 1
    inception = f", fid_inception {r['fid_inception']:.2f}" if "fid_inception" in r else ""
    # Labelled sets: how many classes the samples cover; unlabelled: how many look the right way up.
    extra = "class_coverage" if "class_coverage" in r else "upright_rate"
    print(f"evaluate: wrote {out_dir / 'metrics.json'} from {p.num_samples} samples: fid {r['fid']:.3f} "
          f"(real {r['fid_real']:.3f}), kid {r['kid_mean']:.4f}, precision {r['precision']:.3f}, "
          f"recall {r['recall']:.3f}, coverage {r['coverage']:.3f}, {extra} "
          f"{r[extra]:.3f}{inception} in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
