"""Champion and challenger: the promotion rule, on real versions in a real MLflow SQLite registry."""
from __future__ import annotations

import json
import math
import runpy
import shutil
from pathlib import Path

import mlflow
import pytest
import torch

from conftest import REPO
from ganops import cli
from ganops.export import run_export
from ganops.networks import Generator, NetConfig, save_generator
from ganops.params import ExportParams, PromoteParams
from ganops.promote import Scores, decide, promote_version, run_promote
from ganops.registry import CHALLENGER, CHAMPION, REGISTERED_MODEL, Registry
from ganops.tracking import Tracker, write_run_id

# MLflow 3.17 itself triggers this SQLAlchemy deprecation when it opens a store.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

SAME = {"data_manifest_sha256": "d" * 64, "num_samples": "10000", "feature_extractor_version": "cnn-v1-aaaa",
        "inception_weights_sha256": "i" * 64}
LINEAGE = {"git_commit": "c0ffee", "data_manifest_sha256": "d" * 64, "params_sha256": "p" * 64,
           "params_sha256_sections": "data,prepare,model,train", "dataset": "synthetic"}


def scores(version: int, identity: dict | None = None, **metrics: float) -> Scores:
    return Scores(version=version, metrics=metrics, identity=dict(SAME if identity is None else identity))


# --- the rule, as a pure function ------------------------------------------------------------------

def test_first_version_becomes_champion():
    d = decide(scores(1, fid=30.0), None, metric="auto", margin=0.02)
    assert (d.decision, d.champion, d.reason) == ("promoted", 1, "no champion yet")


def test_better_by_more_than_the_margin_is_promoted_and_the_margin_is_relative():
    d = decide(scores(2, fid=9.7), scores(1, fid=10.0), metric="fid", margin=0.02)
    assert d.promoted and d.champion == 2 and d.champion_before == 1
    assert (d.metric, d.challenger_value, d.champion_value) == ("fid", 9.7, 10.0)
    assert d.reason == "fid 9.7 < champion v1's 10 x (1 - 0.02) = 9.8"
    # 2% of 100 is 2: 97.9 passes, 98.1 does not.
    assert decide(scores(2, fid=97.9), scores(1, fid=100.0), metric="fid", margin=0.02).promoted
    assert not decide(scores(2, fid=98.1), scores(1, fid=100.0), metric="fid", margin=0.02).promoted


@pytest.mark.parametrize("new", [9.9, 9.8, 10.0, 12.0])
def test_within_the_margin_or_worse_is_refused_with_the_reason(new):
    d = decide(scores(2, fid=new), scores(1, fid=10.0), metric="auto", margin=0.02)
    assert (d.decision, d.champion, d.metric) == ("refused", 1, "fid")
    assert d.reason == f"fid {new:.4g} is not below champion v1's 10 x (1 - 0.02) = 9.8"


def test_margin_zero_still_needs_a_strictly_lower_score():
    assert not decide(scores(2, fid=10.0), scores(1, fid=10.0), metric="fid", margin=0.0).promoted
    assert decide(scores(2, fid=9.999), scores(1, fid=10.0), metric="fid", margin=0.0).promoted


def test_auto_compares_fid_inception_only_where_both_have_it():
    both = decide(scores(2, fid=50.0, fid_inception=9.0), scores(1, fid=5.0, fid_inception=10.0),
                  metric="auto", margin=0.02)
    assert both.promoted and both.metric == "fid_inception"  # a worse domain fid does not matter then
    one = decide(scores(2, fid=50.0, fid_inception=9.0), scores(1, fid=5.0), metric="auto", margin=0.02)
    assert (one.decision, one.metric) == ("refused", "fid")
    asked = decide(scores(2, fid=4.0, fid_inception=9.0), scores(1, fid=5.0), metric="fid_inception", margin=0.02)
    assert asked.decision == "refused"
    assert asked.reason == "v1 has no fid_inception (scored with evaluate.inception false): nothing to compare"


@pytest.mark.parametrize(("key", "metric"), [
    ("data_manifest_sha256", "fid"), ("num_samples", "fid"), ("feature_extractor_version", "fid"),
    ("data_manifest_sha256", "fid_inception"), ("inception_weights_sha256", "fid_inception"),
])
def test_scored_on_another_test_set_or_feature_space_is_refused(key, metric):
    other = {**SAME, key: "e" * 64}
    d = decide(scores(2, other, fid=1.0, fid_inception=1.0), scores(1, fid=10.0, fid_inception=10.0),
               metric=metric, margin=0.02)
    assert (d.decision, d.champion) == ("refused", 1)
    assert d.reason == (f"not scored like champion v1, so its {metric} does not compare: "
                        f"{key} {'e' * 12} vs {SAME[key][:12]}")


def test_what_does_not_shape_a_metric_does_not_block_it():
    # Another classifier changes fid's feature space, not Inception's.
    other = {**SAME, "feature_extractor_version": "cnn-v1-bbbb"}
    assert decide(scores(2, other, fid=1.0, fid_inception=9.0), scores(1, fid=10.0, fid_inception=10.0),
                  metric="fid_inception", margin=0.02).promoted


