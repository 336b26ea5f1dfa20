"""`domainclip data validate | stats | import | split`.

Handlers turn argparse namespaces into plain arguments here; library functions never see them.
Heavy imports (torch, the importers, the backbone) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from domainclip.datasets.geometry import FIT_POLICIES
from domainclip.errors import ConfigError

IMPORT_KINDS = (
    "neu-det",
    "covid-cxr",
    "folder",
    "synthetic",
    "mvtec",
    "voc",
    "coco",
    "yolo",
    "deeppcb",
)

# What `data import --help` says each kind expects (the importers' module docstrings say more).
_LAYOUTS = """layouts:
  neu-det    SRC/IMAGES/*.jpg + SRC/ANNOTATIONS/*.xml (Pascal VOC); label = the file name's class
  voc        SRC/JPEGImages/ (or images/) + SRC/Annotations/*.xml, one XML per image (same stem),
             or the XML files beside the images in SRC
  coco       one COCO JSON (SRC/annotations/*.json or SRC/*.json, or --annotations FILE) with
             images, annotations (bbox = x y width height in pixels) and categories (id, name);
             file_name resolved in --images DIR, else SRC/images/, else SRC
  yolo       SRC/images/**/x.jpg + SRC/labels/**/x.txt (or beside the image), one line per box:
             class cx cy w h as fractions of the image; class names from SRC/classes.txt (one
             per line, line 1 = class 0), obj.names or data.yaml (names:), or --class-names
  deeppcb    SRC/PCBData/groupN/N/<id>_test.jpg + <id>_temp.jpg (aligned defect-free template)
             + SRC/PCBData/groupN/N_not/<id>.txt (x1 y1 x2 y2 type; 1 open, 2 short,
             3 mousebite, 4 spur, 5 spurious copper, 6 pin hole); two rows per board
  covid-cxr  SRC/metadata.csv + SRC/images/
  folder     SRC/<class>/**/<image>, text from --templates (details below)
  mvtec      SRC/train/good, SRC/test/<defect>, SRC/ground_truth/<defect>/*_mask.png (below)
  synthetic  no SRC: generated metal surfaces with masks and boxes

box importers (neu-det, voc, coco, yolo, deeppcb): one row per image; boxes column = JSON
[[xmin, ymin, xmax, ymax, class], ...] in pixels of the image (size from the image header;
fractions widened to whole pixels); text written from the boxes ("two small scratches in the
upper left of a surface"); label = the class with the most boxes (ties: the class listed first;
neu-det: the file name's class), --multi-label adds the image's other classes, the text always
names every box. A box reaching past its image is clipped and counted (--outside refuse stops
instead). Images without boxes are skipped unless --empty-label names them (deeppcb: templates
are always rows, label no_defect). Splits are group-aware and stratified (group = the image's
path; deeppcb: the board group folder, so every crop of one design shares a split).

folder: SRC/<class>/**/<image>; the label is the class folder's name.
  Masks are paired, never imported as images: x_mask.png (or a mask-like x.png) beside x.jpg,
  or x.png / x_mask.png in a masks/, mask/, GT/ or ground_truth/ folder beside or inside the
  image's folder. A mask that belongs to no image stops the import (--exclude it if intended).
  --templates YAML: class folder name -> description template; {class} is the class's words,
  "*" is the template for folders not listed, literal braces are {{ }}:
      scratch: "a photo of a scratched {class} part"
      "*": "a photo of {class}"
  --label-map YAML: class folder name -> label (short form) or label / words / template:
      MT_Blowhole: blowhole
      MT_Free: {label: good, words: defect-free magnetic tile, template: "a photo of a {class}"}
  Every folder the map names must exist. --include / --exclude GLOB (repeatable) match the path
  relative to SRC (fnmatch; * also crosses /), e.g. --exclude '*/Thumbs/*'.
mvtec: SRC/train/good, SRC/test/<defect>, SRC/ground_truth/<defect>/<stem>_mask.png (or several
  such category folders in SRC). Texts are written from the masks. --splits pool (default):
  MVTec's train and test folders pooled, then split by group and label, so training sees
  defects; --splits keep: train/good is train, test/ is divided into val and test.
  --label-map renames defect folders (same format as for folder; template is not used).
