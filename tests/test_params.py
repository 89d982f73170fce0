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


@pytest.mark.parametrize("raw,message", [
    ({"train": {"loss": "lsgan"}}, r"unknown train\.loss 'lsgan' in params\.yaml: choose one of minimax, "
                                   r"non_saturating, hinge, wgan_gp"),
    ({"train": {"ema_bn": "x"}}, r"unknown train\.ema_bn 'x'"),
    ({"train": {"device": "tpu"}}, r"unknown train\.device 'tpu'"),
    ({"train": {"precision": "int8"}}, r"unknown train\.precision 'int8'"),
    ({"train": {"augment": ["flip"]}}, r"unknown train\.augment policy 'flip'"),
    ({"train": {"augment": ["cutout", "cutout"]}}, r"train\.augment lists a policy twice"),
    ({"train": {"betas_d": [0.5]}}, r"train\.betas_d must be \[beta1, beta2\]"),
    ({"train": {"batch_size": 0}}, r"train\.batch_size must be >= 1"),
    ({"train": {"lr_g": 0}}, r"train\.lr_g must be > 0"),
    ({"train": {"lr_rampdown": 1.5}}, r"train\.lr_rampdown is a fraction of the run"),
    ({"train": {"curve_samples": 1}}, r"train\.curve_samples must be 0 \(off\) or at least 2"),
    ({"model": {"d_norm": "batchh"}}, r"unknown model\.d_norm 'batchh'.*none, batch, spectral"),
    ({"model": {"g_upsample": "pixelshuffle"}}, r"unknown model\.g_upsample 'pixelshuffle'"),
    ({"model": {"arch": "resnet"}}, r"unknown model\.arch 'resnet'"),
    ({"model": {"width": 0}}, r"model\.width must be >= 1"),
    ({"model": {"depth": -1}}, r"model\.depth must be >= 0"),
    ({"model": {"arch": "mlp", "depth": 1}}, r"model\.depth=1 needs model\.arch=dcgan"),
    ({"model": {"d_projection": "mean"}}, r"unknown model\.d_projection 'mean'.*flat, pooled"),
    ({"model": {"d_projection": "pooled"}}, r"model\.d_projection=pooled needs model\.conditional=true"),
    ({"model": {"d_norm": "batch"}, "train": {"loss": "wgan_gp"}}, r"d_norm batch couples the samples"),
    ({"model": {"d_norm": "batch"}, "train": {"r1_gamma": 1.0}}, r"d_norm batch couples the samples"),
    ({"train": {"seed": -1}}, r"train\.seed must be >= 0"),
    ({"train": {"ema_kimg": float("nan")}}, r"train\.ema_kimg must be >= 0"),
    ({"data": {"dataset": "cifar10"}}, r"unknown data\.dataset 'cifar10'.*fashion-mnist, mnist, kmnist, idx"),
    ({"data": {"dataset": "idx"}}, r"data\.dataset is 'idx' but data\.idx_dir is empty"),
    ({"data": {"retries": 0}}, r"data\.retries must be >= 1"),
    ({"data": {"read_timeout_s": 0}}, r"data\.read_timeout_s must be > 0"),
    ({"prepare": {"subset": -5}}, r"prepare\.subset must be >= 0"),
    ({"classifier": {"lr": -1e-3}}, r"classifier\.lr must be > 0"),
    ({"classifier": {"feature_dim": 0}}, r"classifier\.feature_dim must be >= 1"),
    ({"evaluate": {"num_samples": 1}}, r"evaluate\.num_samples must be >= 2"),
    ({"evaluate": {"num_samples": 500}}, r"evaluate\.kid_subset_size \(1000\) exceeds evaluate\.num_samples \(500\)"),
    ({"evaluate": {"nearest_k": 0}}, r"evaluate\.nearest_k must be >= 1"),
    ({"evaluate": {"seed": -1}}, r"evaluate\.seed must be >= 0"),
    ({"evaluate": {"max_fid": -1}}, r"evaluate\.max_fid must be >= 0"),
    ({"export": {"opset": 17}}, r"export\.opset must be >= 18"),
    ({"export": {"parity_seeds": 1}}, r"export\.parity_seeds must be >= 2"),
    ({"export": {"parity_atol": 0}}, r"export\.parity_atol must be > 0"),
    ({"promote": {"metric": "kid"}}, r"unknown promote\.metric 'kid'.*auto, fid, fid_inception"),
    ({"promote": {"margin": 1.0}}, r"promote\.margin is a relative improvement, in \[0, 1\)"),
    ({"promote": {"margin": -0.1}}, r"promote\.margin is a relative improvement"),
])
def test_out_of_range_values_fail_at_parse_naming_the_key(raw, message):
    # At parse, so a bad `dvc exp run -S` fails in the first stage that reads params.yaml.
    with pytest.raises(P.ParamsError, match=message):
        P.parse(raw)


def test_the_penalties_parse_with_a_discriminator_norm_that_allows_them():
    p = P.parse({"model": {"d_norm": "spectral"}, "train": {"loss": "wgan_gp", "r1_gamma": 1.0}})
    assert (p.model.d_norm, p.train.loss, p.train.r1_gamma) == ("spectral", "wgan_gp", 1.0)


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
