"""The params loader: every section typed, unknown or mistyped keys named in the error."""
from __future__ import annotations

from pathlib import Path

import pytest

from ganops import params as P

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_load_and_match_dataclass_defaults():
    # params.yaml lists every key: a key only in code would be invisible to `dvc exp run -S`.
    loaded = P.load(REPO / "params.yaml")
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in P.flatten(P.Params()).items():
        name, key = section.split(".")
        assert key in raw[name], f"{section} missing from params.yaml"
    assert isinstance(loaded.train.lr_g, float)
    assert loaded.data.mirrors == ()


def test_unknown_key_names_key_and_section():
    with pytest.raises(P.ParamsError, match=r"unknown key 'lr' in section 'train'"):
        P.parse({"train": {"lr": 0.1}})


def test_unknown_section_is_named():
    with pytest.raises(P.ParamsError, match=r"unknown section 'trian'"):
        P.parse({"trian": {}})


def test_mistyped_value_is_named():
    with pytest.raises(P.ParamsError, match=r"train\.epochs: expected int, got 'five'"):
        P.parse({"train": {"epochs": "five"}})
    with pytest.raises(P.ParamsError, match=r"model\.conditional: expected bool"):
        P.parse({"model": {"conditional": "yes"}})
    with pytest.raises(P.ParamsError, match=r"train\.epochs: expected int, got True"):
        P.parse({"train": {"epochs": True}})


def test_coercions_ints_to_floats_lists_to_tuples_and_optional():
    p = P.parse({"train": {"lr_g": 1}, "data": {"mirrors": ["/a", "http://127.0.0.1:1/"]},
                 "evaluate": {"max_fid": 50}})
    assert p.train.lr_g == 1.0 and isinstance(p.train.lr_g, float)
    assert p.data.mirrors == ("/a", "http://127.0.0.1:1/")
    assert p.evaluate.max_fid == 50.0
    assert P.parse({"evaluate": {"max_fid": None}}).evaluate.max_fid is None


def test_sections_are_frozen():
    p = P.parse({})
    with pytest.raises(AttributeError):
        p.train.epochs = 3  # type: ignore[misc]


def test_params_hash_changes_with_any_value_and_only_then():
    a, b = P.parse({}), P.parse({"train": {"seed": 1}})
    assert P.params_hash(a) == P.params_hash(P.parse({}))
    assert P.params_hash(a) != P.params_hash(b)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(P.ParamsError, match="not found"):
        P.load(tmp_path / "params.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(P.ParamsError, match="not valid YAML"):
        P.load(bad)
