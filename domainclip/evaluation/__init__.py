"""Evaluation: zero-shot classification, retrieval, AUROC/AP with bootstrap CIs, calibration
metrics and the forgetting monitor (`domainclip evaluate`).

Import what you need from the submodules (`evaluation.evaluate`, `evaluation.metrics`,
`evaluation.calibration`, ...). Prompt sets, class embeddings, zero-shot logits and retrieval
metrics live one layer below, in `domainclip.scoring` (fine-tuning validates with them too), and
calibrators in `domainclip.calibrators`.
"""
