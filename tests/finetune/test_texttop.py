"""Top-N text LoRA over cached lower layers (domainclip.finetune.texttop)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from domainclip.finetune.adaptation import prepare
from domainclip.finetune.config import load_config, migrate_config_dict
from domainclip.finetune.methods.lora import layer_index
from domainclip.finetune.texttop import (
    FrozenTextCache,
    PooledText,
    TextTop,
    build_text_top,
    choose_text_tower,
    length_chunks,
    text_cache_key,
    text_stack,
)
from domainclip.models import load_backbone

TEXTS = [
    "a scratch",
    "two long scratches in the upper left of a steel surface",
    "x",
    "patient with bilateral opacities and a history of fever, " * 12,
]


@pytest.fixture(scope="module")
def default_adapt():
    """The embedded default with LoRA on its top 2 text layers, adapters made non-zero."""
    torch.manual_seed(0)
    cfg = load_config(None, ["data.manifest=x", "method.lora.text_layers=2"])
    adapt = prepare(load_backbone("default"), cfg.method)
    for name, p in adapt.trainable_parameters().items():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)  # peft starts B at zero: make the adapters matter
    return cfg, adapt


def test_lora_only_on_the_top_layers(default_adapt):
    _, adapt = default_adapt
    names = [n for n in adapt.trainable_parameters() if "lora_A" in n]
    layers = {layer_index(n.split("transformer.", 1)[1]) for n in names}
    assert layers == {4, 5}  # MiniLM has 6 layers: 0..5
    assert len(names) == 2 * 6  # query, key, value, attention.output.dense, intermediate, output
    full = prepare(load_backbone("default"), load_config(None, ["data.manifest=x", "method.lora.text_layers=0"]).method)
    all_layers = {
        layer_index(n.split("transformer.", 1)[1]) for n in full.trainable_parameters() if "lora_A" in n
    }
    assert all_layers == set(range(6))


def test_cached_top_forward_equals_full_forward(default_adapt):
    cfg, adapt = default_adapt
    top = build_text_top(cfg, adapt, torch.device("cpu"), TEXTS)
    assert top is not None and top.cache.stack.split == 4
    adapt.set_train(False)
    with torch.no_grad():
        cached = top.encode(TEXTS)
        full = adapt.model.encode_text(adapt.bb.tokenizer(TEXTS))
    assert cached.shape == full.shape == (4, 256)
    torch.testing.assert_close(cached, full, atol=2e-5, rtol=1e-4)
    # gradients reach the top layers' LoRA and the projection, never the cached layers
    adapt.set_train(True)
    adapt.model.zero_grad()
    top.encode(TEXTS[:2]).square().sum().backward()
    grads = {n for n, p in adapt.trainable_parameters().items() if p.grad is not None}
    assert any("layer.5" in n and "lora_B" in n for n in grads)
    assert any(n.startswith("text.proj") for n in grads)


def test_padding_is_trimmed_to_each_chunk(default_adapt):
    cfg, adapt = default_adapt
    assert length_chunks([3, 100, 4, 120, 3]) == [[0, 4, 2], [1, 3]]
    assert length_chunks([5, 5, 5]) == [[0, 1, 2]]
    top = build_text_top(cfg, adapt, torch.device("cpu"), TEXTS)
    seen = []
    real_top = top.cache.stack.top

    def spy(hidden, mask):
        seen.append(tuple(mask.shape))
        return real_top(hidden, mask)

    top.cache.stack.top = spy
    try:
        with torch.no_grad():
            top.encode(TEXTS)
    finally:
        del top.cache.stack.top
    lengths = sorted(len(top.cache.store[t]) for t in TEXTS)
    assert sum(n for n, _ in seen) == 4
    assert max(width for _, width in seen) == lengths[-1]
    assert min(width for _, width in seen) <= lengths[2] < lengths[-1]  # short texts not padded to the long


def _builder(source, tok, tmp_path):
    """A function building a FrozenTextCache of `source` in `tmp_path` over TEXTS."""

    def fresh():
        c = FrozenTextCache(source, tok, torch.device("cpu"), str(tmp_path))
        c.prepare(TEXTS)
        return c

    return fresh


def _built_twice(fresh, tmp_path):
    """Build the cache twice: the first computes one file, the second reuses it bit for bit."""
    first = fresh()
    assert not first.info["reused"] and len(list(tmp_path.glob("text-*.safetensors"))) == 1
    second = fresh()
    assert second.info["reused"]
    for t in TEXTS:
        torch.testing.assert_close(first.store[t], second.store[t], atol=0, rtol=0)
    return first


@contextlib.contextmanager
def _changed(weight: torch.Tensor, delta: float = 1.0):
    """`weight` + delta inside the block, restored after it (also when an assertion fails)."""
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.add_(delta)
    try:
        yield
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def test_disk_cache_reused_and_invalidated(default_adapt, tmp_path):
    _, adapt = default_adapt
    stack = text_stack(adapt, 2)
    tok = adapt.bb.tokenizer

    fresh = _builder(stack, tok, tmp_path)
    _built_twice(fresh, tmp_path)
    # a change of a TOP layer does not touch the cached part: still reused
    with _changed(stack.layers[5].output.dense.base_layer.weight):
        assert fresh().info["reused"]
    # a change of a lower layer's weights: recomputed into a new file
    with _changed(stack.bert.embeddings.word_embeddings.weight):
        changed = fresh()
        assert not changed.info["reused"]
        assert len(list(tmp_path.glob("text-*.safetensors"))) == 2
    # a changed tokenizer (another context length truncates differently): recomputed
    old = tok.context_length
    tok.context_length = 16
    try:
        short = fresh()
        assert not short.info["reused"]
        assert max(len(v) for v in short.store.values()) == 16
    finally:
        tok.context_length = old
    assert fresh().info["reused"]  # back to the original: the first file again


def test_not_applicable_cases(default_adapt):
    cfg, adapt = default_adapt
    assert text_stack(adapt, 0) is None and text_stack(adapt, 6) is None
    never = load_config(None, ["data.manifest=x", "train.cache_features=never"])
    assert build_text_top(never, adapt, torch.device("cpu"), TEXTS) is None
    assert isinstance(build_text_top(cfg, adapt, torch.device("cpu"), TEXTS), TextTop)


def test_old_runs_migrate_to_every_layer():
    old = {"method": {"name": "lora", "lora": {"r": 8, "alpha": 16.0}}}
    assert migrate_config_dict(old)["method"]["lora"]["text_layers"] == 0
    new = {"method": {"name": "lora", "lora": {"r": 8, "text_layers": 1}}}
    assert migrate_config_dict(new)["method"]["lora"]["text_layers"] == 1


# ---------------------------------------------------------------------------------------------
# Projection-only text training: method.text_tower locked, the pooled output cached


@pytest.fixture(scope="module")
def locked_adapt():
    """The embedded default with a locked text tower (only the projections train)."""
    torch.manual_seed(0)
    cfg = load_config(None, ["data.manifest=x", "method.text_tower=locked"])
    return cfg, prepare(load_backbone("default"), cfg.method)


def test_locked_tower_cached_pooled_output_equals_the_full_forward(locked_adapt):
    cfg, adapt = locked_adapt
    top = build_text_top(cfg, adapt, torch.device("cpu"), TEXTS)
    assert isinstance(top.cache.stack, PooledText) and top.cache.info["layers_cached"] == "pooled"
    assert all(tuple(v.shape) == (1, 384) for v in top.cache.store.values())  # MiniLM width
    adapt.set_train(True)  # the locked tower runs in eval mode whatever the model's mode
    with torch.no_grad():
        cached = top.encode(TEXTS)
        adapt.set_train(False)
        full = adapt.model.encode_text(adapt.bb.tokenizer(TEXTS))
    assert cached.shape == full.shape == (4, 256)
    torch.testing.assert_close(cached, full, atol=2e-5, rtol=1e-4)
    # only the text projection gets gradients; the tower is not run again (served from the cache)
    adapt.set_train(True)
    adapt.model.zero_grad()
    calls = []
    real_run = top.cache.stack.run
    top.cache.stack.run = lambda ids: calls.append(ids) or real_run(ids)
    try:
        top.encode(TEXTS[:2]).square().sum().backward()
    finally:
        del top.cache.stack.run
    assert not calls
    grads = {n for n, p in adapt.trainable_parameters().items() if p.grad is not None}
    assert grads and all(n.startswith("text.proj") for n in grads)


def test_locked_pooled_cache_invalidates_on_tower_weights_and_tokenizer(locked_adapt, tmp_path):
    _, adapt = locked_adapt
    tok = adapt.bb.tokenizer

    fresh = _builder(PooledText(adapt), tok, tmp_path)
    first = _built_twice(fresh, tmp_path)
    # the projection trains: a change of it keeps the cache
    with _changed(next(adapt.base.text.proj.parameters())):
        assert fresh().info["reused"]
    # any tower weight (here the TOP layer, which the lower-layer cache would not cover): new file
    with _changed(adapt.base.text.transformer.encoder.layer[5].output.dense.weight, 0.5):
        changed = fresh()
        assert not changed.info["reused"] and len(list(tmp_path.glob("text-*.safetensors"))) == 2
        assert not torch.allclose(changed.store[TEXTS[1]], first.store[TEXTS[1]])
    old = tok.context_length
    tok.context_length = 8  # truncates the long texts differently: recomputed
    try:
        short = fresh()
        assert not short.info["reused"]
        assert not torch.allclose(short.store[TEXTS[3]], first.store[TEXTS[3]])
    finally:
        tok.context_length = old
    assert fresh().info["reused"]


def test_lower_layer_and_pooled_caches_never_share_a_file():
    """Same weights, tokenizer and texts: the key still says what is cached."""
    assert text_cache_key("w", "t", 4, TEXTS) != text_cache_key("w", "t", "pooled", TEXTS)


def test_help_text_names_the_projection_only_recipe():
    from domainclip.configschema import describe
    from domainclip.finetune.config import FinetuneConfig

    helps = {k: h for k, _, h in describe(FinetuneConfig)}
    assert "method.text_tower=locked" in helps["method.lora.text_layers"]
    tower = helps["method.text_tower"]
    assert "cached" in tower and "projection" in tower and "anchor_weight" in tower


def test_locked_text_trains_through_the_cache(tiny_vit, syn_manifest, tmp_path, monkeypatch):
    """The step loop serves a locked tower from the cache: each distinct text runs through the
    tower once (training, validation texts and class prompts), however many steps; the text
    projection moves, the tower does not; the supervised term and the anchor work on top."""
    from domainclip.finetune import finetune
    from domainclip.runs import load_adaptation

    from .conftest import tiny_config

    seen: list[int] = []
    real = PooledText.run
    monkeypatch.setattr(PooledText, "run", lambda self, ids: seen.append(len(ids)) or real(self, ids))
    cfg = tiny_config(
        tiny_vit, syn_manifest, "method.text_tower=locked", "loss.supervised_weight=0.5",
        "loss.anchor_weight=0.1", "train.max_steps=4", "eval.every_steps=2",
    )
    res = finetune(cfg, tmp_path / "run")
    assert res.steps == 4 and res.info["text_cache"]["layers_cached"] == "pooled"
    assert sum(seen) == res.info["text_cache"]["texts"]  # never recomputed after prepare
    trained = load_adaptation(tmp_path / "run", "last")
    base = load_backbone(str(tiny_vit)).model.state_dict()
    now = trained.base.state_dict()
    assert not torch.equal(now["text_projection"], base["text_projection"])
    assert torch.equal(now["token_embedding.weight"], base["token_embedding.weight"])


def test_locked_text_with_the_robust_framing_loss(tiny_vit, syn_manifest, tmp_path):
    """robustness on a locked text tower: the terms train the text projection (the only text part
    that trains) over cached pooled prompts, including prompts met only during training."""
    from domainclip.finetune import finetune

    from .conftest import tiny_config

    cfg = tiny_config(
        tiny_vit, syn_manifest, "method.text_tower=locked", "robustness.enabled=true",
        "robustness.pool=industrial", "robustness.augment_reports=true", "train.log_every=1",
        "robustness.k=2",
    )
    res = finetune(cfg, tmp_path / "run")
    assert res.steps == 6 and res.info["text_cache"]["layers_cached"] == "pooled"
    assert res.info["robustness"]["k"] == 2


# ---------------------------------------------------------------------------------------------
# method.text_tower: auto


class _Words:
    """A tokenizer stand-in: one word piece per word, plus CLS and SEP."""

    context_length = 64

    def count_tokens(self, text: str) -> int:
        return len(text.split()) + 2


def test_auto_text_tower_locks_for_long_reports_only():
    short = ["a scratch", "two scratches on steel", "a patch"]
    mode, reason = choose_text_tower(short * 3, _Words(), 10)
    assert mode == "lora" and "3 distinct" in reason and "median length is 4 word pieces" in reason
    long_ = ["word " * 30, "word " * 40, "x"]  # median 32 word pieces
    mode, reason = choose_text_tower(long_, _Words(), 10)
    assert mode == "locked" and "median length is 32" in reason and "(> 10" in reason
    assert choose_text_tower(["word " * 9], _Words(), 10)[0] == "locked"  # 11 > 10
    assert choose_text_tower(["word " * 8], _Words(), 10)[0] == "lora"  # 10: not above
    assert choose_text_tower(["word " * 500], _Words(), 100)[0] == "lora"  # capped at 64 tokens
    assert choose_text_tower([], _Words(), 10)[0] == "lora"


def test_auto_text_tower_is_for_lora_only():
    from domainclip.errors import ConfigError

    assert load_config(None, ["data.manifest=x", "method.text_tower=auto"]).method.text_tower == "auto"
    with pytest.raises(ConfigError, match="text_tower=auto.*clip_adapter"):
        load_config(None, ["data.manifest=x", "method.name=clip_adapter", "method.text_tower=auto"])


@pytest.mark.parametrize("threshold, expected", [(1000, "lora"), (1, "locked")])
def test_auto_text_tower_resolved_recorded_and_resumed(
    tiny_vit, syn_manifest, tmp_path, monkeypatch, threshold, expected
):
    import yaml

    from domainclip.finetune import finetune

    from .conftest import tiny_config

    monkeypatch.setattr("domainclip.finetune.config.TEXT_AUTO_TOKENS", threshold)
    cfg = tiny_config(tiny_vit, syn_manifest, "method.text_tower=auto", "train.max_steps=2",
                      "eval.every_steps=2")
    res = finetune(cfg, tmp_path / "run")
    choice = res.info["text_tower_choice"]
    assert choice.startswith(f"method.text_tower auto -> {expected}:")
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["method"]["text_tower"] == expected
    layers = res.info.get("text_cache", {}).get("layers_cached")
    assert layers == ("pooled" if expected == "locked" else None)  # tiny causal tower: no stack
    # the same config (auto) resumes the run: the recorded choice, no config difference
    again = finetune(cfg, tmp_path / "run", resume=True)
    assert again.info["text_tower_choice"] == f"method.text_tower auto: {expected}, as chosen when the run started"


def test_shipped_recipes_lock_the_text_tower_for_long_reports_only():
    """covid-cxr (long notes) trains projections only; the short-text configs keep top-2 LoRA."""
    from pathlib import Path

    configs = Path(__file__).resolve().parents[2] / "domainclip" / "configs"
    modes = {
        name: load_config(configs / f"{name}.yaml", ["data.manifest=x"]).method
        for name in ("covid_cxr_lora", "neu_det_lora", "demo_synthetic_lora")
    }
    assert (modes["covid_cxr_lora"].image_tower, modes["covid_cxr_lora"].text_tower) == ("locked", "locked")
    for name in ("neu_det_lora", "demo_synthetic_lora"):
        assert modes[name].text_tower == "lora" and modes[name].lora.text_layers == 2
