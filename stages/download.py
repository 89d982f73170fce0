"""Stage download: fetch and verify the dataset's four IDX files into data/raw (see ganops.data.datasets)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ganops import params
from ganops.data.datasets import DatasetError, DownloadError, fetch
from ganops.data.folder import FolderError


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python stages/download.py OUT_DIR", file=sys.stderr)
        return 2
    out_dir = Path(argv[0])
    start = time.perf_counter()
    try:
        data = params.load("params.yaml").data
        sources = fetch(params=data, out_dir=out_dir)
    except (params.ParamsError, DatasetError, DownloadError, FolderError) as e:
        print(f"download failed: {e}", file=sys.stderr)
        return 1
    if sources["dataset"] == "folder":
        inventory = sources["inventory"]
        classes = f"{len(sources['classes'])} classes" if sources["classes"] else "unlabelled"
        print(f"download: inventoried {len(inventory['entries'])} images in {sources['folder']} ({classes}; "
              f"skipped {inventory['skipped']['hidden']} hidden and {inventory['skipped']['not_an_image']} "
              f"non-image files) into {out_dir} in {time.perf_counter() - start:.1f}s")
        return 0
    files = sources["files"].values()
    megabytes = sum(f["bytes"] for f in files) / 1e6
    print(f"download: wrote {out_dir} ({sources['dataset']}, {len(files)} files, {megabytes:.1f} MB "
          f"decompressed, verified by {'/'.join(sorted({f['verified'] for f in files}))}) "
          f"in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