"""


def _write_json(obj: dict[str, Any], out: str) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _tokenizer_for(spec: str | None) -> Any:
    if spec is None or spec.lower() == "none":
        return None
    from domainclip.models import load_tokenizer

    return load_tokenizer(spec)


def _label_names(prompts: str | None) -> dict[str, list[str]] | None:
    """class -> synonyms from a prompt set's `names:` (for the label-leakage check)."""
    if not prompts:
        return None
    from domainclip.scoring.prompts import load_prompt_set

    ps = load_prompt_set(prompts)
    return {c: list(cp.names) for c, cp in ps.classes.items()}


def _add_prompts_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--prompts",
        metavar="YAML",
        help="prompt set whose class synonyms (names:) also count as the label in the "
        "label-leakage check (default: the class name and its plural/singular)",
    )


def _validate(args: argparse.Namespace) -> int:
    from domainclip.datasets.validate import validate_manifest

    report = validate_manifest(
        args.manifest,
        _tokenizer_for(args.backbone),
        check_images=not args.no_images,
        names=_label_names(args.prompts),
    )
    print(report.format())
    out = report.to_dict()
    if report.n_usable and (args.fit or args.image_size is not None):
        geometry = _geometry(args)
        out["geometry"] = [g.to_dict() for g in geometry]
    if args.json:
        _write_json(out, args.json)
    return 0 if report.ok else 1


def _geometry(args: argparse.Namespace) -> list[Any]:
    """Print (and return) the geometry report of each `--fit` policy (default: all of them)."""
    from domainclip.datasets.geometry_report import format_comparison, geometry_reports

    size = args.image_size
    if size is None:
        if args.backbone is None or args.backbone.lower() == "none":
            raise ConfigError("--fit needs the model's input size: pass --image-size N (e.g. 224)")
        from domainclip.models import load_backbone

        size = int(load_backbone(args.backbone).image_size)
    reports = geometry_reports(
        args.manifest,
        size,
        args.fit or list(FIT_POLICIES),
        min_pixels=args.min_pixels,
        cut_fraction=args.cut_fraction,
    )
    for r in reports:
        print()
        print(r.format())
    if len(reports) > 1:
        print()
        print(format_comparison(reports))
    return reports


def _stats(args: argparse.Namespace) -> int:
    from domainclip.datasets.stats import format_stats, manifest_stats

    stats = manifest_stats(args.manifest, _label_names(args.prompts))
    print(format_stats(stats))
    if args.json:
        _write_json(stats, args.json)
    return 0


def _import(args: argparse.Namespace) -> int:
    from domainclip.datasets.importers import run_import

    if args.kind != "synthetic" and args.src is None:
        raise ConfigError(f"data import {args.kind}: SRC (the data set's folder) is required")
    options = {
        **_box_options(args),
        "templates": args.templates,
        "group_pattern": args.group_pattern,
        "label_map": args.label_map,
        "include": args.include,
        "exclude": args.exclude,
        "splits": args.splits,
        "n": args.n,
        "size": args.size,
        "width": args.width,
        "height": args.height,
        "aspects": args.aspects,
        "defect_size": args.defect_size,
        "classes": [c.strip() for c in args.classes.split(",") if c.strip()]
        if args.classes
        else None,
    }
    result = run_import(
        args.kind,
        Path(args.src) if args.src is not None else None,
        Path(args.out),
        seed=args.seed,
        val_frac=args.val_frac,
        test_frac=args.test_frac,
        calib_frac=args.calib_frac,
        **options,
    )
    print(result.summary())
    if result.n_rows == 0:
        print("error: no rows were imported", file=sys.stderr)
        return 1
    return 0


def _box_options(args: argparse.Namespace) -> dict[str, Any]:
    """The box importers' options from the command line (unset flags are None)."""
    return {
        "multi_label": True if args.multi_label else None,
        "surface": args.surface,
        "outside": args.outside,
        "empty_label": args.empty_label,
        "empty_text": args.empty_text,
        "images": args.images,
        "annotations": args.annotations,
        "labels": args.labels,
        "class_names": args.class_names,
        "group_by": args.group_by,
    }