def test_not_a_number_never_wins_and_an_unscored_version_is_refused():
    d = decide(scores(2, fid=math.nan), scores(1, fid=10.0), metric="fid", margin=0.02)
    assert d.decision == "refused" and "not a finite number" in d.reason
    unscored = Scores(version=2, metrics={}, identity={})
    assert decide(unscored, None, metric="auto", margin=0.02).decision == "refused"
    assert decide(scores(2, fid=9.0), Scores(version=1, metrics={}, identity={}), metric="auto",
                  margin=0.02).reason.startswith("v1 has no fid (never scored")
    assert decide(scores(1, fid=9.0), scores(1, fid=9.0), metric="auto", margin=0.02).decision == "skipped"


# --- the registry: real versions in a real SQLite store --------------------------------------------

@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    # One store per module (its migrations take about a second); tests use registered models of their own.
    return tmp_path_factory.mktemp("store")


@pytest.fixture
def uri(store_dir: Path, monkeypatch) -> str:
    value = f"sqlite:///{store_dir / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", value)
    for name in ("DVC_ROOT", "DVC_EXP_NAME"):
        monkeypatch.delenv(name, raising=False)
    return value


def registered(uri: str, name: str, *scored: tuple[dict, dict]) -> Registry:
    """A registered model `name` with one version per (metrics, identity), tagged as the stage tags."""
    client = mlflow.MlflowClient(uri)
    client.create_registered_model(name)
    registry = Registry(name, uri=uri)
    for metrics, identity in scored:
        version = int(client.create_model_version(name, source="file:///nowhere", run_id=None).version)
        registry.set_tags(version, {**{f"evaluate.{k}": repr(v) for k, v in metrics.items()},
                                    **{f"evaluate.{k}": v for k, v in identity.items()}})
    return registry


def test_champion_moves_only_to_a_better_challenger_and_both_versions_say_why(uri: str):
    registry = registered(uri, "moves", ({"fid": 10.0}, SAME), ({"fid": 8.0}, SAME), ({"fid": 7.9}, SAME),
                          ({"fid": 1.0}, {**SAME, "data_manifest_sha256": "f" * 64}))
    client = mlflow.MlflowClient(uri)
    tags = lambda v: client.get_model_version("moves", str(v)).tags  # noqa: E731

    first = promote_version(registry, 1, metric="auto", margin=0.02)
    assert (first.decision, registry.alias_version(CHAMPION)) == ("promoted", 1)
    assert (tags(1)["promote.decision"], tags(1)["promote.against"]) == ("promoted", "none")

    better = promote_version(registry, 2, metric="auto", margin=0.02)
    assert (better.decision, better.champion_before, registry.alias_version(CHAMPION)) == ("promoted", 1, 2)
    assert tags(2)["promote.reason"] == better.reason and tags(2)["promote.against"] == "1"
    assert tags(1)["promote.challenge.v2"] == f"promoted: {better.reason}"

    within = promote_version(registry, 3, metric="auto", margin=0.02)  # 7.9 is not below 8 x 0.98
    assert (within.decision, registry.alias_version(CHAMPION)) == ("refused", 2)
    assert tags(3)["promote.decision"] == "refused" and "is not below champion v2's 8" in tags(3)["promote.reason"]
    assert tags(2)["promote.challenge.v3"] == f"refused: {within.reason}"

    elsewhere = promote_version(registry, 4, metric="auto", margin=0.02)  # far better, on other data
    assert (elsewhere.decision, registry.alias_version(CHAMPION)) == ("refused", 2)
    assert "data_manifest_sha256 ffffffffffff vs dddddddddddd" in tags(4)["promote.reason"]

    again = promote_version(registry, 2, metric="auto", margin=0.02)
    assert (again.decision, again.reason) == ("skipped", "v2 is already the champion")


def _tiny_gan(directory: Path) -> Path:
    torch.manual_seed(0)
    save_generator(directory, Generator(NetConfig(arch="mlp", z_dim=16, width=8, conditional=False)),
                   {"lineage": LINEAGE, "classes": None})
    return directory


