"""Framing-robust fine-tuning: pool/audit disjointness, config errors, the loss's gradient directions,
and a short training run with the terms on."""

from __future__ import annotations

import json

import pytest
import torch

from domainclip.audit.spec import load_audit_spec
from domainclip.errors import ConfigError
from domainclip.finetune import finetune
from domainclip.finetune.config import load_config
from domainclip.finetune.framings import (
    SHIPPED_POOLS,
    key_framing_words,
    load_pool,
    normalise_template,
    read_spec_templates,
    shipped_specs,
    template_words,
)
from domainclip.finetune.robustness import (
    FramingObjective,
    GradBalance,
    balance_factor,
    consistency_term,
    negation_term,
    target_log_odds,
)
from domainclip.finetune.runlog import read_metrics
from domainclip.scoring.prompts import load_prompt_set

from .conftest import tiny_config

SPECS = shipped_specs()


def _audit_templates() -> dict[str, str]:
    """normalised template -> spec file, through the audit's own parser."""
    out = {}
    for path in SPECS:
        spec = load_audit_spec(str(path))
        for f in spec.framings:
            out[normalise_template(f.template.text)] = str(path)
    return out


def test_every_spec_is_checked():
    assert {p.stem for p in SPECS} >= {"synthetic", "neu_det", "covid_cxr"}


@pytest.mark.parametrize("pool_name", SHIPPED_POOLS)
def test_no_pool_template_is_an_audit_template(pool_name):
    audit = _audit_templates()
    pool = load_pool(pool_name)
    assert len(pool.invariant) >= 10 and len(pool.negated) >= 3
    assert {f.kind for f in pool.invariant} >= {"intensity", "urgency", "hedging", "register", "paraphrase"}
    for f in pool.framings:
        assert normalise_template(f.template.text) not in audit, (pool_name, f.template.text)


@pytest.mark.parametrize("pool_name", SHIPPED_POOLS)
def test_no_key_framing_word_of_any_spec_is_in_a_pool(pool_name):
    keys = key_framing_words([read_spec_templates(p) for p in SPECS])
    # the words the issue names are among the key words taken from the specs' templates
    assert {"severe", "critical", "progressive", "deterioration", "possibly", "urgent", "repair"} <= set(keys)
    for f in load_pool(pool_name).framings:
        used = template_words(f.template.text) & set(keys)
        assert not used, f"{pool_name}: {f.template.text!r} uses audit framing words {sorted(used)}"


def test_spec_reader_agrees_with_the_audit_parser():
    """The fine-tuning layer reads the specs' framings itself (audit is a layer above): same texts."""
    for path in SPECS:
        spec = load_audit_spec(str(path))
        mine = read_spec_templates(path)
        assert mine.framings == {f.name: f.template.text for f in spec.framings}
        assert mine.reference == spec.framing(spec.reference).template.text


# ---------------------------------------------------------------------------------------------
# Config errors


def _cfg(*overrides):
    return load_config({"data": {"manifest": "m.csv"}}, ["robustness.enabled=true", *overrides])


def test_k_below_one_and_negative_weight_are_config_errors():
    with pytest.raises(ConfigError, match=r"robustness\.k"):
        _cfg("robustness.k=0")
    with pytest.raises(ConfigError, match=r"robustness\.weight"):
        _cfg("robustness.weight=-0.5")


def test_unknown_pool_is_a_config_error():
    cfg = _cfg("robustness.pool=industral")
    with pytest.raises(ConfigError, match="neither a shipped framing pool.*industrial"):
        FramingObjective.of(cfg, ["a", "b"], None)


def test_pool_template_equal_to_an_audit_template_is_refused(tmp_path):
    pool = tmp_path / "pool.yaml"
    pool.write_text(
        'name: mine\nversion: "1"\ninvariant:\n  hedging:\n    - "perhaps {finding} here"\n'
        '    - "A metal surface with  {finding}."\n'
    )
    cfg = _cfg(f"robustness.pool={pool}")
    with pytest.raises(ConfigError, match=r"audit template of framing 'neutral' in .*synthetic\.yaml"):
        FramingObjective.of(cfg, ["a", "b"], None)


