"""Stage reference: data/prepared + models/classifier -> data/reference (real-data feature statistics)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ganops.metrics.reference import build_reference


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python stages/reference.py PREPARED_DIR CLASSIFIER_DIR OUT_DIR", file=sys.stderr)
        return 2
    prepared_dir, classifier_dir, out_dir = (Path(a) for a in argv)
    start = time.perf_counter()
    try:
        meta = build_reference(prepared_dir=prepared_dir, classifier_dir=classifier_dir, out_dir=out_dir)
    except (ValueError, FileNotFoundError) as e:
        print(f"reference failed: {e}", file=sys.stderr)
        return 1
    print(f"reference: wrote {out_dir} ({meta['num_test']} test + {meta['num_test']} train images in "
          f"{meta['feature_extractor_version']}) in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
