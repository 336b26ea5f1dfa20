"""Config loading: unknown keys, bad values, overrides, method rules, round trip."""

from __future__ import annotations

import pytest
import yaml

from domainclip.errors import ConfigError
from domainclip.finetune.config import config_diff, describe_fields, load_config, valid_keys

M = ["data.manifest=m.csv"]


def test_defaults_are_the_default_recipe():
    cfg = load_config(None, M)
    assert cfg.method.name == "lora"
    assert cfg.tower_modes == ("locked", "lora")
    assert cfg.method.train_projections and cfg.method.train_logit_scale


def test_unknown_nested_key_lists_valid_keys_and_suggests():
    with pytest.raises(ConfigError) as e:
        load_config({"method": {"lora": {"alpah": 4}}}, M)
    msg = str(e.value)
    assert "method.lora.alpah" in msg
    assert "did you mean 'alpha'" in msg
    for key in ("method.lora.r", "method.lora.alpha", "method.lora.dropout"):
        assert key in msg


def test_unknown_override_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config(None, [*M, "optim.learning_rate=1"])
    assert "optim.learning_rate" in str(e.value) and "optim.lr" in str(e.value)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("optim.lr=0", "(0, 1]"),
        ("optim.lr=2", "(0, 1]"),
        ("method.lora.r=0", "[1, 1024]"),
        ("method.lora.dropout=1", "[0, 1)"),
        ("train.batch_size=1", "[2, 65536]"),
        ("method.name=prefix_tuning", "'lora'"),
        ("train.max_steps=ten", "integer"),
        ("train.deterministic=maybe", "true or false"),
    ],
)
def test_bad_values_name_the_allowed_range(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [*M, override])
    assert override.split("=")[0] in str(e.value)
    assert needle in str(e.value)


def test_override_values_are_yaml():
    cfg = load_config(
        None, [*M, "optim.lr=5e-4", "data.classes=[a, b]", "method.tip_adapter.alpha=2"]
    )
    assert cfg.optim.lr == 5e-4
    assert cfg.data.classes == ["a", "b"]
    assert cfg.method.tip_adapter.alpha == [2.0]


def test_method_rules():
    cfg = load_config({"method": {"name": "full"}}, M)
    assert cfg.tower_modes == ("full", "full")
    with pytest.raises(ConfigError, match="keeps both towers frozen"):
        load_config({"method": {"name": "clip_adapter", "text_tower": "lora"}}, M)
    with pytest.raises(ConfigError, match="trains both towers"):
        load_config({"method": {"name": "full", "image_tower": "locked"}}, M)
    with pytest.raises(ConfigError, match="data.manifest"):
        load_config(None, [])


def test_round_trip_through_yaml_and_diff(tmp_path):
    cfg = load_config(None, [*M, "method.lora.r=4"])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    again = load_config(path)
    assert again.to_dict() == cfg.to_dict()
    other = load_config(path, ["method.lora.r=8", "train.progress=false"])
    diff = config_diff(cfg.to_dict(), other.to_dict())
    assert diff == ["method.lora.r: 4 -> 8"]  # train.progress may change on resume


def test_every_key_has_help():
    keys = valid_keys()
    assert "eval.metric" in keys and "method.clip_adapter.ratio" in keys
    assert all(help_ for _, _, help_ in describe_fields())
