"""Adaptation methods, one module each (like peft's tuners).

* `lora`: peft LoRA on a tower (tower mode ``lora``); the default recipe is a locked image tower
  (cached features) with LoRA on the text tower.
* full fine-tuning is tower mode ``full`` (method ``full`` sets it for both towers).
* `clip_adapter`: residual bottleneck MLPs on the projected features.
* `tip_adapter`: key-value cache of training features (training-free or Tip-Adapter-F).
* `linear_probe`: scikit-learn logistic regression on frozen image features.

How the pieces are combined on a backbone is in `domainclip.finetune.adaptation`.
"""
