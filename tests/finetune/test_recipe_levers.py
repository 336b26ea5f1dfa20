"""Recipe levers for probe parity: the projection anchor (ProLIP) and the class-prompt term."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from domainclip.finetune.anchor import ProjectionAnchor
from domainclip.finetune.losses import anchor_loss, supervised_loss


def test_anchor_loss_value_and_gradient_point_back_to_the_start():
    w0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    w = torch.tensor([[1.5, 0.0], [0.0, 0.0]], requires_grad=True)
    b0, b = torch.zeros(3), torch.tensor([0.0, 2.0, 0.0], requires_grad=True)
    loss = anchor_loss([w, b], [w0, b0])
    assert float(loss) == pytest.approx(0.25 + 1.0 + 4.0)
    loss.backward()
    torch.testing.assert_close(w.grad, 2 * (w.detach() - w0))  # = [[1, 0], [0, -2]]
    torch.testing.assert_close(b.grad, torch.tensor([0.0, 4.0, 0.0]))
    # one descent step moves every moved entry toward its start, the unmoved ones stay
    stepped = w.detach() - 0.1 * w.grad
    assert (stepped - w0).abs().sum() < (w.detach() - w0).abs().sum()
    assert float(stepped[0, 1]) == 0.0
    assert float(anchor_loss([w0], [w0])) == 0.0


def test_supervised_term_pulls_an_image_toward_its_class_prompt():
    """Hand-built: two orthogonal class prompts; an image between them labelled class 0 gets a
    gradient whose descent direction raises its cosine with class 0's prompt."""
    W = torch.eye(2)
    img = F.normalize(torch.tensor([[1.0, 1.0]]), dim=-1).requires_grad_(True)
    loss = supervised_loss(img, W, torch.tensor(10.0), torch.tensor([0]))
    loss.backward()
    step = -img.grad[0]
    assert float(step[0]) > 0 > float(step[1])
    # the loss is the cross-entropy of scale * cos: log(1 + e^0) at equal cosines
    assert float(loss) == pytest.approx(float(torch.log(torch.tensor(2.0))), abs=1e-6)


def test_projection_anchor_snapshot_is_the_untrained_projection():
    from domainclip.models.testing import tiny_open_clip_backbone

    bb = tiny_open_clip_backbone("vit")
    anchor = ProjectionAnchor.of(bb)
    assert set(anchor.initial) == {"visual.proj", "text_projection"}
    bb.model.requires_grad_(False)
    with torch.no_grad():
        bb.model.text_projection.add_(0.5)
    assert float(anchor.penalty(bb.model)) == 0.0  # frozen projections are not pulled
    with torch.no_grad():
        bb.model.text_projection.sub_(0.5)
    bb.model.requires_grad_(True)
    assert float(anchor.penalty(bb.model)) == pytest.approx(0.0, abs=1e-9)
    with torch.no_grad():
        bb.model.text_projection.add_(0.5)
    moved = bb.model.text_projection.detach() - anchor.initial["text_projection"]
    assert float(anchor.penalty(bb.model)) == pytest.approx(float(moved.square().sum()), rel=1e-6)
    assert float(moved.abs().mean()) == pytest.approx(0.5, abs=1e-5)


def test_anchor_and_supervised_train_end_to_end(tiny_cnn, syn_manifest, tmp_path):
    from domainclip.finetune import finetune

    from .conftest import tiny_config

    cfg = tiny_config(tiny_cnn, syn_manifest, "loss.anchor_weight=1.0", "loss.supervised_weight=0.5")
    res = finetune(cfg, tmp_path / "run")
    assert res.steps == 6 and res.best_step >= 0


@pytest.mark.slow
def test_top_layers_through_the_trainer_on_the_default(syn_manifest, tmp_path):
    """The default recipe trains the top 2 MiniLM layers over cached lower layers, and the saved
    run's text adapters sit only there."""
    from domainclip.finetune import finetune, load_config
    from domainclip.finetune.methods.lora import layer_index
    from domainclip.runs import load_adaptation

    cfg = load_config(
        "configs/demo_synthetic_lora.yaml",
        [f"data.manifest={syn_manifest}", "train.max_steps=2", "train.batch_size=8",
         "eval.every_steps=2", "train.progress=false", "eval.at_start=false"],
    )
    assert cfg.method.lora.text_layers == 2
    res = finetune(cfg, tmp_path / "run")
    assert res.info["text_cache"]["layers_cached"] == 4
    adapt = load_adaptation(tmp_path / "run", "last")  # 2 steps: best may be absent (collapse)
    lora = [n for n, _ in adapt.model.named_parameters() if "lora_A" in n and n.startswith("text.")]
    assert lora and {layer_index(n.split("transformer.", 1)[1]) for n in lora} == {4, 5}
