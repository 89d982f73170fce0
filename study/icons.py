"""The colour demo's data: Debian's Oxygen icon theme (32x32 RGBA PNGs) as a labelled image folder.

Copies each context's icons (actions, apps, devices, ...: the class folders) from the installed
theme, regular files only: the theme's symlinks repeat icons under other names, and a repeated
image could land in both the train and test splits.

    apt-get install oxygen-icon-theme
    .venv/bin/python study/icons.py /tmp/icons      # ~1,200 PNGs in 10 class folders
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

THEME = Path("/usr/share/icons/oxygen/base/32x32")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the folder to write (DIR/<context>/<icon>.png); must not exist")
    ap.add_argument("--theme", type=Path, default=THEME, help=f"the theme's size folder (default {THEME})")
    args = ap.parse_args(argv)
    if not args.theme.is_dir():
        print(f"{args.theme} not found: apt-get install oxygen-icon-theme, or pass --theme", file=sys.stderr)
        return 1
    if args.out.exists():
        print(f"{args.out} exists: give a new folder", file=sys.stderr)
        return 1
    count = 0
    for context in sorted(p for p in args.theme.iterdir() if p.is_dir()):
        for icon in sorted(context.glob("*.png")):
            if icon.is_symlink():
                continue
            (args.out / context.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(icon, args.out / context.name / icon.name)
            count += 1
    print(f"wrote {count} icons into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
