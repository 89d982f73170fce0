"""Stage export: models/gan -> models/generator.onnx (+ .sha256), parity-checked, logged to MLflow."""
import sys
import time

from ganops import params
from ganops.export import run_export

if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: python stages/export.py MODEL_DIR MLFLOW_RUN_JSON ONNX_PATH REPORT_JSON")
    model_dir, run_file, onnx_path, report_path = sys.argv[1:]
    start = time.perf_counter()
    report = run_export(model_dir=model_dir, run_file=run_file, onnx_path=onnx_path,
                        report_path=report_path, params=params.load("params.yaml").export)
    version = report["registered_version"]
    print(f"export: wrote {onnx_path} ({report['size_bytes'] / 1e6:.1f} MB, opset {report['opset']}, "
          f"sha256 {report['sha256'][:12]}), parity max|diff| {report['parity_max_abs_diff']:.2e} "
          f"on {report['parity_seeds']} seeds"
          + (f", registered ganops-generator v{version}" if version is not None else "")
          + f" in {time.perf_counter() - start:.1f}s")
