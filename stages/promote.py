"""Stage promote: tag the registered version with evaluate's scores; champion moves only to a better one.

Exit 0 for every decision (promoted, refused, skipped): a refusal is recorded in reports/promote.json
and on the versions, not a failed pipeline. Exit 1 only when it cannot decide (files, store, params).
"""
from __future__ import annotations

import sys

from ganops import params
from ganops.promote import run_promote
from ganops.tracking import TrackingError


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print("usage: python stages/promote.py EXPORT_JSON METRICS_JSON DETAILS_JSON REFERENCE_JSON REPORT_JSON",
              file=sys.stderr)
        return 2
    export_report, metrics_path, details_path, reference_path, report_path = argv
    try:
        decision = run_promote(export_report=export_report, metrics_path=metrics_path, details_path=details_path,
                               reference_path=reference_path, report_path=report_path,
                               params=params.load("params.yaml").promote)
    except (params.ParamsError, ValueError, FileNotFoundError, TrackingError) as e:
        print(f"promote failed: {e}", file=sys.stderr)
        return 1
    print(f"promote: {decision.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
