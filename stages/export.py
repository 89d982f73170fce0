"""Stage export: models/gan -> models/generator.onnx (+ .sha256), parity-checked, logged to MLflow."""
from __future__ import annotations

import sys
import time

from ganops import params
from ganops.export import ParityError, run_export
from ganops.tracking import TrackingError


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: python stages/export.py MODEL_DIR MLFLOW_RUN_JSON ONNX_PATH REPORT_JSON", file=sys.stderr)
        return 2
    model_dir, run_file, onnx_path, report_path = argv
    start = time.perf_counter()
    try:
        report = run_export(model_dir=model_dir, run_file=run_file, onnx_path=onnx_path,
                            report_path=report_path, params=params.load("params.yaml").export)
    except (params.ParamsError, ValueError, FileNotFoundError, TrackingError, ParityError) as e:
        print(f"export failed: {e}", file=sys.stderr)
        return 1
    version = report["registered_version"]
    print(f"export: wrote {onnx_path} ({report['size_bytes'] / 1e6:.1f} MB, opset {report['opset']}, "
          f"sha256 {report['sha256'][:12]}), parity max|diff| {report['parity_max_abs_diff']:.2e} "
          f"on {report['parity_seeds']} seeds"
          + (f", registered ganops-generator v{version}" if version is not None else "")
          + f" in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
