"""Token attribution: words match the text, completeness holds, HTML is escaped."""

from __future__ import annotations

import re

import pytest
import torch

from domainclip.explain import ExplainError, token_attribution
from domainclip.explain.render import save_html
from tests.explain.conftest import pixels_for

TEXT = "two long scratches in the upper left of a steel plate"


@pytest.mark.parametrize("family", ["vit", "cnn", "hf"])
def test_words_match_the_text_and_scores_are_complete(tiny, defect_image, family):
    bb = tiny[family]
    ta = token_attribution(bb, pixels_for(bb, defect_image), TEXT, steps=16)
    assert ta.words == TEXT.split()
    assert len(ta.scores) == len(ta.words)
    assert len(ta.token_scores) == len(ta.tokens) >= len(ta.words)
    assert all(map(torch.isfinite, torch.tensor(ta.scores)))
    assert len(set(ta.scores)) > 1
    # Completeness: word scores add up to score(text) - score(reference text).
    assert sum(ta.scores) == pytest.approx(ta.score - ta.baseline_score, rel=0.05, abs=1e-3)
    assert ta.convergence_delta < 0.05 * abs(ta.score - ta.baseline_score) + 1e-3
    with torch.no_grad():
        direct = bb.similarity(
            bb.encode_images(pixels_for(bb, defect_image)), bb.encode_texts([TEXT])
        )
    assert ta.score == pytest.approx(float(direct[0, 0]), rel=1e-4, abs=1e-5)


def test_word_pieces_are_merged(tiny_hf, defect_image):
    """WordPiece splits 'unbelievably'; the word comes back whole, its score the pieces' sum."""
    ta = token_attribution(tiny_hf, pixels_for(tiny_hf, defect_image), "an unbelievably deep pit")
    assert ta.words == ["an", "unbelievably", "deep", "pit"]
    pieces = [t for t in ta.tokens if t.startswith("##")]
    assert pieces, ta.tokens
    idx = ta.tokens.index("un")
    n = 1 + len(pieces)
    assert ta.scores[1] == pytest.approx(sum(ta.token_scores[idx : idx + n]), abs=1e-6)


def test_depends_on_the_image(tiny_vit, defect_image, synthetic_dir):
    other = sorted((synthetic_dir / "images").glob("*.png"))[-1]
    a = token_attribution(tiny_vit, pixels_for(tiny_vit, defect_image), TEXT, steps=8)
    b = token_attribution(tiny_vit, pixels_for(tiny_vit, other), TEXT, steps=8)
    assert a.scores != b.scores


def test_html_escapes_markup(tiny_vit, defect_image, tmp_path):
    text = 'crack near <script>alert("x")</script> & edge'
    ta = token_attribution(tiny_vit, pixels_for(tiny_vit, defect_image), text, steps=4)
    html = ta.to_html()
    assert "<script" not in html.lower()
    assert "&lt;" in html and "&amp;" in html
    # One span per word, each carrying its score.
    assert len(re.findall(r"<span ", html)) == len(ta.words)
    page = save_html(html, tmp_path / "t.html", title="<b>title</b>")
    assert "<script" not in page.read_text().lower()
    assert "<b>" not in page.read_text()


def test_empty_text_is_refused(tiny_vit, defect_image):
    x = pixels_for(tiny_vit, defect_image)
    for bad in ("", "   \n"):
        with pytest.raises(ExplainError, match="empty"):
            token_attribution(tiny_vit, x, bad)