def _scored(directory: Path, *, fid: float, manifest: str = "d" * 64) -> dict[str, Path]:
    """What evaluate and reference write, as far as promote reads it."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {"metrics": directory / "metrics.json", "details": directory / "details.json",
             "reference": directory / "reference.json"}
    files["metrics"].write_text(json.dumps({"fid": fid, "kid_mean": 0.01, "precision": 0.5}))
    files["details"].write_text(json.dumps({"feature_extractor_version": "cnn-v1-aaaa", "num_samples": 100,
                                            "inception_weights_sha256": None}))
    files["reference"].write_text(json.dumps({"data_manifest_sha256": manifest,
                                              "feature_extractor_version": "cnn-v1-aaaa"}))
    return files


def _export(tmp_path: Path, name: str, *, register: bool = True) -> Path:
    """Export the tiny model from a training run of its own: a new registered version each time."""
    training = Tracker.start(run_name=name, tags={})
    training.close()
    run_file = tmp_path / name / "mlflow_run.json"
    write_run_id(run_file, training.run_id)
    report = tmp_path / name / "export.json"
    run_export(model_dir=tmp_path / "gan", run_file=run_file, onnx_path=tmp_path / name / "generator.onnx",
               report_path=report, params=ExportParams(parity_seeds=2, register=register))
    return report


def test_export_names_the_challenger_and_the_stage_decides_and_reports(tmp_path: Path, uri: str, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "exp-a")
    _tiny_gan(tmp_path / "gan")
    client = mlflow.MlflowClient(uri)
    first = json.loads(_export(tmp_path, "a").read_text())
    v1 = first["registered_version"]
    version = client.get_model_version(REGISTERED_MODEL, str(v1))
    assert version.aliases == [CHALLENGER]
    assert {k: version.tags[k] for k in (*LINEAGE, "model_sha256", "dvc_exp_name")} == {
        **LINEAGE, "model_sha256": first["sha256"], "dvc_exp_name": "exp-a"}
    assert version.tags["train_run_id"] == first["mlflow_run_id"]

    files = _scored(tmp_path / "scores-a", fid=10.0)
    report = tmp_path / "promote.json"
    decision = run_promote(export_report=tmp_path / "a" / "export.json", metrics_path=files["metrics"],
                           details_path=files["details"], reference_path=files["reference"],
                           report_path=report, params=PromoteParams())
    assert decision.promoted
    assert json.loads(report.read_text()) == {
        "version": v1, "decision": "promoted", "promoted": True, "reason": "no champion yet",
        "champion_before": None, "champion": v1, "metric": None, "challenger_value": None,
        "champion_value": None, "margin": 0.02}
    tags = client.get_model_version(REGISTERED_MODEL, str(v1)).tags
    assert {k: v for k, v in tags.items() if k.startswith("evaluate.")} == {
        "evaluate.fid": "10.0", "evaluate.kid_mean": "0.01", "evaluate.precision": "0.5",
        "evaluate.data_manifest_sha256": "d" * 64, "evaluate.num_samples": "100",
        "evaluate.feature_extractor_version": "cnn-v1-aaaa"}

    # A second export moves challenger; scored worse, it is refused and champion stays.
    v2 = json.loads(_export(tmp_path, "b").read_text())["registered_version"]
    assert client.get_registered_model(REGISTERED_MODEL).aliases == {CHAMPION: v1, CHALLENGER: v2}
    worse = _scored(tmp_path / "scores-b", fid=9.9)
    refused = run_promote(export_report=tmp_path / "b" / "export.json", metrics_path=worse["metrics"],
                          details_path=worse["details"], reference_path=worse["reference"],
                          report_path=report, params=PromoteParams())
    assert (refused.decision, refused.champion) == ("refused", v1)
    assert json.loads(report.read_text())["reason"] == f"fid 9.9 is not below champion v{v1}'s 10 x (1 - 0.02) = 9.8"
    # promote.enabled false: the version is tagged with its scores, nothing is decided.
    off = run_promote(export_report=tmp_path / "b" / "export.json", metrics_path=worse["metrics"],
                      details_path=worse["details"], reference_path=worse["reference"],
                      report_path=report, params=PromoteParams(enabled=False))
    assert (off.decision, off.champion) == ("skipped", v1)
    assert off.reason == f"promote.enabled is false: v{v2} is tagged with its scores; decide with `ganops promote --version {v2}`"

    # `ganops promote` decides the same way, on the challenger by default, with the rule from flags.
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    assert cli.main(["promote"]) == 0  # same rule, same answer
    assert Registry(uri=uri).alias_version(CHAMPION) == v1
    assert cli.main(["promote", "--version", str(v2), "--margin", "0.005", "--report", "cli.json"]) == 0
    assert Registry(uri=uri).alias_version(CHAMPION) == v2
    cli_report = json.loads((tmp_path / "cli.json").read_text())
    assert (cli_report["decision"], cli_report["champion_before"], cli_report["margin"]) == ("promoted", v1, 0.005)
    assert client.get_model_version(REGISTERED_MODEL, str(v1)).tags[f"promote.challenge.v{v2}"].startswith("promoted")

    # export.register false: nothing registered, the stage says so and exits 0.
    unregistered = _export(tmp_path, "c", register=False)
    stage_main = runpy.run_path(str(REPO / "stages" / "promote.py"))["main"]  # not as __main__: no sys.exit
    assert stage_main([str(unregistered), *(str(worse[k]) for k in ("metrics", "details", "reference")),
                       "skipped.json"]) == 0
    assert json.loads((tmp_path / "skipped.json").read_text())["reason"] == (
        "export.register is false: no registered version to promote")
    assert Registry(uri=uri).alias_version(CHAMPION) == v2


def test_cli_errors_say_what_to_do(tmp_path: Path, uri: str, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["promote"]) == 2
    assert "params.yaml not found" in capsys.readouterr().err
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    assert cli.main(["promote", "--version", "999"]) == 1
    assert "ganops-generator v999 is not in the MLflow registry" in capsys.readouterr().err
    assert cli.main(["promote", "--version", "1", "--margin", "1.5"]) == 2
    assert "promote.margin is a relative improvement" in capsys.readouterr().err
