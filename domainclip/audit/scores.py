"""The score table of an audit: per framing, image and class, logits, probabilities and similarities.

Building it costs one image embedding per image and one text embedding per distinct prompt; every
framing then reuses the same image features (a [N,D] x [D,C] product per framing), which is why an
audit of M images under K framings costs about as much as embedding the M images once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from domainclip.calibrators import Calibrator, TemperatureCalibrator


@dataclass
class ScoreTable:
    """Scores of N images under K framings over C classes.

    Attributes:
        framings: K framing names (order of the first axis).
        classes: C class labels (order of the last axis).
        logits: float [K, N, C] class logits from `Backbone.class_logits` (before temperature).
        cos: float [K, N, C] raw similarity: dot product of the image and prompt features (the
            cosine for normalised features), independent of any classifier head and temperature.
        calibrator: the model's calibrator (a float T is taken as temperature scaling);
            probabilities are softmax(calibrator(logits)) over the C classes of one framing.
        target: int [N] index of each image's target class (its first label among `classes`).
        positives: bool [N, C] every label of the image among `classes` (a top-1 decision is
            correct when it is any of them).
    """

    framings: list[str]
    classes: list[str]
    logits: np.ndarray
    cos: np.ndarray
    calibrator: Calibrator | float
    target: np.ndarray
    positives: np.ndarray
    probs: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        k, n, c = self.logits.shape
        if (k, c) != (len(self.framings), len(self.classes)):
            raise ValueError(
                f"logits {self.logits.shape} do not match {len(self.framings)} framings x "
                f"{len(self.classes)} classes"
            )
        if self.cos.shape != self.logits.shape:
            raise ValueError(f"cos {self.cos.shape} and logits {self.logits.shape} differ")
        if self.target.shape != (n,) or self.positives.shape != (n, c):
            raise ValueError("target must be [N] and positives [N, C]")
        if not isinstance(self.calibrator, Calibrator):
            self.calibrator = TemperatureCalibrator(float(self.calibrator))
        scaled = self.calibrator.calibrate(torch.from_numpy(self.logits).double())
        self.probs = torch.softmax(scaled, dim=-1).numpy()

    @property
    def n(self) -> int:
        return int(self.logits.shape[1])

    def k(self, framing: str) -> int:
        return self.framings.index(framing)

    @property
    def scores(self) -> np.ndarray:
        """[K, N] temperature-scaled probability of each image's target class."""
        return self.probs[:, np.arange(self.n), self.target]

    @property
    def raw(self) -> np.ndarray:
        """[K, N] raw similarity of each image to its target class's prompt."""
        return self.cos[:, np.arange(self.n), self.target]

    @property
    def decisions(self) -> np.ndarray:
        """[K, N] top-1 class index (softmax over the classes within each framing)."""
        return self.logits.argmax(-1)

    @property
    def correct(self) -> np.ndarray:
        """[K, N] bool: the top-1 decision is one of the image's labels."""
        return np.take_along_axis(self.positives[None], self.decisions[..., None], -1)[..., 0]

    @property
    def confidence(self) -> np.ndarray:
        """[K, N] probability of the top-1 decision (what calibration is measured on)."""
        return self.probs.max(-1)

    def take(self, idx: Sequence[int] | np.ndarray) -> ScoreTable:
        """The table restricted to images `idx` (repeats allowed: used by simulations)."""
        idx = np.asarray(idx)
        return ScoreTable(
            framings=list(self.framings),
            classes=list(self.classes),
            logits=self.logits[:, idx],
            cos=self.cos[:, idx],
            calibrator=self.calibrator,
            target=self.target[idx],
            positives=self.positives[idx],
        )


def score_table(
    model,
    image_feats: torch.Tensor,
    class_text_feats: torch.Tensor,
    framings: Sequence[str],
    classes: Sequence[str],
    target: np.ndarray,
    positives: np.ndarray,
    calibrator: Calibrator | float = 1.0,
) -> ScoreTable:
    """Score precomputed features.

    Args:
        model: a `Backbone` (its `class_logits` decides, so classifier heads are honoured).
        image_feats: [N, D] image features (each image embedded once).
        class_text_feats: [K, C, D] prompt features per framing and class.
        target, positives: see `ScoreTable`.
    """
    logits, cos = [], []
    with torch.no_grad():  # a classifier head may hold trainable parameters
        for k in range(class_text_feats.shape[0]):
            w = class_text_feats[k]
            logits.append(model.class_logits(image_feats, w).detach().double().cpu())
            cos.append(image_feats.double() @ w.double().T)
    return ScoreTable(
        framings=list(framings),
        classes=list(classes),
        logits=torch.stack(logits).numpy(),
        cos=torch.stack(cos).numpy(),
        calibrator=calibrator,
        target=np.asarray(target, dtype=np.int64),
        positives=np.asarray(positives, dtype=bool),
    )
