"""The explorer's computations on a model shared between Streamlit script threads.

Streamlit caches the run's model once per process (`st.cache_resource`) and, with fast reruns,
starts a new script thread when a widget changes while the old thread is still computing. Maps
and token attribution put temporary hooks on the model, so two threads on one model must not
overlap: an unguarded map computed while token attribution's embedding hook was in place got a
wrong similarity, which the page then cached (the browser test's rare failure).
"""

from __future__ import annotations

import threading

from domainclip.dashboard import saliency
from domainclip.datasets import read_manifest
from domainclip.datasets.imageio import load_image

from .conftest import DashRuns


def test_maps_stay_correct_while_another_thread_attributes_tokens(dash_runs: DashRuns) -> None:
    model = saliency.load_run_model(dash_runs.lora)
    man = read_manifest(dash_runs.manifest)
    row = next(r for r in man.rows if man.image_path(r).is_file())
    image = load_image(man.image_path(row))
    prompts = ["a crack on a metal surface", "pits on a metal surface", row.text]
    reference = {p: saliency.compute_map(model, image, p, "gradcam").similarity for p in prompts}

    stop = threading.Event()
    errors: list[BaseException] = []

    def attribute() -> None:
        try:
            while not stop.is_set():
                saliency.token_attribution_html(model, image, row.text)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    worker = threading.Thread(target=attribute, daemon=True)
    worker.start()
    try:
        seen = [
            (p, saliency.compute_map(model, image, p, "gradcam").similarity)
            for _ in range(4)
            for p in prompts
        ]
        probs = saliency.pair_probabilities(model, image, prompts[:2])
    finally:
        stop.set()
        worker.join(timeout=120)
    assert not errors, errors
    for p, sim in seen:
        assert abs(sim - reference[p]) < 1e-4, (p, sim, reference[p])
    alone = saliency.pair_probabilities(model, image, prompts[:2])
    assert max(abs(a - b) for a, b in zip(probs, alone, strict=True)) < 1e-5
