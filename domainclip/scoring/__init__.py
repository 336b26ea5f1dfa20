"""Scoring: what fine-tuning and evaluation both need to score a model on a task.

* `prompts`: versioned prompt sets (class name -> texts through `domainclip.templates`).
* `zeroshot`: each distinct text embedded once, class embeddings, zero-shot and multi-label logits.
* `retrieval`: image<->text retrieval ranks and Recall@k, aware of duplicated texts.

Layer 3: imports only models, datasets, templates, errors, io and resources, so finetune (below
evaluation) can validate with exactly the numbers `domainclip evaluate` computes.
"""
