"""Stage download: fetch and verify the dataset's four IDX files into data/raw (see ganops.data.datasets)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ganops import params
from ganops.data.datasets import DatasetError, DownloadError, fetch


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python stages/download.py OUT_DIR", file=sys.stderr)
        return 2
    out_dir = Path(argv[0])
    start = time.perf_counter()
    try:
        data = params.load("params.yaml").data
        sources = fetch(params=data, out_dir=out_dir)
    except (params.ParamsError, DatasetError, DownloadError) as e:
        print(f"download failed: {e}", file=sys.stderr)
        return 1
    files = sources["files"].values()
    megabytes = sum(f["bytes"] for f in files) / 1e6
    print(f"download: wrote {out_dir} ({sources['dataset']}, {len(files)} files, {megabytes:.1f} MB "
          f"decompressed, verified by {'/'.join(sorted({f['verified'] for f in files}))}) "
          f"in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
