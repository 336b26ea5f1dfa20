"""Config loading: unknown keys, bad values, overrides, method rules, round trip."""

from __future__ import annotations

import pytest
import yaml

from domainclip.errors import ConfigError
from domainclip.finetune.config import (
    config_diff,
    describe_fields,
    load_config,
    migrate_config_dict,
    valid_keys,
)

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


def test_fit_policy_and_input_size_are_settings():
    cfg = load_config(None, M)
    assert cfg.data.fit == "auto" and cfg.data.image_size is None  # letterbox or tile, never crop
    cfg = load_config(None, [*M, "data.fit=crop", "data.image_size=448"])
    assert cfg.data.fit == "crop" and cfg.data.image_size == 448
    assert cfg.to_dict()["data"]["fit"] == "crop" and cfg.to_dict()["data"]["image_size"] == 448
    with pytest.raises(ConfigError, match=r"data.fit = 'pad' is not allowed.*'letterbox', 'crop'"):
        load_config(None, [*M, "data.fit=pad"])
    with pytest.raises(ConfigError, match=r"data.image_size.*\[16, 4096\]"):
        load_config(None, [*M, "data.image_size=8"])


def test_saved_config_without_fit_migrates_to_crop(caplog):
    """Runs written before fit policies trained with resize + centre crop."""
    old = load_config(None, M).to_dict()
    del old["data"]["fit"], old["data"]["image_size"]
    with caplog.at_level("INFO", logger="domainclip.finetune.config"):
        migrated = migrate_config_dict(old, "RUN/config.yaml")
    assert migrated["data"]["fit"] == "crop" and "fit" not in old["data"]
    assert "RUN/config.yaml: records no data.fit" in caplog.text
    assert load_config(migrated).data.fit == "crop"


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


# ---------------------------------------------------------------------------------------------
# Strict YAML and per-method sections


def test_config_file_with_a_key_twice_names_the_key_and_both_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "data:\n  manifest: m.csv\noptim:\n  lr: 1.0e-3\n  warmup_steps: 2\n  lr: 0.1\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg and "'lr'" in msg and "lines 4 and 6" in msg


@pytest.mark.parametrize(
    "name, section",
    [
        ("lora", "lora"),
        ("full", None),
        ("clip_adapter", "clip_adapter"),
        ("tip_adapter", "tip_adapter"),
        ("linear_probe", "linear_probe"),
    ],
)
def test_resolved_config_records_only_the_chosen_methods_settings(name, section):
    cfg = load_config(None, [*M, f"method.name={name}"])
    method = cfg.to_dict()["method"]
    sections = {"lora", "clip_adapter", "tip_adapter", "linear_probe"} & set(method)
    assert sections == ({section} if section else set())
    if section:
        assert method[section] == describe_defaults(f"method.{section}.")
        assert cfg.method.settings is getattr(cfg.method, section)
    else:
        assert cfg.method.settings is None


def describe_defaults(prefix: str) -> dict:
    return {k[len(prefix) :]: d for k, d, _ in describe_fields() if k.startswith(prefix)}


def test_other_methods_settings_are_checked_but_not_recorded(caplog):
    with pytest.raises(ConfigError, match="method.tip_adapter.shots"):
        load_config(None, [*M, "method.tip_adapter.shots=-1"])
    with caplog.at_level("INFO", logger="domainclip.finetune.config"):
        cfg = load_config(None, [*M, "method.linear_probe.max_iter=50"])
    assert cfg.method.name == "lora" and "linear_probe" not in cfg.to_dict()["method"]
    assert "method.linear_probe" in caplog.text and "not recorded" in caplog.text


def test_old_layout_with_every_methods_settings_still_loads(caplog):
    old = {  # config.yaml as runs wrote it before per-method sections
        "data": {"manifest": "m.csv"},
        "method": {
            "name": "clip_adapter",
            "image_tower": "locked",
            "text_tower": "locked",
            "train_projections": True,
            "train_logit_scale": True,
            "lora": {"r": 8, "alpha": 16.0, "dropout": 0.0, "image_targets": "", "text_targets": ""},
            "clip_adapter": {"reduction": 8, "ratio": 0.3, "image": True, "text": True},
            "tip_adapter": {"train_keys": True, "alpha": [1.0], "beta": [1.0], "shots": 0,
                            "epochs": 20, "lr": 0.001},
            "linear_probe": {"C": [1.0], "max_iter": 2000},
        },
    }  # fmt: skip
    with caplog.at_level("INFO", logger="domainclip.finetune.config"):
        cfg = load_config(old)
    assert "method.lora, method.tip_adapter, method.linear_probe" in caplog.text
    assert cfg.method.clip_adapter.reduction == 8 and cfg.method.clip_adapter.text
    assert cfg.method.settings is cfg.method.clip_adapter
    method = cfg.to_dict()["method"]
    assert set(method) == {
        "name", "image_tower", "text_tower", "train_projections", "train_logit_scale",
        "clip_adapter",
    }  # fmt: skip
    # the migrated section equals the current recording, so an old run still resumes
    with caplog.at_level("INFO", logger="domainclip.finetune.config"):
        assert migrate_config_dict(old, "RUN/config.yaml")["method"] == method
    assert "RUN/config.yaml: records settings of methods other than 'clip_adapter'" in caplog.text
    assert old["method"] != method and "lora" in old["method"]  # the input was copied


def test_resume_of_a_run_written_in_the_old_layout(tmp_path):
    from domainclip.finetune.run import _prepare_run_dir

    cfg = load_config(None, M)
    old = cfg.to_dict()
    old["method"]["linear_probe"] = {"C": [1.0], "max_iter": 2000}
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    assert _prepare_run_dir(cfg, run, resume=True) is None  # no checkpoint yet: starts in it
    other = load_config(None, [*M, "method.lora.r=4"])
    with pytest.raises(Exception, match=r"method.lora.r: 8 -> 4"):
        _prepare_run_dir(other, run, resume=True)


def test_resume_of_a_run_written_before_fit_policies_keeps_its_crop(tmp_path):
    from domainclip.finetune.run import _prepare_run_dir

    old = load_config(None, M).to_dict()
    del old["data"]["fit"], old["data"]["image_size"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    # it trained with crop: resuming with the new default (auto: letterbox or tile) would change
    # its input
    with pytest.raises(Exception, match=r"data.fit: 'crop' -> 'auto'"):
        _prepare_run_dir(load_config(None, M), run, resume=True)
    assert _prepare_run_dir(load_config(None, [*M, "data.fit=crop"]), run, resume=True) is None


def test_resume_refuses_a_saved_config_with_a_key_twice(tmp_path):
    from domainclip.finetune.run import _prepare_run_dir

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("method:\n  name: lora\n  name: full\n")
    with pytest.raises(ConfigError, match=r"'name' appears twice \(lines 2 and 3\)"):
        _prepare_run_dir(load_config(None, M), run, resume=True)


def test_shipped_recipes_give_only_their_own_methods_settings():
    from domainclip.finetune.config import METHOD_SETTINGS
    from domainclip.io import load_yaml
    from domainclip.resources import CONFIGS_DIR

    recipes = sorted(CONFIGS_DIR.glob("*.yaml"))
    assert len(recipes) >= 7
    for path in recipes:
        method = load_yaml(path)["method"]
        given = set(method) & set(METHOD_SETTINGS)
        assert given <= {method["name"]}, f"{path.name}: settings of {given - {method['name']}}"
        cfg = load_config(path, M)
        assert set(cfg.to_dict()["method"]) & set(METHOD_SETTINGS) <= {cfg.method.name}
