"""The model card's limitations name the text-quality findings of the training manifest and
always say that images may carry burned-in text (nothing checks the pixels)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import yaml

from domainclip.audit import write_card
from domainclip.privacy import PIXEL_NOTE


def test_card_names_placeholders_label_words_and_burned_in_text(tmp_path, manifest_path):
    from domainclip.finetune import load_config

    with Path(manifest_path).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows[:3]:
        r["text"] = "Replace this - DESCRIPTION OF THE IMAGE OR FINDINGS."
    for r in rows:
        r["image"] = str(Path(manifest_path).parent / r["image"])
        r["mask"] = str(Path(manifest_path).parent / r["mask"]) if r["mask"] else ""
    man = tmp_path / "m.csv"
    with man.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cfg = load_config(
        "configs/demo_synthetic_lora.yaml",
        [f"data.manifest={man}", "train.max_steps=4", "data.fit=letterbox"],
    ).to_dict()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    md = " ".join(write_card(run).read_text().split())
    assert f"3 of {len(rows)} texts are placeholders or very short" in md
    assert re.search(r"Texts name their own label for: clean \(\d+%\), crack", md)
    assert "1 text(s) are used for images of different classes" in md
    assert " ".join(PIXEL_NOTE.split()) in md
