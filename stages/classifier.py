"""Stage classifier: data/prepared -> models/classifier (the metrics' feature extractor), reports/classifier.json."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ganops import params
from ganops.metrics.classifier import train_classifier


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python stages/classifier.py PREPARED_DIR MODEL_DIR REPORT_JSON", file=sys.stderr)
        return 2
    prepared_dir, model_dir, report_path = (Path(a) for a in argv)
    start = time.perf_counter()
    try:
        p = params.load("params.yaml").classifier
        report = train_classifier(
            prepared_dir=prepared_dir, model_dir=model_dir, report_path=report_path, seed=p.seed,
            epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, width=p.width, feature_dim=p.feature_dim,
        )
    except (params.ParamsError, ValueError, FileNotFoundError) as e:
        print(f"classifier failed: {e}", file=sys.stderr)
        return 1
    if report["task"] == "classes":
        score = f"test accuracy {report['test_accuracy']:.4f} (worst class {report['min_class_accuracy']:.4f})"
    else:
        score = (f"unlabelled set: rotation accuracy {report['rotation_accuracy']:.4f} "
                 f"(worst angle {report['min_rotation_accuracy']:.4f})")
    print(f"classifier: wrote {model_dir} ({report['feature_extractor_version']}), {score} after "
          f"{report['train_steps']} steps, in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
