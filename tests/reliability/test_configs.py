"""Reliability: configuration files a person gets wrong.

Fine-tuning configs (unknown keys with a suggestion, values out of range, wrong types, duplicate
YAML keys, invalid YAML, a missing prompt set, `--set` syntax), audit specs and prompt sets. Every
case is refused before a model is loaded or a run folder is made, with a message naming the file
and the key, and exit 2. The fine-tune cases also assert that `--out` was not created (so the same
command works once the config is fixed).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from PIL import Image

from tests.finetune.conftest import tiny_cnn  # noqa: F401
from tests.reliability.harness import Case, Outcome, run_case


@pytest.fixture(scope="module")
def backbone(tiny_cnn: Path) -> Path:  # noqa: F811 - the session's tiny CNN backbone directory
    return tiny_cnn


PROMPTS = textwrap.dedent(
    """\
    version: "rel-1"
    mode: single_label
    templates: ["a photo of {label}"]
    classes:
      pit: {names: ["a pit"]}
      clean: {names: ["a clean surface"]}
    """
)


def _data(d: Path) -> Path:
    """Four images, a manifest with train/val/test rows and the prompt set; returns the folder."""
    d.mkdir(parents=True, exist_ok=True)
    rows = ["image,text,label,split"]
    for i, split in enumerate(["train", "val", "test", "test"] * 2):
        label = ("pit", "clean")[i % 2]
        Image.new("RGB", (16, 16), (i * 30, 80, 160)).save(d / f"i{i}.png")
        rows.append(f"i{i}.png,a {label} on metal,{label},{split}")
    (d / "m.csv").write_text("\n".join(rows) + "\n")
    (d / "prompts.yaml").write_text(PROMPTS)
    return d


def _config_yaml(d: Path, bb: Path, extra: str = "") -> str:
    return (
        f"backbone: {{spec: {bb}}}\n"
        f"data: {{manifest: {d / 'm.csv'}}}\n"
        f"eval: {{prompts: {d / 'prompts.yaml'}}}\n"
        "train: {batch_size: 4, max_steps: 1, progress: false}\n" + extra
    )


def _no_run_dir(tmp: Path, out: Outcome) -> None:
    assert not (tmp / "run").exists(), "a refused config must not create the run folder"


def _run_dir_reusable(tmp: Path, out: Outcome) -> None:
    """A bad backbone spec is found when the model loads, after the run folder is locked: it
    leaves only the lock file, so the same --out works once the config is fixed."""
    assert sorted(p.name for p in (tmp / "run").iterdir()) == [".lock"]


def finetune(text: str | None = None, *sets: str, raw: bytes | None = None) -> object:
    """argv builder for `finetune CFG --out RUN --set ...`. `text` is appended to a valid config
    (use {d} for the data folder); `raw` replaces the whole file."""

    def build(tmp: Path, bb: Path) -> list[str]:
        d = _data(tmp / "data")
        cfg = tmp / "cfg.yaml"
        if raw is not None:
            cfg.write_bytes(raw)
        else:
            cfg.write_text(_config_yaml(d, bb, (text or "").replace("{d}", str(d))))
        argv = ["finetune", cfg, "--out", tmp / "run"]
        for s in sets:
            argv += ["--set", s.replace("{d}", str(d))]
        return argv

    return build


FINETUNE = [
    Case(
        "unknown_key_did_you_mean",
        finetune("optim: {lrr: 0.001}\n"),
        r"cfg\.yaml.*optim\.lrr.*did you mean.*lr",
    ),
    Case(
        "unknown_section",
        finetune("optimizer: {lr: 0.001}\n"),
        r"cfg\.yaml: unknown key\(s\) optimizer \(did you mean 'optim'\?\)",
    ),
    Case(
        "unknown_set_key",
        finetune(None, "train.max_stpes=3"),
        r"train\.max_stpes.*did you mean.*max_steps",
    ),
    Case(
        "lr_negative",
        finetune(None, "optim.lr=-1"),
        r"cfg\.yaml: optim\.lr = -1\.0 is out of range",
    ),
    Case(
        "batch_size_zero",
        finetune(None, "train.batch_size=0"),
        r"train\.batch_size = 0 is out of range \(outside \[2, ",
    ),
    Case(
        "lora_rank_zero",
        finetune("method: {name: lora, lora: {r: 0}}\n"),
        r"method\.lora\.r = 0 is out of range",
    ),
    Case(
        "method_choice",
        finetune(None, "method.name=magic"),
        r"method\.name.*magic.*(lora|choose|one of)",
    ),
    Case(
        "max_steps_not_int",
        finetune(None, "train.max_steps=abc"),
        r"train\.max_steps must be an integer, got 'abc'",
    ),
    Case(
        "batch_size_list",
        finetune("optim: {lr: [1, 2]}\n"),
        r"optim\.lr must be a number, got \[1, 2\]",
    ),
    Case("section_not_mapping", finetune("optim: 0.001\n"), r"cfg\.yaml: optim must be a mapping"),
    Case(
        "duplicate_yaml_key",
        finetune("optim: {lr: 0.001}\noptim: {lr: 0.1}\n"),
        r"cfg\.yaml: key 'optim' appears twice \(lines 5 and 6\)",
    ),
    Case(
        "duplicate_nested_key",
        finetune("optim: {lr: 0.001, lr: 0.1}\n"),
        r"cfg\.yaml: key 'lr' appears twice",
    ),
    Case("invalid_yaml", finetune("optim: {lr: 0.001\n"), r"cfg\.yaml: not valid YAML.*line 5"),
    Case(
        "tab_indent", finetune("optim:\n\tlr: 0.001\n"), r"cfg\.yaml: not valid YAML.*'\\t'.*line 6"
    ),
    Case(
        "top_level_list", finetune(raw=b"- a\n- b\n"), r"cfg\.yaml: the top level must be a mapping"
    ),
    Case("empty_config", finetune(raw=b""), r"data\.manifest is empty: pass --set data\.manifest="),
    Case(
        "binary_config",
        finetune(raw=b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe"),
        r"cannot read .*cfg\.yaml: it is not UTF-8 text \(byte 0\); save it as UTF-8",
    ),
    Case(
        "missing_prompt_set",
        finetune(None, "eval.prompts={d}/nope.yaml"),
        r"prompt set .*nope\.yaml not found",
    ),
    Case("missing_manifest", finetune(None, "data.manifest={d}/nope.csv"), r"nope\.csv.*not found"),
    Case(
        "manifest_is_directory",
        finetune(None, "data.manifest={d}"),
        r"data\.manifest: .*data (is not a file|not found)",
    ),
    Case(
        "prompt_set_is_directory",
        finetune(None, "eval.prompts={d}"),
        r"prompt set .*data (is not a file|not found)",
    ),
    Case(
        "backbone_missing",
        finetune(None, "backbone.spec={d}/no_backbone"),
        r"unknown backbone spec .*no_backbone.*\(no such file or directory\)",
        2,
        _run_dir_reusable,
    ),
    Case(
        "config_is_utf16",
        finetune(raw="train: {max_steps: 1}\n".encode("utf-16")),
        r"cannot read .*cfg\.yaml: it is not UTF-8 text \(byte 0, a UTF-16 byte-order mark\); save it as UTF-8",
    ),
    Case(
        "set_without_equals", finetune(None, "optim.lr"), r"--set 'optim\.lr': expected KEY=VALUE"
    ),
    Case("set_empty_key", finetune(None, "=5"), r"--set '=5': expected KEY=VALUE"),
    Case(
        "set_bad_yaml_value", finetune(None, "optim.lr=[1"), r"--set optim\.lr=\[1: not valid YAML"
    ),
    Case(
        "set_into_scalar",
        finetune(None, "optim.lr.x=1"),
        r"--set optim\.lr\.x: unknown key \(did you mean optim\.lr",
    ),
]


@pytest.mark.parametrize("case", FINETUNE, ids=[c.name for c in FINETUNE])
def test_finetune_config(case: Case, backbone: Path, tmp_path: Path, capsys) -> None:
    check = case.check or _no_run_dir
    c = Case(case.name, lambda tmp: case.build(tmp, backbone), case.expect, case.code, check)
    run_case(c, tmp_path, capsys)


def test_config_file_missing(tmp_path: Path, capsys) -> None:
    def build(tmp: Path) -> list[str]:
        return ["finetune", tmp / "nope.yaml", "--out", tmp / "run"]

    run_case(
        Case("config_missing", build, r"config file .*nope\.yaml not found", check=_no_run_dir),
        tmp_path,
        capsys,
    )


# --- audit specs ------------------------------------------------------------------------------

GOOD_SPEC = textwrap.dedent(
    """\
    name: rel
    version: "rel-1"
    findings: {pit: pits, clean: {name: no defects, framed: false, text: "a clean surface"}}
    reference: neutral
    framings:
      neutral: "a surface with {defect}"
      alarming: "a surface with severe {defect}"
    statistics: {n_bootstrap: 200, min_cell_images: 2}
    """
)


def audit(spec: str | None, name: str = "spec.yaml") -> object:
    def build(tmp: Path, bb: Path) -> list[str]:
        d = _data(tmp / "data")
        if spec is not None:
            (tmp / name).write_text(spec)
        return ["audit", bb, "--spec", tmp / name, "--data", d / "m.csv", "--out", tmp / "audit"]

    return build


AUDIT = [
    Case(
        "spec_missing",
        audit(None),
        r"audit spec '.*spec\.yaml' not found: pass a YAML file or one of the shipped",
    ),
    Case(
        "spec_unknown_shipped_name",
        lambda tmp, bb: ["audit", bb, "--spec", "no_such_spec", "--out", tmp / "a"],
        r"audit spec 'no_such_spec' not found.*synthetic",
    ),
    Case(
        "spec_invalid_yaml",
        audit("name: rel\nfindings: {pit: pits\n"),
        r"spec\.yaml: not valid YAML.*line 2",
    ),
    Case(
        "spec_unknown_key",
        audit(GOOD_SPEC + "treshold: {alpha: 0.05}\n"),
        r"spec\.yaml: unknown key\(s\) treshold \(did you mean 'thresholds'\?\)",
    ),
    Case(
        "spec_no_findings",
        audit(
            GOOD_SPEC.replace(
                'findings: {pit: pits, clean: {name: no defects, framed: false, text: "a clean surface"}}\n',
                "",
            )
        ),
        r"spec\.yaml: `findings` is required",
    ),
    Case(
        "spec_reference_not_a_framing",
        audit(GOOD_SPEC.replace("reference: neutral", "reference: plain")),
        r"spec\.yaml: reference 'plain' is not one of the framings",
    ),
    Case(
        "spec_template_without_slot",
        audit(GOOD_SPEC.replace("severe {defect}", "severe things")),
        r"spec\.yaml: framings\.alarming\.template .* has no \{finding\} placeholder",
    ),
    Case(
        "spec_duplicate_key",
        audit(GOOD_SPEC + "reference: alarming\n"),
        r"spec\.yaml: key 'reference' appears twice \(lines 4 and 9\)",
    ),
    Case(
        "spec_bad_threshold",
        audit(GOOD_SPEC + "thresholds: {alpha: 2}\n"),
        r"spec\.yaml: thresholds\.alpha = 2\.0 is out of range",
    ),
    Case(
        "spec_finding_not_in_data",
        audit(GOOD_SPEC.replace("pit: pits", "dent: dents")),
        r"m\.csv: split 'test' has images of 1 of the spec's findings.*Spec findings: dent, clean",
    ),
]


@pytest.mark.parametrize("case", AUDIT, ids=[c.name for c in AUDIT])
def test_audit_spec(case: Case, backbone: Path, tmp_path: Path, capsys) -> None:
    run_case(
        Case(case.name, lambda tmp: case.build(tmp, backbone), case.expect, case.code),
        tmp_path,
        capsys,
    )


# --- prompt sets (through evaluate) -----------------------------------------------------------


def prompts(text: str | None, name: str = "p.yaml") -> object:
    def build(tmp: Path, bb: Path) -> list[str]:
        d = _data(tmp / "data")
        if text is not None:
            (tmp / name).write_text(text)
        return [
            "evaluate",
            bb,
            "--data",
            d / "m.csv",
            "--prompts",
            tmp / name,
            "--out",
            tmp / "ev",
            "--n-boot",
            "0",
            "--no-shortcut-check",
        ]

    return build


PROMPT_CASES = [
    Case("prompts_missing", prompts(None), r"prompt set .*p\.yaml not found"),
    Case("prompts_invalid_yaml", prompts("classes: {pit: [\n"), r"p\.yaml: not valid YAML"),
    # documented: without `classes` every data label is a class, named as written
    Case(
        "prompts_no_classes",
        prompts('version: "x"\ntemplates: ["{label}"]\n'),
        r"4 images of split test",
        0,
    ),
    Case(
        "prompts_template_without_label",
        prompts(PROMPTS.replace("a photo of {label}", "a photo")),
        r"p\.yaml: templates\[0\] 'a photo' has no \{label\} placeholder",
    ),
    Case(
        "prompts_unknown_mode",
        prompts(PROMPTS.replace("single_label", "singel_label")),
        r"p\.yaml: mode must be one of single_label, multi_label, got 'singel_label'",
    ),
    # documented: a class without names fills the templates with its own (humanised) name
    Case(
        "prompts_class_without_names",
        prompts(PROMPTS.replace('{names: ["a pit"]}', "{}")),
        r"4 images of split test",
        0,
    ),
    Case(
        "prompts_duplicate_class",
        prompts(PROMPTS + '  pit: {names: ["pits"]}\n'),
        r"p\.yaml: key 'pit' appears twice",
    ),
    Case(
        "prompts_unknown_key",
        prompts(PROMPTS + "tempaltes: []\n"),
        r"p\.yaml: unknown key\(s\) tempaltes \(did you mean 'templates'\?\)",
    ),
    Case(
        "prompts_label_not_covered",
        prompts(PROMPTS.replace('  clean: {names: ["a clean surface"]}\n', "")),
        r"labels no prompt covers: 'clean' \(2 rows\).*--skip-uncovered",
    ),
]


@pytest.mark.parametrize("case", PROMPT_CASES, ids=[c.name for c in PROMPT_CASES])
def test_prompt_set(case: Case, backbone: Path, tmp_path: Path, capsys) -> None:
    run_case(
        Case(case.name, lambda tmp: case.build(tmp, backbone), case.expect, case.code),
        tmp_path,
        capsys,
    )
