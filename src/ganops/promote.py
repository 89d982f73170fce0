"""The promote stage and `ganops promote`: move the registry alias champion to a better challenger.

The rule: version N becomes champion when there is no champion yet, or when it scored below the
champion x (1 - promote.margin) on the stated metric (lower is better for both FIDs). The two must
have been scored the same way, else the step refuses and says why: same test set
(data_manifest_sha256) and sample count (num_samples), and for `fid` the same classifier
(feature_extractor_version), for `fid_inception` the same Inception weights. Refusing is an outcome,
not an error: it is recorded (reports/promote.json, tags on both versions) like a promotion.

    run_promote(export_report="reports/export.json", metrics_path=..., details_path=...,
                reference_path=..., report_path="reports/promote.json", params=p.promote)
    promote_version(Registry(), 7, metric="auto", margin=0.02)    # what `ganops promote` runs
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from ganops.fileio import write_json
from ganops.params import PromoteParams
from ganops.registry import CHAMPION, REGISTERED_MODEL, Registry

SCORE_PREFIX = "evaluate."  # version tags holding what evaluate measured, and how
# How a version was scored: a metric compares only between versions that agree on these.
IDENTITY_ALWAYS = ("data_manifest_sha256", "num_samples")
IDENTITY_OF = {"fid": ("feature_extractor_version",), "fid_inception": ("inception_weights_sha256",)}
IDENTITY_KEYS = (*IDENTITY_ALWAYS, "feature_extractor_version", "inception_weights_sha256")


@dataclass(frozen=True)
class Scores:
    """What evaluate measured for one version (metrics) and how (identity: IDENTITY_KEYS)."""

    version: int
    metrics: dict[str, float]
    identity: dict[str, str]


@dataclass(frozen=True)
class Decision:
    """One promotion decision: decision is promoted, refused or skipped (nothing to decide)."""

    version: int | None  # the challenger; None when nothing was registered
    decision: str
    reason: str
    champion_before: int | None = None
    champion: int | None = None  # after the decision
    metric: str | None = None
    challenger_value: float | None = None
    champion_value: float | None = None
    margin: float | None = None

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"

    def report(self) -> dict:
        """reports/promote.json: the decision, its reason and the numbers behind it."""
        return {**asdict(self), "promoted": self.promoted}

    def summary(self) -> str:
        """One line for people: `promoted ganops-generator v7: <reason>; champion is v7`."""
        who = f"{REGISTERED_MODEL} v{self.version}" if self.version is not None else "nothing"
        champion = f"; champion is v{self.champion}" if self.champion is not None else "; no champion"
        return f"{self.decision} {who}: {self.reason}{champion}"


def score_tags(*, metrics: dict, details: dict, reference: dict) -> dict[str, str]:
    """evaluate's outputs -> the version tags promote compares: evaluate.<metric> for every number of
    metrics.json, and evaluate.<identity key> (the test set and feature spaces it was scored in)."""
    identity = {
        "data_manifest_sha256": reference["data_manifest_sha256"],
        "num_samples": details["num_samples"],
        "feature_extractor_version": details["feature_extractor_version"],
        "inception_weights_sha256": details.get("inception_weights_sha256"),  # None: no fid_inception
    }
    if reference["feature_extractor_version"] != details["feature_extractor_version"]:
        raise ValueError(
            f"the evaluation used feature extractor {details['feature_extractor_version']} but the reference "
            f"is {reference['feature_extractor_version']}: rerun evaluate (dvc repro evaluate)")
    tags = {f"{SCORE_PREFIX}{k}": repr(float(v)) for k, v in sorted(metrics.items())
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tags.update({f"{SCORE_PREFIX}{k}": str(v) for k, v in identity.items() if v is not None})
    return tags


def scores_from_tags(version: int, tags: dict[str, str]) -> Scores:
    """A version's Scores from its evaluate.* tags (written by the promote stage)."""
    scored = {k[len(SCORE_PREFIX):]: v for k, v in tags.items() if k.startswith(SCORE_PREFIX)}
    identity = {k: scored.pop(k) for k in IDENTITY_KEYS if k in scored}
    return Scores(version=version, metrics={k: float(v) for k, v in scored.items()}, identity=identity)


