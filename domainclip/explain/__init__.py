"""Explanations for image-text scores: Captum saliency, token attribution, sanity checks, overlays.

    from domainclip.explain import ImageExplainer, prepare_image, token_attribution
    inp = prepare_image(bb, "steel.png")
    sal = ImageExplainer(bb).explain(inp.pixels, "a long scratch", method="gradcam")

Names are re-exported lazily so `import domainclip.explain` (e.g. by the CLI) stays cheap.
"""

from __future__ import annotations

from domainclip.lazy import lazy_exports

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "ExplainError": "errors",
    "MethodNotApplicableError": "errors",
    "PromptScorer": "forward",
    "TextScorer": "forward",
    "ModelInput": "inputs",
    "prepare_image": "inputs",
    "mask_to_view": "inputs",
    "boxes_to_mask": "inputs",
    "region_from_meta": "inputs",
    "METHODS": "image",
    "ImageExplainer": "image",
    "SaliencyMap": "image",
    "ContrastMap": "image",
    "explain_image": "image",
    "methods_for": "image",
    "TokenAttribution": "text",
    "token_attribution": "text",
    "render_overlay": "render",
    "overlay_figure": "render",
    "overlay_png": "render",
    "is_signed": "image",
    "save_map": "render",
    "save_html": "render",
    "Explainer": "sanity",
    "method_explainer": "sanity",
    "edge_map_control": "sanity",
    "randomisation_check": "sanity",
    "randomised_copy": "sanity",
    "text_sensitivity_check": "sanity",
    "deletion_insertion": "sanity",
    "spearman": "sanity",
    "Localisation": "localisation",
    "localise": "localisation",
    "pointing_game": "localisation",
    "energy_in_mask": "localisation",
    "random_map_baseline": "localisation",
    "summarise": "localisation",
    "ExplainSettings": "batch",
    "explain_files": "batch",
    "explain_manifest": "batch",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
