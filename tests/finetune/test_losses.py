"""Multi-positive contrastive loss: identical texts are positives, not negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from domainclip.finetune.losses import multi_positive_loss, positive_mask, supervised_loss


def _infonce(img, txt, scale):
    logits = scale * img @ txt.T
    y = torch.arange(len(img))
    return (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y)) / 2


def test_pair_mode_is_symmetric_infonce():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    pos = positive_mask([f"t{i}" for i in range(6)], mode="pair")
    got = multi_positive_loss(img, txt, torch.tensor(10.0), pos)
    assert torch.allclose(got, _infonce(img, txt, 10.0), atol=1e-6)
    # distinct texts: "text" mode has the same positives as "pair"
    pos_t = positive_mask([f"t{i}" for i in range(6)], mode="text")
    assert torch.equal(pos, pos_t)


def test_masks_by_text_and_label():
    texts = ["a scratch", "a pit", "a scratch", "two pits"]
    labels = [["scratch"], ["pit"], ["scratch"], ["pit"]]
    t = positive_mask(texts, labels, "text")
    assert t[0, 2] and t[2, 0] and not t[1, 3]
    lab = positive_mask(texts, labels, "label")
    assert lab[1, 3] and lab[0, 2] and not lab[0, 1]
    # rows without labels only match by text
    lab2 = positive_mask(["x", "y"], [[], []], "label")
    assert not lab2[0, 1]


def test_shared_caption_is_not_pushed_apart():
    """Images 0 and 1 share one caption. InfoNCE pushes image 0 away from image 1's copy of its
    own caption (positive gradient on that logit); the multi-positive loss pulls it closer."""
    torch.manual_seed(1)
    img = F.normalize(torch.randn(4, 16), dim=-1)
    txt = F.normalize(torch.randn(4, 16), dim=-1)
    txt[1] = txt[0]  # the same caption, the same embedding
    texts = ["scratch upper left", "scratch upper left", "a pit", "a crack"]
    img = (img + 0.5 * txt).detach()  # image 0 already close to its caption
    img = F.normalize(img, dim=-1)

    def grad_on_cross_logit(pos):
        logits = (10.0 * img @ txt.T).requires_grad_(True)
        p = pos.float()
        loss = -(p / p.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
        loss = loss - (p.T / p.T.sum(1, keepdim=True) * F.log_softmax(logits.T, 1)).sum(1).mean()
        loss.backward()
        return logits.grad[0, 1]

    assert grad_on_cross_logit(positive_mask(texts, mode="pair")) > 0  # InfoNCE: push apart
    assert grad_on_cross_logit(positive_mask(texts, mode="text")) < 0  # multi-positive: pull

    # End to end: free image embeddings trained against two slightly different embeddings of the
    # same caption (what two forward passes with dropout give). InfoNCE must tell the copies
    # apart and drives the two images apart; the multi-positive loss keeps both at the caption.
    txt2 = txt.clone()
    txt2[1] = F.normalize(
        txt[0] + 0.1 * torch.randn(16, generator=torch.Generator().manual_seed(3)), dim=-1
    )

    def train(mode):
        x = torch.randn(4, 16, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
        opt = torch.optim.SGD([x], lr=0.5)
        for _ in range(300):
            pos = positive_mask(texts, mode=mode)
            loss = multi_positive_loss(F.normalize(x, dim=-1), txt2, torch.tensor(30.0), pos)
            opt.zero_grad()
            loss.backward()
            opt.step()
        f = F.normalize(x.detach(), dim=-1)
        return float(f[0] @ txt2[0]), float(f[1] @ txt2[0]), float(f[0] @ f[1])

    mp = train("text")
    nce = train("pair")
    assert abs(mp[0] - mp[1]) < 0.05  # both images equally close to the shared caption
    assert nce[1] < nce[0] - 0.1  # InfoNCE pushed image 1 away from caption 0's copy
    assert mp[2] > nce[2] + 0.2  # and pushed the two images apart


def test_supervised_loss_ignores_unlabelled_rows():
    img = F.normalize(torch.randn(3, 4), dim=-1)
    W = F.normalize(torch.randn(2, 4), dim=-1)
    y = torch.tensor([0, -1, 1])
    full = supervised_loss(img, W, torch.tensor(5.0), y)
    ref = F.cross_entropy(5.0 * img[[0, 2]] @ W.T, torch.tensor([0, 1]))
    assert torch.allclose(full, ref)
    assert supervised_loss(img, W, torch.tensor(5.0), torch.tensor([-1, -1, -1])) == 0
