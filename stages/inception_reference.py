"""Stage inception_reference: data/prepared -> data/inception_reference (Inception test statistics for fid_inception)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ganops import params
from ganops.metrics.inception_reference import build_inception_reference


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python stages/inception_reference.py PREPARED_DIR OUT_DIR", file=sys.stderr)
        return 2
    prepared_dir, out_dir = (Path(a) for a in argv)
    start = time.perf_counter()
    try:
        p = params.load("params.yaml").evaluate
        meta = build_inception_reference(prepared_dir=prepared_dir, out_dir=out_dir,
                                         inception=p.inception, inception_weights=p.inception_weights)
    except (params.ParamsError, ValueError, FileNotFoundError) as e:
        print(f"inception_reference failed: {e}", file=sys.stderr)
        return 1
    if meta["inception_weights_sha256"]:
        what = (f"pool3 statistics of {meta['num_test']} test images, weights sha256 "
                f"{meta['inception_weights_sha256'][:12]}")
    else:
        what = "no statistics: evaluate.inception is false"
    print(f"inception_reference: wrote {out_dir} ({what}) in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
