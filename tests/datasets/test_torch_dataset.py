"""PairedDataset sample dicts, failure counting, collate, DataLoader with workers."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.utils.data import DataLoader

from domainclip.datasets.manifest import ManifestRow, read_manifest, write_manifest
from domainclip.datasets.torch_dataset import PairedDataset, collate_samples, seed_worker
from domainclip.datasets.transforms import build_transform
from domainclip.errors import ConfigError
from tests.datasets.helpers import save_rgb

TF = build_transform("none", 16, (0.5,) * 3, (0.5,) * 3, train=False)


@pytest.fixture
def manifest_path(tmp_path):
    rows = []
    for i, (labels, split) in enumerate(
        [(["scratch"], "train"), (["pit", "crack"], "train"), ([], "val"), (["crack"], "test")]
    ):
        save_rgb(tmp_path / "img" / f"{i}.png", (20, 18), (i * 50, 0, 0))
        rows.append(
            ManifestRow(f"img/{i}.png", f"text {i}", labels, f"lot{i}", split, {"view": f"v{i}"})
        )
    rows.append(ManifestRow("img/missing.png", "gone", ["pit"], "lot9", "train"))
    return write_manifest(rows, tmp_path / "m.csv")


def test_sample_dict(manifest_path, tmp_path):
    ds = PairedDataset(manifest_path, transform=TF)
    assert len(ds) == 5
    assert ds.classes == ["crack", "pit", "scratch"]
    s = ds[1]
    assert set(s) == {"image", "text", "label", "group", "path", "meta", "index"}
    assert s["image"].shape == (3, 16, 16)
    assert s["text"] == "text 1" and s["label"] == ["pit", "crack"] and s["group"] == "lot1"
    assert s["path"] == str((tmp_path / "img" / "1.png").resolve())
    assert s["meta"] == {"view": "v1"} and s["index"] == 2


def test_without_transform_gives_pil(manifest_path):
    s = PairedDataset(manifest_path)[0]
    assert s["image"].mode == "RGB" and s["image"].size == (20, 18)


def test_split_filter_keeps_whole_manifest_vocabulary(manifest_path):
    ds = PairedDataset(manifest_path, split="validation", transform=TF)
    assert ds.split == "val" and len(ds) == 1
    assert ds.classes == ["crack", "pit", "scratch"]
    assert [ds[0]["index"]] == [3]
    with pytest.raises(ConfigError, match="unknown split 'tran'"):
        PairedDataset(manifest_path, split="tran")


def test_unreadable_image_returns_none_counted_and_logged_once(manifest_path, caplog):
    ds = PairedDataset(manifest_path, transform=TF)
    with caplog.at_level(logging.WARNING):
        assert ds[4] is None
        assert ds[4] is None
    assert len(ds.failures) == 1
    ((path, msg),) = ds.failures.items()
    assert path.endswith("missing.png") and "file not found" in msg
    assert caplog.text.count("missing.png") == 1 and "row 5" in caplog.text


def test_collate_drops_failures_and_builds_label_tensors(manifest_path):
    ds = PairedDataset(manifest_path, transform=TF)
    batch = collate_samples([ds[i] for i in range(5)], ds.classes)
    assert batch["n_dropped"] == 1
    assert batch["image"].shape == (4, 3, 16, 16)
    assert batch["text"] == ["text 0", "text 1", "text 2", "text 3"]
    # classes: crack=0, pit=1, scratch=2
    assert batch["label_multi_hot"].tolist() == [[0, 0, 1], [1, 1, 0], [0, 0, 0], [1, 0, 0]]
    assert batch["label_index"].tolist() == [2, 1, -1, 0]
    assert batch["label_index"].dtype == torch.long
    assert batch["group"] == ["lot0", "lot1", "lot2", "lot3"] and batch["index"] == [1, 2, 3, 4]
    assert all(p.endswith(".png") for p in batch["path"])
    assert batch["meta"][0] == {"view": "v0"}


def test_collate_all_failed_returns_none():
    assert collate_samples([None, None], ["a"]) is None


def test_collate_requires_tensors(manifest_path):
    ds = PairedDataset(manifest_path)
    with pytest.raises(TypeError, match="transform"):
        collate_samples([ds[0]], ds.classes)


def test_given_classes_and_unknown_labels(manifest_path, caplog):
    with caplog.at_level(logging.WARNING):
        ds = PairedDataset(manifest_path, transform=TF, classes=["pit", "crack"])
    assert ds.classes == ["crack", "pit"]
    assert ds.n_unknown_label_rows == 1 and "outside the 2 given classes" in caplog.text
    batch = ds.collate([ds[0], ds[1]])
    assert batch["label_multi_hot"].tolist() == [[0, 0], [1, 1]]
    assert batch["label_index"].tolist() == [-1, 1]


def test_in_memory_manifest_index_is_position(tmp_path):
    save_rgb(tmp_path / "a.png")
    m = read_manifest(write_manifest([ManifestRow("a.png", "t")], tmp_path / "m.jsonl"))
    m.rows[0].row = 0
    assert PairedDataset(m, transform=TF)[0]["index"] == 1


def test_dataloader_with_workers_and_failed_batch(manifest_path):
    ds = PairedDataset(manifest_path, transform=TF)
    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=ds.collate)
    batches = list(loader)
    assert [b["image"].shape[0] for b in batches] == [3, 1]
    assert [b["n_dropped"] for b in batches] == [0, 1]  # counted although a worker read it
    # a batch holding only the unreadable image collapses to None
    assert list(DataLoader(ds, batch_size=2, collate_fn=ds.collate))[-1] is None


def test_seed_worker_gives_workers_distinct_streams(manifest_path):
    aug = build_transform("industrial", 16, (0.5,) * 3, (0.5,) * 3, train=True, seed=0)
    ds = PairedDataset(manifest_path, split="train", transform=aug)
    idx = [0] * 8  # the same image many times: outputs differ only through augmentation

    def run(init):
        g = torch.Generator().manual_seed(0)
        sub = torch.utils.data.Subset(ds, idx)
        dl = DataLoader(
            sub,
            batch_size=4,
            num_workers=2,
            collate_fn=ds.collate,
            worker_init_fn=init,
            generator=g,
        )
        return [b["image"] for b in dl]

    plain = run(None)
    assert torch.equal(plain[0], plain[1])  # both workers replay the same augmentations
    seeded = run(seed_worker)
    assert not torch.equal(seeded[0], seeded[1])
    again = run(seed_worker)
    assert all(torch.equal(a, b) for a, b in zip(seeded, again, strict=True))