def test_held_out_spec_templates_are_refused_too(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text('reference: plain\nframings:\n  plain: "{finding} here"\n  odd: "perhaps {finding} here"\n')
    pool = tmp_path / "pool.yaml"
    pool.write_text('name: mine\nversion: "1"\ninvariant:\n  hedging: ["perhaps {finding} here"]\n')
    FramingObjective.of(_cfg(f"robustness.pool={pool}"), ["a", "b"], None)  # no clash with shipped specs
    with pytest.raises(ConfigError, match="framing 'odd'"):
        FramingObjective.of(_cfg(f"robustness.pool={pool}", f"robustness.held_out=[{spec}]"), ["a", "b"], None)


@pytest.mark.parametrize("method", ["linear_probe", "tip_adapter"])
def test_head_only_methods_say_robustness_does_not_apply(method):
    with pytest.raises(ConfigError, match=f"does not apply to method.name={method}: its classifier"):
        _cfg(f"method.name={method}")


def test_unknown_control_class_is_a_config_error():
    with pytest.raises(ConfigError, match="robustness.controls: 'clear' not among the classes"):
        FramingObjective.of(_cfg("robustness.controls=[clear]"), ["clean", "pit"], None)


def test_plain_config_records_no_robustness_section():
    assert "robustness" not in load_config({"data": {"manifest": "m.csv"}}).to_dict()
    assert _cfg().to_dict()["robustness"]["enabled"] is True


# ---------------------------------------------------------------------------------------------
# The loss: gradient directions on hand-built cases


def test_consistency_gradient_pulls_two_framings_together():
    neutral = torch.tensor([0.8], requires_grad=True)
    framed = torch.tensor([[0.5]], requires_grad=True)
    consistency_term(neutral, framed).backward()
    assert neutral.grad.item() > 0 > framed.grad.item()  # descent lowers neutral, raises framed
    assert consistency_term(torch.tensor([0.3]), torch.tensor([[0.3]])).item() == 0.0


def test_negation_hinge_pushes_the_negation_below_the_neutral():
    neutral = torch.tensor([0.6, 0.9], requires_grad=True)
    negated = torch.tensor([0.7, 0.5], requires_grad=True)
    loss = negation_term(neutral, negated, margin=0.1)
    loss.backward()
    assert loss.item() == pytest.approx((0.7 - 0.6 + 0.1) / 2)
    assert negated.grad[0].item() > 0  # violated: descent lowers the negated probability
    assert negated.grad[1].item() == 0  # already 0.4 below: no push
    assert neutral.grad is None or neutral.grad.abs().sum() == 0  # the neutral side is not raised


def _objective(classes, prompts=None, **settings):
    cfg = _cfg(*[f"robustness.{k}={v}" for k, v in settings.items()])
    return FramingObjective.of(cfg, classes, prompts)


def test_objective_step_moves_probabilities_the_right_way():
    """End to end on features: one gradient step on learnable text embeddings brings the framed
    target probability towards the neutral one and lowers the negated one."""
    obj = _objective(["crack", "pit"], pool="industrial", k=1, negation_margin=0.3, space="probability")
    draw = obj.draw(0)
    texts = draw.texts()
    g = torch.Generator().manual_seed(0)
    table = torch.nn.Parameter(torch.randn(len(texts), 8, generator=g))
    img = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    labels = [["crack"], ["pit"], ["crack"], ["pit"]]
    index = {t: i for i, t in enumerate(texts)}

    def encode(ts):
        return table[[index[t] for t in ts]]

    def probs():
        f = torch.nn.functional.normalize(table.detach(), dim=-1)
        out = {}
        for name, group in (("neutral", draw.neutral), ("framed", draw.framed[0]), ("negated", draw.negated)):
            p = torch.softmax(10 * img @ f[[index[t] for t in group]].T, -1)
            out[name] = p[torch.arange(4), torch.tensor([0, 1, 0, 1])]
        return out

    before = probs()
    opt = torch.optim.SGD([table], lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        obj.loss(img, labels, torch.tensor(10.0), encode, 0).backward()
        opt.step()
    after = probs()
    gap = lambda p: (p["framed"] - p["neutral"]).abs().mean()  # noqa: E731
    assert gap(after) < gap(before)
    hinge = lambda p: negation_term(p["neutral"], p["negated"], 0.3)  # noqa: E731
    assert hinge(after) < hinge(before)
    assert before["negated"][0] > before["neutral"][0] > after["negated"][0]  # the violation is gone
    assert set(obj.last) == {"robust_consistency", "robust_negation"}


def test_terms_train_the_text_side_only_and_the_neutral_prompt_is_the_anchor():
    obj = _objective(["crack", "pit"], pool="industrial", k=2)
    draw = obj.draw(1)
    texts = draw.texts()
    index = {t: i for i, t in enumerate(texts)}
    table = torch.nn.Parameter(torch.randn(len(texts), 8, generator=torch.Generator().manual_seed(3)))
    img = torch.randn(4, 8, requires_grad=True)
    scale = torch.tensor(10.0, requires_grad=True)
    feats = torch.nn.functional.normalize(img, dim=-1)
    obj.loss(feats, [["crack"], ["pit"], ["pit"], ["crack"]], scale, lambda ts: table[[index[t] for t in ts]], 1).backward()
    assert img.grad is None and scale.grad is None  # image features and temperature: no gradient
    neutral = [index[t] for t in draw.neutral]
    framed = [index[t] for f in draw.framed for t in f]
    assert table.grad[neutral].abs().sum() == 0  # anchored: only the framed prompts move
    assert table.grad[framed].abs().sum() > 0
    sym = _objective(["crack", "pit"], pool="industrial", k=2, anchored="false")
    table.grad = None
    sym.loss(feats.detach(), [["crack"], ["pit"], ["pit"], ["crack"]], scale, lambda ts: table[[index[t] for t in ts]], 1).backward()
    assert table.grad[neutral].abs().sum() > 0  # symmetric: the neutral side moves too


def test_target_log_odds_is_the_logit_of_the_softmax_probability():
    z = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([0, 2])
    p = torch.softmax(z, -1)[torch.arange(2), y]
    assert torch.allclose(target_log_odds(z, y), torch.log(p / (1 - p)), atol=1e-5)


def test_logit_space_keeps_a_gradient_where_the_probability_saturates():
    """A confident image (p ~ 1 under both wordings): the squared probability gap gives the framed
    prompt almost no gradient, the log-odds gap still pulls it towards the neutral one."""
    neutral = torch.tensor([[12.0, 0.0]])
    framed = torch.tensor([[8.0, 0.0]], requires_grad=True)
    y = torch.tensor([0])
    p = lambda z: torch.softmax(z, -1)[:, 0]  # noqa: E731
    consistency_term(p(neutral), p(framed)[None]).backward()
    prob_grad = framed.grad[0, 0].item()
    framed.grad = None
    consistency_term(target_log_odds(neutral, y), target_log_odds(framed, y)[None]).backward()
    logit_grad = framed.grad[0, 0].item()
    assert logit_grad < 0 and abs(logit_grad) > 1000 * abs(prob_grad)  # descent raises the framed logit


def test_weight_warm_up_and_ramp():
    obj = _objective(["crack", "pit"], pool="industrial", start=0.5, ramp=0.25)
    obj.total_steps = 40
    assert [obj.factor(s) for s in (0, 19)] == [0.0, 0.0]
    assert obj.factor(20) == pytest.approx(0.1) and obj.factor(29) == 1.0 and obj.factor(39) == 1.0
    calls = []
    img = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    loss = obj.loss(img, [["crack"], ["pit"]], torch.tensor(10.0), lambda ts: calls.append(ts), 3)
    assert loss.item() == 0.0 and not calls  # warm-up: nothing encoded, no term
    assert _objective(["crack", "pit"], pool="industrial").factor(0) == 1.0  # default: from step 0


def test_space_and_start_are_checked():
    with pytest.raises(ConfigError, match=r"robustness\.space"):
        _cfg("robustness.space=logits")
    with pytest.raises(ConfigError, match=r"robustness\.start"):
        _cfg("robustness.start=1")


def test_all_texts_cover_every_draw():
    ps = load_prompt_set("configs/prompts/synthetic.yaml")
    obj = _objective(["clean", "pit", "crack"], ps, controls="[clean]", pool="industrial", k=3)
    every = set(obj.all_texts())
    assert all(set(obj.draw(s).texts()) <= every for s in range(30))


def _learnable_prompts(obj, seed):
    """Step 0's draw of a crack/pit objective with a learnable text table: (draw, text -> row,
    table [T, 8], four unit image features [4, 8], their labels, their class indices [4])."""
    draw = obj.draw(0)
    texts = draw.texts()
    g = torch.Generator().manual_seed(seed)
    table = torch.nn.Parameter(torch.randn(len(texts), 8, generator=g))
    img = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    labels, y = [["crack"], ["pit"], ["crack"], ["pit"]], torch.tensor([0, 1, 0, 1])
    return draw, {t: i for i, t in enumerate(texts)}, table, img, labels, y


def test_logit_space_step_pulls_framed_log_odds_together():
    obj = _objective(["crack", "pit"], pool="industrial", k=1, negation_margin=0, space="logit")
    draw, index, table, img, labels, y = _learnable_prompts(obj, seed=2)

    def gap():
        f = torch.nn.functional.normalize(table.detach(), dim=-1)
        lo = [target_log_odds(10 * img @ f[[index[t] for t in grp]].T, y) for grp in (draw.neutral, draw.framed[0])]
        return (lo[1] - lo[0]).abs().mean().item()

    before = gap()
    opt = torch.optim.SGD([table], lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        obj.loss(img, labels, torch.tensor(10.0), lambda ts: table[[index[t] for t in ts]], 0).backward()
        opt.step()
    assert gap() < 0.5 * before


def test_logit_space_hinge_lowers_the_negated_log_odds_by_the_margin():
    obj = _objective(["crack", "pit"], pool="industrial", k=1, negation_margin=0.5, space="logit")
    draw, index, table, img, labels, y = _learnable_prompts(obj, seed=4)
    with torch.no_grad():  # make the negated prompts the best match: the hinge is violated
        for i, t in enumerate(draw.negated):
            table[index[t]] = table[index[draw.neutral[i]]] + 0.5 * img[i]

    def odds(group):
        f = torch.nn.functional.normalize(table.detach(), dim=-1)
        return target_log_odds(10 * img @ f[[index[t] for t in group]].T, y)

    assert (odds(draw.negated) > odds(draw.neutral) - 0.5).any()
    opt = torch.optim.SGD([table], lr=0.2)
    for _ in range(60):
        opt.zero_grad()
        obj.loss(img, labels, torch.tensor(10.0), lambda ts: table[[index[t] for t in ts]], 0).backward()
        opt.step()
    assert obj.last["robust_negation"] < 0.1
    assert (odds(draw.negated) < odds(draw.neutral)).all()  # the negation lowers every target


def test_controls_keep_their_text_and_skip_negation():
    ps = load_prompt_set("configs/prompts/synthetic.yaml")
    obj = _objective(["clean", "pit"], ps, controls="[clean]", pool="industrial", k=3)
    draw = obj.draw(5)
    assert all(f[0] == draw.neutral[0] for f in draw.framed) and draw.negated[0] == draw.neutral[0]
    assert all(f[1] != draw.neutral[1] for f in draw.framed)
    assert len(draw.texts()) <= 2 * (1 + 3 + 1)
    assert draw.texts() == obj.draw(5).texts()  # seeded by the step


def test_multi_label_terms_use_binary_probabilities():
    ps = load_prompt_set("configs/prompts/covid_cxr.yaml")
    obj = _objective(["COVID-19", "No Finding", "ARDS"], ps, pool="medical")
    assert obj.classes == ["COVID-19", "ARDS"] and obj.multi_label  # negative labels are not findings
    draw = obj.draw(0)
    assert draw.negatives is not None and len(draw.negatives) == 2
    texts = draw.texts()
    table = torch.nn.Parameter(torch.randn(len(texts), 8, generator=torch.Generator().manual_seed(1)))
    index = {t: i for i, t in enumerate(texts)}
    img = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    loss = obj.loss(img, [["COVID-19"], ["No Finding"], []], torch.tensor(10.0), lambda ts: table[[index[t] for t in ts]], 0)
    loss.backward()
    assert loss.item() > 0 and table.grad.abs().sum() > 0


def test_augment_rewords_about_half_of_the_texts():
    obj = _objective(["a", "b"], augment_reports="true")
    texts = [f"text {i}" for i in range(200)]
    out = obj.augment(texts, 3)
    changed = sum(a != b for a, b in zip(texts, out, strict=True))
    assert 60 < changed < 140 and all(t in o for t, o in zip(texts, out, strict=True))
    assert _objective(["a", "b"]).augment(texts, 3) == texts


# ---------------------------------------------------------------------------------------------
# balance: gradnorm


def _hand_built(robust_scale: float):
    """Shared w [3] (both losses), main-only m [2]: main = a.w + c.m, robust = robust_scale * b.w."""
    w = torch.zeros(3, requires_grad=True)
    m = torch.zeros(2, requires_grad=True)
    a, b, c = torch.tensor([1.0, 2.0, 2.0]), torch.tensor([0.0, 3.0, -4.0]), torch.tensor([30.0, 40.0])
    main = a @ w + c @ m
    robust = robust_scale * (b @ w)
    return w, m, a, b, c, main, robust


def test_gradnorm_scales_the_terms_gradient_to_max_ratio_of_the_main_one_on_shared_params():
    w, m, a, b, c, main, robust = _hand_built(10.0)  # |a| = 3, |10 b| = 50: ratio 16.7
    main.backward()
    bal = GradBalance(max_ratio=0.5)
    bal.accumulate(robust, [w, m])
    info = bal.apply([w, m])
    # main norm on the shared w only (3), not on m (50): s = 0.5 * 3 / 50
    assert info["robust_grad_scale"] == pytest.approx(0.5 * 3 / 50)
    assert info["robust_grad_ratio"] == pytest.approx(50 / 3)
    extra = w.grad - a  # the terms' part of the step
    assert float(extra.norm()) == pytest.approx(0.5 * float(a.norm()), rel=1e-5)  # norm ratio = max_ratio
    assert float(torch.nn.functional.cosine_similarity(extra, b, dim=0)) == pytest.approx(1.0)  # same direction
    assert torch.equal(m.grad, c)  # a parameter the terms do not reach keeps the main gradient
    assert not bal.grads  # buffer cleared


def test_gradnorm_leaves_a_small_terms_gradient_unchanged_and_accumulates_micro_batches():
    w, m, a, b, c, main, robust = _hand_built(0.1)  # |0.1 b| = 0.5 < 3
    main.backward()
    bal = GradBalance(max_ratio=1.0)
    bal.accumulate(robust / 2, [w, m])
    bal.accumulate(robust.detach() * 0 + 0.1 * (b @ w) / 2, [w, m])  # a second micro-batch
    info = bal.apply([w, m])
    assert info["robust_grad_scale"] == 1.0
    assert torch.allclose(w.grad, a + 0.1 * b)
    assert balance_factor(2.0, 0.0, 1.0) == 1.0 and balance_factor(0.0, 1.0, 1.0) == 0.0
    assert bal.apply([w, m]) == {}  # nothing buffered: nothing added


def test_balance_keys_are_checked():
    assert _cfg("robustness.balance=gradnorm").robustness.balance == "gradnorm"
    with pytest.raises(ConfigError, match=r"robustness\.balance"):
        _cfg("robustness.balance=clip")
    with pytest.raises(ConfigError, match=r"robustness\.max_ratio"):
        _cfg("robustness.max_ratio=0")


# Training with the terms on


def test_gradnorm_run_logs_the_scale_and_bounds_the_terms(tiny_vit, syn_manifest, tmp_path):
    cfg = tiny_config(
        tiny_vit, syn_manifest, "robustness.enabled=true", "robustness.controls=[clean]",
        "train.log_every=1", "robustness.start=0", "robustness.balance=gradnorm",
        "robustness.max_ratio=0.5",
    )
    res = finetune(cfg, tmp_path / "run")
    assert res.info["robustness"]["balance"] == "gradnorm"
    events = [e for e in read_metrics(tmp_path / "run") if e["event"] == "train"]
    scaled = [e for e in events if "robust_grad_scale" in e]
    assert scaled and all(0 <= e["robust_grad_scale"] <= 1 for e in scaled)
    # after scaling the terms' norm is min(ratio, max_ratio) x the main one
    assert all(min(e["robust_grad_ratio"], 0.5) == pytest.approx(
        e["robust_grad_ratio"] * e["robust_grad_scale"], rel=1e-5) for e in scaled)


def test_robust_run_records_its_settings_and_logs_the_terms(tiny_vit, syn_manifest, tmp_path):
    cfg = tiny_config(
        tiny_vit, syn_manifest, "robustness.enabled=true", "robustness.pool=industrial",
        "robustness.controls=[clean]", "train.log_every=1", "robustness.k=2",
    )
    res = finetune(cfg, tmp_path / "run")
    info = res.info["robustness"]
    assert info["pool"]["version"] == "industrial-framings-1" and info["k"] == 2
    assert info["texts_per_step"] == 4 * (1 + 2 + 1) + 1  # 4 framed classes x 4 + the control once
    events = [e for e in read_metrics(tmp_path / "run") if e["event"] == "train"]
    assert events and all(e["robust_consistency"] >= 0 and "robust_negation" in e for e in events)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "robustness:" in saved and "pool: industrial" in saved
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["info"]["robustness"]["controls"] == ["clean"]


def test_bad_pool_stops_before_a_run_folder_exists(tiny_vit, syn_manifest, tmp_path):
    cfg = tiny_config(tiny_vit, syn_manifest, "robustness.enabled=true", "robustness.pool=nope")
    with pytest.raises(ConfigError, match="robustness.pool"):
        finetune(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_full_from_waits_for_the_terms_at_full_weight_plus_settle():
    obj = _objective(["crack", "pit"], pool="industrial", start=0.5, ramp=0.25, settle=0)
    obj.total_steps = 40
    assert obj.full_from() == 30  # factor(29) == 1: checkpoints after 30 completed steps
    obj.settle = 0.25
    assert obj.full_from() == 29 + 10  # and 10 more steps with the terms on
    obj.start, obj.ramp, obj.settle = 0.0, 0.0, 0.0
    assert obj.full_from() == 1  # even without a warm-up, the untrained step 0 does not count
    obj.start, obj.ramp = 0.9, 0.5
    assert obj.full_from() == 40  # never at full weight within the run: the last checkpoint
    obj.total_steps = 0
    assert obj.full_from() == 0  # unknown length: no restriction


def test_best_checkpoint_is_not_chosen_before_the_terms_are_on(tiny_vit, syn_manifest, tmp_path):
    """With a learning rate too small to change any weight every validation scores the same, so
    without the rule the untrained step-0 checkpoint would stay best (ties do not replace it)."""
    cfg = tiny_config(
        tiny_vit, syn_manifest, "robustness.enabled=true", "robustness.controls=[clean]",
        "robustness.start=0.5", "robustness.settle=0.25", "train.max_steps=8", "eval.every_steps=1",
        "optim.lr=1e-30",
    )
    res = finetune(cfg, tmp_path / "run")
    vals = [e for e in read_metrics(tmp_path / "run") if e["event"] == "val"]
    assert [e["step"] for e in vals][:2] == [0, 1]
    assert len({e["zero_shot_acc"] for e in vals}) == 1  # nothing moved: every step ties
    assert res.info["robustness"]["select_from_step"] == 4 + 2  # full weight from step index 4
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["best_step"] == 6


@pytest.mark.parametrize("recipe", ["neu_det_lora", "covid_cxr_lora", "demo_synthetic_lora"])
def test_each_shipped_recipe_builds_its_framing_objective(recipe):
    """The recipes that ship with robustness on (and the demo's, which turns it on for the
    remedy) name a pool, controls and settings that fit their own prompt set: the objective
    builds, every class gets framed and negated prompts, and no text is an audit template."""
    from domainclip.resources import resolve_config_path

    cfg = load_config(
        resolve_config_path(f"configs/{recipe}.yaml"), ["robustness.enabled=true", "data.manifest=m.csv"]
    )
    prompts = load_prompt_set(resolve_config_path(cfg.eval.prompts))
    obj = FramingObjective.of(cfg, prompts.class_names, prompts, total_steps=cfg.train.max_steps)
    assert obj is not None and obj.classes
    assert 0 < obj.full_from() <= cfg.train.max_steps
    draw = obj.draw(0)
    framed = [c for c in obj.classes if c not in obj.controls]
    assert framed and draw.negated is not None
    for i, c in enumerate(obj.classes):
        if c in obj.controls:
            assert draw.framed[0][i] == draw.neutral[i]
        else:
            assert draw.framed[0][i] != draw.neutral[i] and draw.negated[i] != draw.neutral[i]


def test_a_prompt_fill_pool_keeps_the_prompt_sets_context(tmp_path):
    """`fill: prompt` (the generic pool): the framing is a phrase inside the prompt set's own
    template, so only the framing changes, not the domain's context."""
    prompts = load_prompt_set({
        "version": "t-1", "templates": ["a metal surface with {label}"],
        "classes": {"crack": {"names": ["cracks"]}, "pit": {"names": ["pits"]}},
    })
    obj = _objective(["crack", "pit"], prompts, pool="generic")
    assert obj.pool.fill == "prompt"
    draw = obj.draw(0)
    assert draw.neutral == ["a metal surface with cracks", "a metal surface with pits"]
    for texts in (*draw.framed, draw.negated):
        assert all(t.startswith("a metal surface with ") and t not in draw.neutral for t in texts)
    assert set(draw.texts()) <= set(obj.all_texts())
    bad = tmp_path / "bad.yaml"
    bad.write_text('name: b\nversion: "b-1"\nfill: phrase\ninvariant: {x: ["perhaps {finding}"]}\n')
    with pytest.raises(ConfigError, match="`fill` must be one of sentence, prompt"):
        load_pool(str(bad))