def decide(challenger: Scores, champion: Scores | None, *, metric: str, margin: float) -> Decision:
    """The rule (module doc) as a pure function of two versions' scores; nothing is changed."""
    v = challenger.version
    common = dict(version=v, margin=margin, champion_before=None if champion is None else champion.version)
    if not challenger.metrics:
        return Decision(**common, decision="refused", champion=common["champion_before"],
                        reason=f"v{v} was never scored (no evaluate.* tags): the promote stage of the pipeline "
                               "that registered it writes them (dvc repro promote)")
    if champion is None:
        return Decision(**common, decision="promoted", reason="no champion yet", champion=v)
    if champion.version == v:
        return Decision(**common, decision="skipped", reason=f"v{v} is already the champion", champion=v)
    c = champion.version
    kept = dict(**common, champion=c)
    if metric == "auto":
        both = all("fid_inception" in s.metrics for s in (challenger, champion))
        metric = "fid_inception" if both else "fid"
    for s in (challenger, champion):
        if metric not in s.metrics:
            why = (" (never scored: no evaluate.* tags; move the alias by hand to replace it)" if not s.metrics
                   else " (scored with evaluate.inception false)" if metric == "fid_inception" else "")
            return Decision(**kept, decision="refused", metric=metric,
                            reason=f"v{s.version} has no {metric}{why}: nothing to compare")
    mismatched = [k for k in (*IDENTITY_ALWAYS, *IDENTITY_OF[metric])
                  if challenger.identity.get(k) is None or challenger.identity.get(k) != champion.identity.get(k)]
    new, old = challenger.metrics[metric], champion.metrics[metric]
    numbers = dict(metric=metric, challenger_value=new, champion_value=old)
    if mismatched:
        detail = "; ".join(f"{k} {_short(challenger.identity.get(k))} vs {_short(champion.identity.get(k))}"
                           for k in mismatched)
        return Decision(**kept, **numbers, decision="refused",
                        reason=f"not scored like champion v{c}, so its {metric} does not compare: {detail}")
    if not (math.isfinite(new) and math.isfinite(old)):
        return Decision(**kept, **numbers, decision="refused",
                        reason=f"{metric} is not a finite number: v{v} {new}, champion v{c} {old}")
    bar = old * (1 - margin)
    if new < bar:
        return Decision(**common, **numbers, decision="promoted", champion=v,
                        reason=f"{metric} {new:.4g} < champion v{c}'s {old:.4g} x (1 - {margin:g}) = {bar:.4g}")
    return Decision(**kept, **numbers, decision="refused",
                    reason=f"{metric} {new:.4g} is not below champion v{c}'s {old:.4g} x (1 - {margin:g}) = {bar:.4g}")


def _short(value: str | None) -> str:
    """Hashes cut to 12 characters: enough to tell them apart in a reason."""
    return "none" if value is None else value[:12]


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise read-decide-move on one machine: queued experiments (`dvc queue start -j 2`) promote
    into the same store, and two deciding against the same old champion would race for the alias."""
    name = hashlib.sha256(uri.encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"ganops-promote-{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def promote_version(registry: Registry, version: int, *, metric: str, margin: float) -> Decision:
    """Decide on `version` against the current champion from their evaluate.* tags, move the alias
    when it wins, and record the decision as tags on both versions. Returns the Decision."""
    with _store_lock(registry.uri):
        challenger = scores_from_tags(version, registry.tags(version))
        current = registry.alias_version(CHAMPION)
        champion = None if current is None else scores_from_tags(current, registry.tags(current))
        decision = decide(challenger, champion, metric=metric, margin=margin)
        if decision.decision == "skipped":
            return decision
        if decision.promoted:
            registry.set_alias(CHAMPION, version)
        registry.set_tags(version, {"promote.decision": decision.decision, "promote.reason": decision.reason,
                                    "promote.against": "none" if current is None else current})
        if current is not None:  # the champion keeps the history of its challenges
            registry.set_tags(current, {f"promote.challenge.v{version}": f"{decision.decision}: {decision.reason}"})
    return decision


def _load(path: str | Path, keys: tuple[str, ...], *, stage: str) -> dict:
    """A JSON object from an earlier stage, with `keys`; else an error naming the file and the fix."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the {stage} stage first (dvc repro {stage})")
    data = json.loads(path.read_text())
    missing = [k for k in keys if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"{path} lacks {missing}: it was written by older code; rerun dvc repro -f {stage}")
    return data


def run_promote(*, export_report: str | Path, metrics_path: str | Path, details_path: str | Path,
                reference_path: str | Path, report_path: str | Path, params: PromoteParams) -> Decision:
    """The promote stage: tag the version export registered with evaluate's metrics and how they were
    scored, then (promote.enabled) decide; write reports/promote.json. Returns the Decision.

    Nothing registered (export.register false) or promote.enabled false: decision skipped, said why.
    """
    export = _load(export_report, ("registered_version", "registered_model", "sha256"), stage="export")
    version = export.get("registered_version")
    if version is None:
        decision = Decision(version=None, decision="skipped",
                            reason="export.register is false: no registered version to promote")
    else:
        registry = Registry(export["registered_model"])
        recorded = registry.tags(version).get("model_sha256")
        if recorded != export["sha256"]:
            raise ValueError(
                f"{registry.name} v{version} in the registry holds sha256 {_short(recorded)}, not the exported "
                f"{export['sha256'][:12]} ({export_report}): another store; rerun export (dvc repro -f export)")
        tags = score_tags(metrics=_load(metrics_path, ("fid",), stage="evaluate"),
                          details=_load(details_path, ("num_samples", "feature_extractor_version"), stage="evaluate"),
                          reference=_load(reference_path, ("data_manifest_sha256", "feature_extractor_version"),
                                          stage="reference"))
        registry.set_tags(version, tags, replace_prefix=SCORE_PREFIX)
        if params.enabled:
            decision = promote_version(registry, version, metric=params.metric, margin=params.margin)
        else:
            decision = Decision(version=version, decision="skipped", margin=params.margin,
                                champion=registry.alias_version(CHAMPION),
                                reason=f"promote.enabled is false: v{version} is tagged with its scores; "
                                       f"decide with `ganops promote --version {version}`")
    write_json(report_path, decision.report())
    return decision
