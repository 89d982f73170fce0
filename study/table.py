"""The README's study table from study/results.csv: `python study/table.py` prints it as Markdown.

Screen rows (one seed, 5 epochs) show the domain metrics; final rows (20 epochs) are grouped by
configuration, seeds pooled into mean ± std of Inception FID. Published numbers sit beside them.
A domain fid marked * was measured with another classifier than the floor's (its fid_real differs).
"""
from __future__ import annotations

import csv
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).parent / "results.csv"
FLOOR = Path(__file__).parent / "inception_floor.json"  # written by study/inception_floor.py --out
DOMAIN = ("fid", "precision", "recall", "coverage")
# Fashion-MNIST, 20-epoch budget, Inception FID on 10k samples vs the test set (Lucic et al. 2018).
PUBLISHED = [
    ("NS GAN, best of 100 settings (Lucic et al. 2018)", "26.5 ± 1.6"),
    ("WGAN, best of 100 settings (Lucic et al. 2018)", "21.5 ± 1.6"),
    ("authors' default settings (Lucic et al. 2018)", "≈ 32"),
    ("PA-GAN (Zhang & Khoreva 2019)", "18.4 ± 1.5"),
]


def _num(value: str) -> float | None:
    return float(value) if value not in ("", None) else None


def _fmt(value: float | None, digits: int = 3) -> str:
    # None or NaN (no row of the group measured it, e.g. a checkpoint scored outside the pipeline): blank
    return "" if value is None or value != value else f"{value:#.{digits}g}" if abs(value) < 1 else f"{value:.{digits - 1}f}"


def _config(name: str) -> str:
    """A final row's configuration: its name without the -s<seed> suffix."""
    head, _, tail = name.rpartition("-s")
    return head if head and tail.isdigit() else name


def table(rows: list[dict]) -> str:
    lines = ["| configuration | epochs | domain fid | precision | recall | coverage | Inception FID | CPU wall |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["group"], _config(row["name"]) if row["group"] != "screen" else row["name"])].append(row)
    # The domain fid depends on the classifier; rows scored with another one than most are starred.
    floors = [_num(r["fid_real"]) for r in rows if _num(r.get("fid_real"))]
    floor = statistics.mode(floors) if floors else None
    for (group, name), members in groups.items():
        mean = {k: statistics.fmean([_num(r[k]) for r in members if _num(r[k]) is not None] or [float("nan")])
                for k in DOMAIN}
        inc = [_num(r["fid_inception"]) for r in members if _num(r["fid_inception"]) is not None]
        inception = ""
        if len(inc) > 1:
            inception = f"{statistics.fmean(inc):.1f} ± {statistics.stdev(inc):.1f} ({len(inc)} seeds)"
        elif inc:
            inception = f"{inc[0]:.1f} (1 seed)"
        wall = statistics.fmean(float(r["wall_s"]) for r in members) / 60
        found = re.search(r"train\.epochs=(\d+)", members[0]["command"])
        epochs = found.group(1) if found else "5"  # params.yaml's default
        other = any(_num(r.get("fid_real")) not in (None, floor) for r in members)
        domain = [_fmt(mean[k]) + ("*" if other and k == "fid" else "") for k in DOMAIN]
        lines.append(f"| `{name}` | {epochs} | " + " | ".join(domain)
                     + f" | {inception} | " + (f"{wall:.0f} min |" if wall else "train from the run cache |"))
    inception_floor = ""  # until study/inception_floor.py has measured it
    if FLOOR.exists():
        measured = json.loads(FLOOR.read_text())
        inception_floor = f"{measured['fid_inception_real']:.2f} (train[:{measured['num'] // 1000}k] vs test)"
    if floor is not None:
        lines.append(f"| real floor (train vs test) | | {_fmt(floor)} | | | | {inception_floor} | |")
    for name, value in PUBLISHED:
        lines.append(f"| {name} | 20 | | | | | {value} | |")
    return "\n".join(lines)


def main() -> int:
    with RESULTS.open() as f:
        print(table(list(csv.DictReader(f))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
