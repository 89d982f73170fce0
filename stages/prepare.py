"""Stage prepare: validate data/raw's IDX files and write data/prepared (ganops.data.prepare)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ganops import params
from ganops.data.folder import FolderError
from ganops.data.idx import IdxError
from ganops.data.prepare import prepare


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python stages/prepare.py RAW_DIR OUT_DIR", file=sys.stderr)
        return 2
    raw_dir, out_dir = Path(argv[0]), Path(argv[1])
    start = time.perf_counter()
    try:
        p = params.load("params.yaml").prepare
        manifest = prepare(raw_dir=raw_dir, out_dir=out_dir, params=p)
    except (params.ParamsError, IdxError, FolderError) as e:
        print(f"prepare failed: {e}", file=sys.stderr)
        return 1
    report = manifest.get("prepare_report")
    details = (f"; {report['upscaled']} upscaled, skipped {report['skipped_hidden']} hidden and "
               f"{report['skipped_not_an_image']} non-image files" if report else "")
    classes = f"{manifest['num_classes']} classes" if manifest.get("labelled", True) else "unlabelled"
    print(f"prepare: wrote {out_dir} ({manifest['dataset']}, {manifest['train']['count']} train / "
          f"{manifest['test']['count']} test images of {manifest['resolution']}x{manifest['resolution']}x"
          f"{manifest['channels']}, {classes}{details}) in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
