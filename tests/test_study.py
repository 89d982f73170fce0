"""The quality study's scripts: its configurations are valid params, and the README table is table.py's."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from ganops.params import parse

STUDY = REPO / "study"


def _table_module():
    spec = importlib.util.spec_from_file_location("study_table", STUDY / "table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# (group, name, overrides) of every row of study/configs.yaml, read once at collection.
CONFIGURATIONS = [(group, name, overrides)
                  for group, rows in yaml.safe_load((STUDY / "configs.yaml").read_text()).items()
                  for name, overrides in rows.items()]


@pytest.mark.parametrize("group,name,overrides", [pytest.param(*c, id=c[1]) for c in CONFIGURATIONS])
def test_every_configuration_is_a_valid_params_override(group, name, overrides):
    """A typo in a key or a value would otherwise fail only when its experiment starts, maybe an
    hour into a study. Values are read as `dvc exp run -S` reads them: as YAML."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for override in overrides:
        key, _, value = override.partition("=")
        section, _, field = key.partition(".")
        assert section in raw and field in raw[section], f"{group}/{name}: {key} is not a params.yaml key"
        raw[section][field] = yaml.safe_load(value)
    parse(raw)  # a wrong type, choice or range, as every stage reads params.yaml


def test_configuration_names_are_unique_across_groups():
    # study/results.csv is keyed by name alone: a repeated name would be skipped as done.
    names = [name for _, name, _ in CONFIGURATIONS]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_seeds_are_pooled_into_mean_and_std():
    row = dict(group="final", command="dvc exp run -n x -S train.epochs=20", wall_s="600", fid="5.0",
               precision="0.7", recall="0.7", coverage="0.8", fid_real="0.7")
    rows = [{**row, "name": f"final-cond-s{seed}", "fid_inception": value}
            for seed, value in enumerate(("12.0", "13.0", "14.0"))]
    line = next(ln for ln in _table_module().table(rows).splitlines() if ln.startswith("| `final-cond`"))
    assert line == "| `final-cond` | 20 | 5.00 | 0.700 | 0.700 | 0.800 | 13.0 ± 1.0 (3 seeds) | 10 min |"


def test_study_readme_table_is_what_table_py_prints():
    """study/README.md's table is regenerated from study/results.csv, never edited by hand."""
    printed = subprocess.run([sys.executable, str(STUDY / "table.py")], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert printed in (STUDY / "README.md").read_text(), (
        "study/README.md's table differs from study/results.csv: replace it with `python study/table.py`")


def test_run_py_names_an_unknown_configuration():
    result = subprocess.run([sys.executable, str(STUDY / "run.py"), "final", "--only", "no-such-row"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "no-such-row" in result.stderr and "final-cond-s0" in result.stderr
