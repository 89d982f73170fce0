"""The `ganops` command: `ganops generate`, `ganops serve` (inference only: no torch imported) and `ganops promote`."""
from __future__ import annotations

import argparse
import sys

from ganops import __version__
from ganops.params import PROMOTE_METRICS, PROVIDERS


class UsageError(ValueError):
    """Bad command-line input: reported on stderr with exit status 2, without a traceback."""


def parse_seeds(text: str) -> list[int]:
    """Seed syntax: `7`, `0-63`, `1,5,9` and combinations such as `0-3,10,20-22` (ranges inclusive)."""
    from ganops.sampling import MAX_SEED

    seeds: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi if sep else lo)
        except ValueError:
            raise UsageError(
                f"bad seed '{part}' in --seeds {text!r}: use N, A-B or a comma list like 0-3,10"
            ) from None
        if not 0 <= first <= last <= MAX_SEED:
            raise UsageError(f"bad seed range '{part}': need 0 <= A <= B <= {MAX_SEED}")
        if last - first >= 100_000:  # guards against a typo such as 0-1000000000
            raise UsageError(f"seed range '{part}' has {last - first + 1} seeds; at most 100000")
        seeds.extend(range(first, last + 1))
    return seeds


def _run_generate(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from ganops.fileio import write_bytes
    from ganops.png import png
    from ganops.sampling import grid
    from ganops.serving.inference import OnnxGenerator
    from ganops.serving.model_source import ModelSource, ModelVerificationError, default_cache_dir, load_generator
    from ganops.serving.registry_client import RegistryError, is_models_uri

    try:
        seeds = parse_seeds(args.seeds)
        out = Path(args.out)
        per_seed = args.out.endswith(("/", "\\")) or out.is_dir()
        if not per_seed and out.suffix.lower() != ".png":
            raise UsageError(f"--out {args.out}: give a .png file for a grid or a directory/ for one PNG per seed")
        if args.ncol < 1:
            raise UsageError(f"--ncol must be at least 1, got {args.ncol}")
        if is_models_uri(args.model):  # downloaded and checked against the version's model_sha256 tag
            source = ModelSource(spec=args.model, expect_sha256=None, verify=True,
                                 cache_dir=Path(args.cache_dir) if args.cache_dir else default_cache_dir(os.environ))
            fetched = source.fetch()
            generator = load_generator(fetched, providers=args.providers, intra_op_threads=0)
            model = f"{fetched.description}, sha256 {fetched.sha256[:12]}"
        else:  # a local file, used as it is (the server checks files; this command trusts yours)
            generator = OnnxGenerator.from_onnx(args.model, providers=args.providers)
            model = args.model
        images = generator.generate(seeds, labels=args.label)
        if per_seed:
            for seed, image in zip(seeds, images):
                write_bytes(out / f"seed_{seed:04d}.png", png(image))
            wrote = f"{len(seeds)} PNGs to {out}/ (seed_{seeds[0]:04d}.png ...)"
        else:
            write_bytes(out, png(grid(images, ncol=args.ncol)))
            wrote = f"a grid of {len(seeds)} images to {out}"
    except (ValueError, OSError) as e:  # FileNotFoundError is an OSError
        print(f"ganops generate: error: {e}", file=sys.stderr)
        return 2
    except (ModelVerificationError, RegistryError) as e:
        print(f"ganops generate: refused: {e}", file=sys.stderr)
        return 1
    label = f", label {args.label}" if args.label is not None else ""
    print(f"wrote {wrote} (seeds {args.seeds}{label}) with {model} on {generator.provider}")
    return 0


def _add_generate(sub) -> None:
    """`ganops generate`: images from seeds with an exported ONNX generator."""
    p = sub.add_parser(
        "generate",
        help="write PNGs from seeds with an exported ONNX generator",
        description="Generate images from seeds with an exported generator (ONNX Runtime). "
        "A seed names the same image everywhere: the server, the pipeline and this command.",
        epilog="examples:\n"
        "  ganops generate --seeds 0-63 --out grid.png\n"
        "  ganops generate --seeds 1,5,9 --label 3 --out samples/\n"
        "  ganops generate --model other.onnx --seeds 0-15,100 --ncol 4 --out grid.png\n"
        "  MLFLOW_TRACKING_URI=http://mlflow:5000 ganops generate --model models:/ganops-generator@champion --out grid.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="models/generator.onnx",
                   help="exported ONNX generator, or a registry version: models:/<name>@<alias> or "
                   "models:/<name>/<version> from MLFLOW_TRACKING_URI's registry (default: %(default)s)")
    p.add_argument("--cache-dir", help="where registry versions are downloaded [GANOPS_CACHE_DIR] (default "
                   "$XDG_CACHE_HOME/ganops/models, else ~/.cache/ganops/models)")
    p.add_argument("--seeds", default="0-63",
                   help="seeds: 7, 0-63, 1,5,9 or combinations like 0-3,10 (default: %(default)s)")
    p.add_argument("--label", type=int, default=None,
                   help="class for every image; required by conditional models, refused by others")
    p.add_argument("--out", required=True,
                   help="x.png writes one grid; dir/ (or an existing directory) writes seed_0007.png per seed")
    p.add_argument("--ncol", type=int, default=8, help="grid columns (default: %(default)s)")
    p.add_argument("--providers", choices=PROVIDERS, default="auto",
                   help="ONNX Runtime device: auto uses CUDA when onnxruntime-gpu has it, else CPU; "
                   "cuda without CUDA is an error (default: %(default)s)")
    p.set_defaults(run=_run_generate)


_SERVE_ENV_HELP = """\
environment variables (a flag wins over its variable, which wins over --params and the defaults):
  GANOPS_MODEL            the ONNX model (--model): a file, models:/<name>@<alias> or models:/<name>/<version>
  GANOPS_CACHE_DIR        where registry versions are downloaded (--cache-dir; default
                          $XDG_CACHE_HOME/ganops/models, else ~/.cache/ganops/models)
  MLFLOW_TRACKING_URI     the registry of a models:/ URI: http(s)://<tracking server>, read over its
                          REST API (MLFLOW_TRACKING_TOKEN or _USERNAME/_PASSWORD if needed); a sqlite:
                          or file: store needs the full environment (the mlflow package)
  GANOPS_API_KEY          when set, every /v1 and /v2/models endpoint needs 'Authorization: Bearer
                          <key>' or 'X-API-Key: <key>'; /, /healthz, /readyz, /v2 and its health,
                          /metrics and /docs stay open
  GANOPS_MODEL_SHA256     the model's expected SHA-256 (--expect-sha256)
  GANOPS_HOST, GANOPS_PORT, GANOPS_MAX_BATCH, GANOPS_MAX_WAIT_MS, GANOPS_QUEUE_SIZE,
  GANOPS_MAX_IMAGES, GANOPS_MAX_BODY_BYTES, GANOPS_MICRO_BATCHING (true|false),
  GANOPS_CACHE_MAX_AGE_S, GANOPS_PROVIDERS, GANOPS_ORT_THREADS, GANOPS_BATCH_THREADS,
  GANOPS_WORKERS          the flags of the same name

The model's SHA-256 is checked before the port is bound: against <model>.sha256 (written by the
export stage), a registry version's model_sha256 tag, and --expect-sha256; with none of them, the
server refuses to start unless --no-verify.

Reload without downtime: SIGHUP, or POST /admin/reload with the API key (403 without GANOPS_API_KEY),
fetches the model again (a moved alias, a new file), warms it up, then switches; in-flight requests
finish on the old model, and a model that fails to load leaves the old one serving. With --workers N
every worker reloads (SIGHUP to the parent, or the admin request to any worker); /metrics counts only
the worker that answers it.
"""


def _run_serve(args: argparse.Namespace) -> int:
    import dataclasses
    import os
    from pathlib import Path

    from ganops.params import ServeParams
    from ganops.serving.config import api_key_from_env, with_env
    from ganops.serving.model_source import ModelVerificationError, default_cache_dir
    from ganops.serving.registry_client import RegistryError
    from ganops.serving.server import serve

    try:
        config = ServeParams()
        if args.params is not None:
            from ganops.params import load  # needs pyyaml: only with --params

            config = load(args.params).serve
        config = with_env(config, os.environ)
        flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServeParams)}
        config = dataclasses.replace(config, **{k: v for k, v in flags.items() if v is not None})
        model = args.model or os.environ.get("GANOPS_MODEL")
        if not model:
            raise UsageError("pass --model PATH or models:/NAME@ALIAS (or set GANOPS_MODEL): the exported ONNX generator")
        return serve(model=model, config=config, api_key=api_key_from_env(os.environ),
                     expect_sha256=args.expect_sha256 or os.environ.get("GANOPS_MODEL_SHA256") or None,
                     verify=not args.no_verify,
                     cache_dir=Path(args.cache_dir) if args.cache_dir else default_cache_dir(os.environ),
                     access_log=args.access_log, log_level=args.log_level)
    except (ModelVerificationError, RegistryError) as e:
        print(f"ganops serve: refusing to start: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:  # UsageError, bad env/params, unloadable model, unwritable cache
        print(f"ganops serve: {e}", file=sys.stderr)
        return 2


def _add_serve(sub) -> None:
    """`ganops serve`: the HTTP server over an exported ONNX generator."""
    p = sub.add_parser(
        "serve",
        help="serve a generator over HTTP (web page, /v1 API, Open Inference Protocol /v2, /metrics)",
        description="Serve an exported ONNX generator over HTTP with FastAPI and uvicorn: a web page "
        "at /, the /v1 API (docs at /docs), the Open Inference Protocol at /v2, /healthz, /readyz and "
        "Prometheus /metrics. Concurrent "
        "requests are micro-batched into one ONNX Runtime call. Defaults are params.yaml's serve "
        "section's (which --params reads), so no repository is needed.",
        epilog=_SERVE_ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Defaults are None so that "not given" can fall back to env, then --params, then built-ins.
    p.add_argument("--model", help="the exported ONNX generator, e.g. models/generator.onnx, or a registry version, "
                   "e.g. models:/ganops-generator@champion [GANOPS_MODEL]")
    p.add_argument("--cache-dir", help="where registry versions are downloaded [GANOPS_CACHE_DIR]")
    p.add_argument("--host", help="address to bind (default 127.0.0.1: loopback only) [GANOPS_HOST]")
    p.add_argument("--port", type=int, help="port (default 8000) [GANOPS_PORT]")
    p.add_argument("--max-batch", type=int, help="most images per ONNX Runtime call (default 64)")
    p.add_argument("--max-wait-ms", type=float, help="how long a micro-batch waits to fill (default 2)")
    p.add_argument("--queue-size", type=int, help="requests waiting before 503 + Retry-After (default 256)")
    p.add_argument("--max-images", type=int, help="images per request and interpolation steps (default 256)")
    p.add_argument("--max-body-bytes", type=int, help="request body limit, 413 beyond (default 65536)")
    p.add_argument("--no-micro-batching", dest="micro_batching", action="store_const", const=False,
                   help="one ONNX Runtime call per request (the benchmark's baseline)")
    p.add_argument("--cache-max-age-s", type=int,
                   help="Cache-Control max-age of the model-versioned image URLs (default one year)")
    p.add_argument("--providers", choices=PROVIDERS, help="ONNX Runtime providers (default auto)")
    p.add_argument("--ort-threads", type=int,
                   help="ONNX Runtime intra-op threads; 0 = one per core (default 1: the event loop needs a core)")
    p.add_argument("--batch-threads", type=int,
                   help="micro-batches run at once in each worker: 2 overlaps one batch's PNG encoding with the "
                   "next one's inference (default 1)")
    p.add_argument("--workers", type=int,
                   help="server processes accepting on the one port, each with its own model and batcher; "
                   "SIGHUP to the parent reloads them all (default 1)")
    p.add_argument("--expect-sha256", metavar="HEX", help="the model's expected SHA-256 [GANOPS_MODEL_SHA256]")
    p.add_argument("--no-verify", action="store_true",
                   help="start even when there is nothing to check the model against (no sidecar, no "
                   "expected hash); a hash that disagrees is still refused")
    p.add_argument("--params", metavar="PARAMS_YAML", help="read defaults from this file's serve section")
    p.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(run=_run_serve)


def _run_promote(args: argparse.Namespace) -> int:
    from ganops.fileio import write_json
    from ganops.params import ParamsError, PromoteParams, load
    from ganops.promote import promote_version
    from ganops.registry import CHALLENGER, Registry
    from ganops.tracking import TrackingError

    try:
        section = load(args.params).promote
        # Flags override params.yaml; PromoteParams checks them as it checks the file.
        rule = PromoteParams(metric=args.metric or section.metric,
                             margin=section.margin if args.margin is None else args.margin)
        registry = Registry()
        version = args.version if args.version is not None else registry.alias_version(CHALLENGER)
        if version is None:
            raise UsageError(f"no version of {registry.name} has the alias {CHALLENGER} (nothing exported "
                             "with export.register true yet): pass --version N")
        decision = promote_version(registry, version, metric=rule.metric, margin=rule.margin)
        if args.report:
            write_json(args.report, decision.report())
    except ModuleNotFoundError as e:  # the slim serving environment has neither PyYAML nor MLflow
        print(f"ganops promote: needs the full environment (requirements.lock): {e}", file=sys.stderr)
        return 2
    except (UsageError, ParamsError) as e:
        print(f"ganops promote: {e}", file=sys.stderr)
        return 2
    except (TrackingError, ValueError, OSError) as e:
        print(f"ganops promote: error: {e}", file=sys.stderr)
        return 1
    print(f"ganops promote: {decision.summary()}")
    return 0


def _add_promote(sub) -> None:
    """`ganops promote`: the promote stage's decision, for any registered version."""
    p = sub.add_parser(
        "promote",
        help="move the registry alias champion to a version that beats it (needs MLflow)",
        description="Decide whether a registered version of ganops-generator becomes the champion,\n"
        "by the promote stage's rule. It does when there is no champion yet, or when it scored below\n"
        "champion x (1 - margin) on the metric (auto: fid_inception where both versions have it, else\n"
        "the domain fid). Both must have been scored on the same test set and sample count, in the same\n"
        "feature space (classifier, or Inception weights), else it refuses and says why. The decision\n"
        "and its reason become tags on both versions.\n\n"
        "A refusal is an outcome, not an error: exit 0 for any decision, 1 when it could not decide\n"
        "(store, version), 2 for bad input. The store: MLFLOW_TRACKING_URI, else the repository's mlflow.db.",
        epilog="examples:\n"
        "  ganops promote                          # the version with the alias challenger (the latest export)\n"
        "  ganops promote --version 7              # e.g. the one a dvc exp experiment registered\n"
        "                                          # (dvc exp show: reports/export.json registered_version)\n"
        "  ganops promote --version 7 --metric fid --margin 0.05 --report promote.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", type=int, help="the registered version to decide on (default: the challenger)")
    p.add_argument("--params", default="params.yaml",
                   help="read metric and margin from this file's promote section (default: %(default)s)")
    p.add_argument("--metric", choices=PROMOTE_METRICS,
                   help="the metric compared (default: promote.metric)")
    p.add_argument("--margin", type=float,
                   help="relative improvement required, in [0, 1) (default: promote.margin)")
    p.add_argument("--report", metavar="JSON", help="also write the decision there, as reports/promote.json")
    p.set_defaults(run=_run_promote)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ganops",
        description="Generate images with an exported ganops generator (ONNX Runtime, no PyTorch). "
        "The pipeline itself runs with `dvc repro`.",
    )
    parser.add_argument("--version", action="version", version=f"ganops {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_generate(sub)
    _add_serve(sub)
    _add_promote(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