def _add_box_flags(i: argparse.ArgumentParser) -> None:
    """Flags of the box importers (neu-det, voc, coco, yolo, deeppcb)."""
    i.add_argument(
        "--multi-label",
        action="store_true",
        help="box importers: label = every class boxed in the image, the most frequent first "
        "(default: only the class with the most boxes; neu-det: the file name's class)",
    )
    i.add_argument(
        "--surface",
        metavar="TEXT",
        help="voc/coco/yolo: what the images show, ending every text (default: surface; e.g. "
        "'steel surface' gives '... in the centre of a steel surface')",
    )
    i.add_argument(
        "--outside",
        choices=("clip", "refuse"),
        help="box importers: a box reaching past its image is clipped to it and counted "
        "(clip, the default) or stops the import naming the file (refuse)",
    )
    i.add_argument(
        "--empty-label",
        metavar="LABEL",
        help="voc/coco/yolo: import images without boxes as defect-free rows with this label "
        "(e.g. good; default: skip them); deeppcb: the templates' label (default no_defect)",
    )
    i.add_argument(
        "--empty-text",
        metavar="TEXT",
        help="text of those defect-free rows (default: 'a clean SURFACE with no visible defects')",
    )
    i.add_argument("--images", metavar="DIR", help="voc/coco/yolo: image folder inside SRC")
    i.add_argument(
        "--annotations",
        metavar="PATH",
        help="voc: XML folder inside SRC; coco: the JSON file (inside SRC or absolute)",
    )
    i.add_argument("--labels", metavar="DIR", help="yolo: label .txt folder inside SRC")
    i.add_argument(
        "--class-names",
        metavar="FILE",
        help="yolo: classes.txt (one name per line, line 1 = class 0) or a YAML with names:",
    )
    i.add_argument(
        "--group-by",
        choices=("board", "board-group"),
        help="deeppcb: split unit: board-group (default; every crop of one groupN folder "
        "together: coarse but honest splits) or board (a test image with its template)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `data` command group."""
    p = sub.add_parser("data", help="import, validate and describe paired image-text data")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    _add_validate(dsub)

    s = dsub.add_parser("stats", help="class balance per split, text lengths, groups per split")
    s.add_argument("manifest", help="manifest .csv or .jsonl")
    s.add_argument("--json", metavar="OUT", help="also write the statistics as JSON")
    _add_prompts_flag(s)
    s.set_defaults(func=_stats)

    i = dsub.add_parser(
        "import",
        help="convert a data set into DIR/manifest.csv",
        description="KIND: " + ", ".join(IMPORT_KINDS) + " (synthetic takes no SRC).",
        epilog=_LAYOUTS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    i.add_argument("kind", choices=IMPORT_KINDS, metavar="KIND", help=", ".join(IMPORT_KINDS))
    i.add_argument("src", nargs="?", help="the data set's folder (not for synthetic)")
    i.add_argument("--out", required=True, metavar="DIR", help="output folder")
    i.add_argument("--seed", type=int, default=0, help="split (and generator) seed")
    i.add_argument("--val-frac", type=float, default=0.15, help="validation fraction of groups")
    i.add_argument("--test-frac", type=float, default=0.15, help="test fraction of groups")
    i.add_argument("--calib-frac", type=float, default=0.0, help="calib fraction of groups: a `calib` split held out for conformal thresholds only (never trained on, never picks the checkpoint; default 0: none)")
    _add_box_flags(i)
    i.add_argument(
        "--templates", metavar="YAML", help="folder: per-class description templates (below)"
    )
    i.add_argument(
        "--label-map",
        metavar="YAML",
        help="folder, mvtec: folder name -> label and wording (format below)",
    )
    i.add_argument(
        "--include", action="append", metavar="GLOB", help="folder: only import matching files"
    )
    i.add_argument(
        "--exclude", action="append", metavar="GLOB", help="folder: leave matching files out"
    )
    i.add_argument(
        "--splits",
        choices=("pool", "keep"),
        help="mvtec: pool MVTec's train/test folders (default) or keep them (below)",
    )
    i.add_argument(
        "--group-pattern",
        metavar="REGEX",
        help="folder/voc/coco/yolo: regex with one capture group, searched in the file name, "
        "giving the group id",
    )
    i.add_argument("--n", type=int, help="synthetic: number of images")
    i.add_argument(
        "--size",
        type=int,
        help="synthetic: image side in pixels (default 128); with --aspects the shorter side",
    )
    i.add_argument("--width", type=int, help="synthetic: every image's width (with --height)")
    i.add_argument("--height", type=int, help="synthetic: every image's height (with --width)")
    i.add_argument(
        "--aspects",
        metavar="LIST",
        help="synthetic: width/height ratios mixed in every class, e.g. 1,8:3 (repeat one to "
        "weight it: 1,1,1,2 makes a quarter 2:1)",
    )
    i.add_argument(
        "--defect-size",
        metavar="LO-HI",
        help="synthetic: longer side of every defect's box in pixels, e.g. 8-24 (default: "
        "relative to the image)",
    )
    i.add_argument("--classes", help="synthetic: comma-separated defect classes")
    i.set_defaults(func=_import)
    _add_split(dsub)


def _split(args: argparse.Namespace) -> int:
    from domainclip.datasets.splits import split_manifest

    report = split_manifest(
        args.manifest,
        val_frac=args.val_frac,
        test_frac=args.test_frac,
        calib_frac=args.calib_frac,
        seed=args.seed,
        by=args.by,
        stratify=args.stratify,
        force=args.force,
    )
    print(report.format())
    print(f"wrote {report.path}")
    return 0


def _add_split(dsub: argparse._SubParsersAction) -> None:
    """`data split MANIFEST`: assign the split column group-aware and stratified."""
    s = dsub.add_parser(
        "split",
        help="assign train/val/test to a manifest's rows (group-aware, stratified)",
        description="Write the split column of MANIFEST in place: rows of one group (--by) "
        "always share a split, label proportions are kept (--stratify label). Rows that already "
        "have a split keep it; a manifest whose rows are all split is refused unless --force, "
        "which reassigns every row. Prints rows, groups and labels per split and the leakage "
        "check; nothing is written when it fails.",
    )
    s.add_argument("manifest", help="manifest .csv or .jsonl (rewritten in place)")
    s.add_argument("--val-frac", type=float, default=0.15, help="validation fraction of groups")
    s.add_argument("--test-frac", type=float, default=0.15, help="test fraction of groups")
    s.add_argument("--calib-frac", type=float, default=0.0, help="calib fraction of groups: a `calib` split held out for conformal thresholds only (never trained on, never picks the checkpoint; default 0: none)")
    s.add_argument("--seed", type=int, default=0, help="split seed")
    s.add_argument(
        "--by",
        default="group",
        metavar="COLUMN",
        help="column whose values stay together: group (default) or a metadata column",
    )
    s.add_argument(
        "--stratify",
        choices=("label", "none"),
        default="label",
        help="keep label proportions per split (default: label)",
    )
    s.add_argument("--force", action="store_true", help="reassign every row, even if already split")
    s.set_defaults(func=_split)


def _add_validate(dsub: argparse._SubParsersAction) -> None:
    """`data validate` and its options (the geometry report's among them)."""
    v = dsub.add_parser(
        "validate",
        help="check every row of a manifest; exit 0 when usable, 1 when not",
        description="Decode every image, check texts, labels, splits and group leakage. With "
        "--fit / --image-size, also report per class how many annotated boxes/masks each fit "
        "policy would cut off or shrink below a few pixels at the model's input, and how many "
        "images are non-square (image headers only).",
    )
    v.add_argument("manifest", help="manifest .csv or .jsonl")
    v.add_argument(
        "--backbone",
        default="default",
        metavar="SPEC",
        help="backbone whose tokenizer limits text length (default: %(default)s; 'none' skips)",
    )
    v.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    v.add_argument("--no-images", action="store_true", help="only check that image files exist")
    _add_prompts_flag(v)
    v.add_argument(
        "--fit",
        action="append",
        choices=FIT_POLICIES,
        help="report what this fit policy does to the annotated boxes/masks at the model's "
        "input (repeat to compare policies; default with --image-size: all of them)",
    )
    v.add_argument(
        "--image-size",
        type=int,
        metavar="N",
        help="the model's input size for the geometry report (without it, --fit loads "
        "--backbone to read its size: slow)",
    )
    v.add_argument(
        "--min-pixels",
        type=float,
        default=4,
        metavar="PX",
        help="geometry: a finding shorter than this at the input counts as too small "
        "(default: %(default)s)",
    )
    v.add_argument(
        "--cut-fraction",
        type=float,
        default=0.5,
        metavar="F",
        help="geometry: a finding with less than this fraction inside the input counts as "
        "mostly cut (default: %(default)s)",
    )
    v.set_defaults(func=_validate)
