"""Write an audit's files: audit.json, scores.csv, report.md / report.html, plots, junit.xml.

The reports are built once as a list of blocks (heading, paragraph, table, image) and rendered to
Markdown and to a self-contained HTML page (images inlined), so both always say the same thing.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from domainclip.audit.gate import write_junit
from domainclip.audit.plots import plot_flip_examples, plot_shift_distributions
from domainclip.audit.results import AUDIT_FILE, AuditReport, score_rows
from domainclip.privacy import (
    PIXEL_NOTE,
    displayable_columns,
    hidden_columns,
    hidden_note,
    is_shown_column,
)

if TYPE_CHECKING:
    from domainclip.audit.api import AuditResult

# ("h1"|"h2"|"h3"|"p"|"code", text) | ("ul", [items]) | ("table", header, rows) | ("img", path, alt)
Block = tuple


def fmt_est(e: dict[str, Any] | None, digits: int = 3, signed: bool = False) -> str:
    """'+0.031 [+0.012, +0.050]' from an Estimate dict; 'n/a (reason)' when undefined."""
    if not e or e.get("value") is None:
        return f"n/a ({e.get('reason')})" if e and e.get("reason") else "n/a"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    ci = e.get("ci95")
    text = f.format(e["value"])
    return text + (f" [{f.format(ci[0])}, {f.format(ci[1])}]" if ci else "")


def _p(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def _gated_p(cell: dict[str, Any]) -> str:
    """'0.0012 +/- 0.0001' (sign-flip p with its Monte Carlo error; 'exact' when enumerated)."""
    sf = cell.get("sign_flip")
    if not sf:
        return _p(cell["p_value"])
    return _p(sf["p"]) + (" (exact)" if sf["exact"] else f" +/- {sf['mc_error']:.1g}")


def _power_cell(cell: dict[str, Any]) -> str:
    if "status" not in cell:
        return "-"
    mds = cell.get("min_detectable_shift")
    return f"{cell['status']}, >= {_mds_text(mds)}"


def _cell_row(name: str, cell: dict[str, Any]) -> list[str]:
    w = cell["wilcoxon"]
    return [
        name,
        str(cell["n"]),
        fmt_est(cell["mean_shift"], signed=True),
        fmt_est(cell.get("logodds_shift"), signed=True),
        fmt_est(cell["median_shift"], signed=True),
        _gated_p(cell),
        _p(w.get("p")) + (f" ({w['note']})" if w.get("note") else ""),
        f"{cell['flips']} = " + fmt_est(cell["flip_rate"]),
        fmt_est(cell["raw_similarity_shift"], 4, signed=True),
        _power_cell(cell),
    ]


_CELL_HEADER = [
    "cell",
    "n",
    "mean shift [95% CI]",
    "log-odds shift [95% CI]",
    "median shift [95% CI]",
    "p (sign-flip: mean, log-odds ranks)",
    "Wilcoxon p",
    "flips = rate [95% CI]",
    "raw similarity shift",
    "power: status, detectable shift",
]


def report_blocks(
    report: AuditReport, files: dict[str, Path], out_dir: Path, allowed: Sequence[str] = ()
) -> list[Block]:
    """The report as blocks (see module doc). Image paths are relative to `out_dir`.

    Subgroup columns neither on `privacy.SAFE_COLUMNS` nor in `allowed` are named, not shown.
    """
    return [
        *_summary_blocks(report),
        *remedy_blocks(report),
        *power_blocks(report),
        *_framing_blocks(report, files, out_dir, allowed),
        *_subgroup_calibration_blocks(report, allowed),
        *_compare_blocks(report),
        *_flip_blocks(report, files, out_dir),
        *_method_blocks(report),
    ]


def _summary_blocks(r: AuditReport) -> list[Block]:
    """Title, verdict, thresholds and the gate checks (failed first)."""
    spec, gate, model, data = r.spec, r.gate, r.main.model, r.data
    th = gate.thresholds
    order = {"fail": 0, "pass": 1, "skipped": 2}
    checks = sorted(gate.checks, key=lambda c: order[c.status])
    return [
        ("h1", f"Prompt-framing audit: {spec['name']} ({spec['version']})"),
        (
            "p",
            f"**Verdict: {gate.verdict.upper()}** ({gate.n_failed} of {gate.n_checks} checks "
            f"failed, {gate.n_skipped} skipped). Model: `{model.label}` ({model.family}, "
            f"temperature {model.temperature:.3g}: {model.temperature_source}"
            + (f"; input {model.fit}, {model.image_size} px" if model.fit else "")
            + "). "
            f"Data: `{data.manifest}`, split `{data.split or 'all'}`, "
            f"{data.n_images} images. Reference framing: `{r.reference}`.",
        ),
        (
            "p",
            f"Thresholds: |mean shift| > {th.max_abs_mean_shift} with Holm-adjusted p < "
            f"{th.alpha}; flip rate > {th.max_flip_rate}; ECE > {th.max_ece} "
            "(null = check off). Shifts are in probability units of the image's target class.",
        ),
        ("h2", "Gate checks"),
        (
            "table",
            ["status", "check", "detail"],
            [[c.status.upper(), c.id, c.message] for c in checks],
        ),
    ]


def _framing_blocks(
    r: AuditReport, files: dict[str, Path], out_dir: Path, allowed: Sequence[str]
) -> list[Block]:
    """One summary row per framing, the shift plot, each framing's cells, negation checks."""
    rows = []
    for name, f in r.main.framings.items():
        overall = r.main.comparisons.get(name, {}).get("overall")
        rows.append(
            [
                name
                + (" (reference)" if f.is_reference else "")
                + ("" if f.gated else " (not gated)"),
                f.template,
                fmt_est(overall["mean_shift"], signed=True) if overall else "-",
                fmt_est(overall["flip_rate"]) if overall else "-",
                fmt_est(f.accuracy),
                fmt_est(f.ece),
            ]
        )
    header = ["framing", "template", "mean shift", "flip rate", "accuracy", "ECE"]
    b: list[Block] = [("h2", "Framings"), ("table", header, rows)]
    if "shift_plot" in files:
        b.append(("img", files["shift_plot"].relative_to(out_dir), "score shifts per framing"))
    for name, comp in r.main.comparisons.items():
        b.append(("h3", f"{name} vs {r.reference}"))
        table = [_cell_row("all", comp["overall"])]
        table += [_cell_row(f"class {c}", cell) for c, cell in comp["per_class"].items()]
        for col, cells in comp["per_subgroup"].items():
            if is_shown_column(col, allowed):
                table += [_cell_row(f"{col} = {v}", cell) for v, cell in cells.items()]
        b.append(("table", _CELL_HEADER, table))
    withheld = hidden_columns(
        dict.fromkeys(c for comp in r.main.comparisons.values() for c in comp["per_subgroup"]),
        allowed,
    )
    if withheld:
        b.append(("p", hidden_note(withheld)))
    for name, neg in r.main.negation.items():
        shift = fmt_est(neg.mean_shift, signed=True)
        b.append(("p", f"Negation check `{name}` (images whose class text it changes): mean "
                  f"shift {shift}; {neg.note}."))
        if neg.per_class:
            rows = [
                [c, str(v["n"]), fmt_est(v["mean_shift"], signed=True), v["direction"]]
                for c, v in neg.per_class.items()
            ]
            b.append(("table", ["class", "n", "mean shift [95% CI]", "negation"], rows))
    return b


# ------------------------------------------------------------------------------ power, remedies


def _gated_framings(r: AuditReport) -> list[str]:
    return [n for n, f in r.main.framings.items() if f.gated and not f.is_reference]


def _mds_text(v: float | None) -> str:
    return "nothing up to 1" if v is None else f"{v:.3f}"


def cell_power(r: AuditReport) -> list[dict[str, Any]] | None:
    """Per gated cell group ("all", then each class): n, status (underpowered when any gated
    framing's cell is), the largest minimum detectable shift over the gated framings (None =
    nothing detectable) and the most images any of them needs. None for files written before
    power was reported."""
    framings = [f for f in _gated_framings(r) if f in r.main.comparisons]
    if not framings or "status" not in r.main.comparisons[framings[0]]["overall"]:
        return None
    keys = ["all", *r.data.n_per_class]
    out = []
    for key in keys:
        cells = [
            r.main.comparisons[f]["overall"] if key == "all"
            else r.main.comparisons[f]["per_class"].get(key)
            for f in framings
        ]
        cells = [c for c in cells if c]
        if not cells:
            continue
        mds = [c.get("min_detectable_shift") for c in cells]
        need = [c.get("images_needed") for c in cells if c.get("images_needed")]
        out.append(
            {
                "cell": key,
                "n": cells[0]["n"],
                "status": "underpowered" if any(c["status"] != "tested" for c in cells)
                else "tested",
                "mds": None if any(m is None for m in mds) else max(mds),
                "images_needed": max(need) if need else None,
            }
        )
    return out


def power_sentence(r: AuditReport) -> str:
    """What shifts this audit could have seen, per class, and which cells are underpowered."""
    cells = cell_power(r)
    if cells is None:
        return (
            "Power not recorded (audit.json written before power was reported): re-run "
            "`domainclip audit` to see which shifts this audit could detect."
        )
    overall, classes = cells[0], cells[1:]
    weak = [c for c in classes if c["status"] == "underpowered"]
    text = (
        f"This audit could detect mean shifts of the target-class probability of at least "
        f"{_mds_text(overall['mds'])} over all {overall['n']} images"
        + (
            "; per class: "
            + ", ".join(f"{c['cell']} {_mds_text(c['mds'])} (n={c['n']})" for c in classes)
            if classes
            else ""
        )
        + " (80% power, the gate's own rule and level; the largest over the gated framings)."
    )
    if classes and len(weak) == len(classes):
        need = max((c["images_needed"] or 0) for c in weak)
        text = (
            "**Every class cell is underpowered** ("
            + ", ".join(f"{c['cell']} n={c['n']}" for c in weak)
            + "): "
            "a framing bias confined to one class would go unseen by this audit"
            + (f"; audit about {need} images per class" if need else "")
            + ". " + text
        )
    elif weak:
        text += " **Underpowered:** " + "; ".join(
            f"{c['cell']} (n={c['n']}" + (f", about {c['images_needed']} needed)" if c["images_needed"] else ")")
            for c in weak
        ) + "."
    return text


def power_blocks(r: AuditReport) -> list[Block]:
    """'Audit power': the sentence and the per-cell table."""
    cells = cell_power(r)
    b: list[Block] = [("h2", "Audit power"), ("p", power_sentence(r))]
    if cells:
        rows = [
            [c["cell"], str(c["n"]), c["status"], _mds_text(c["mds"]),
             str(c["images_needed"] or "-")]
            for c in cells
        ]
        header = ["cell", "n", "status", "could detect shifts of at least", "images needed"]
        b.append(("table", header, rows))
    return b


def remedy_lines(r: AuditReport) -> list[str]:
    """What a user can do about the failed checks, with exact commands (empty when passing)."""
    failed = r.gate.failed_checks
    if not failed:
        return []
    run = r.main.model.run or "RUN"
    spec = r.spec["name"]
    kinds = {c.kind for c in failed}
    weak = [c for c in failed if c.message.startswith("underpowered")]
    out = []
    robust = r.main.model.robustness
    wording_failed = bool({"mean_shift", "flip_rate"} & kinds) and len(weak) < len(failed)
    if wording_failed and robust:  # already trained for it: stronger settings, not the same switch
        out.append(
            f"This run already trained for framing robustness (pool {robust['pool']}, k "
            f"{robust['k']}, weight {robust['weight']}): try more framings per step and a larger "
            f"weight (`domainclip finetune {run}/config.yaml --set robustness.k="
            f"{robust['k'] * 2} --set robustness.weight={robust['weight'] * 2:g} --out "
            f"{run}-k{robust['k'] * 2}`), or a pool with your own wordings (`robustness.pool=PATH`, "
            f"docs/finetune.md), then compare with `domainclip audit ... --compare {run} --gate`."
        )
    elif wording_failed:
        out.append(
            f"Train for framing robustness: `domainclip finetune {run}/config.yaml --set "
            f"robustness.enabled=true --out {run}-robust`, then compare: `domainclip audit "
            f"{run}-robust --spec {spec} --compare {run} --gate`."
        )
    if "ece" in kinds:
        out.append(f"Recalibrate: `domainclip evaluate {run} --calibrate auto`, then re-audit.")
    if weak:
        out.append(
            "Audit more images: " + "; ".join(f"{c.cell} ({c.framing})" for c in weak[:6])
            + (" ..." if len(weak) > 6 else "")
            + " cannot detect the required shift (see 'Audit power' for the images needed)."
        )
    if any(c.kind.startswith("performance") for c in failed):
        out.append("The model does not beat chance under the reference wording: fix the task "
                   "first (more data or steps); framing robustness comes after.")
    return out


def remedy_blocks(r: AuditReport) -> list[Block]:
    lines = remedy_lines(r)
    return [("h2", "What you can do"), ("ul", lines)] if lines else []


def _subgroup_calibration_blocks(r: AuditReport, allowed: Sequence[str]) -> list[Block]:
    shown = displayable_columns(r.main.subgroup_calibration, allowed)
    if not shown:
        return []
    b: list[Block] = [("h2", "Calibration per subgroup (ECE, point values)")]
    for col in shown:
        values = r.main.subgroup_calibration[col]
        names = list(next(iter(values.values())))
        rows = [
            [v, str(next(iter(per.values()))["n"]), *[f"{per[n]['ece']:.3f}" for n in names]]
            for v, per in values.items()
        ]
        b.append(("table", [col, "n", *names], rows))
    return b


def _flip_blocks(r: AuditReport, files: dict[str, Path], out_dir: Path) -> list[Block]:
    b: list[Block] = [("h2", "Flip examples"), ("p", PIXEL_NOTE)]
    flips = [(name, ex) for name, exs in r.flip_examples.items() for ex in exs]
    if not flips:
        return [*b, ("p", "No top-1 decision changed under any framing.")]
    if "flip_plot" in files:
        b.append(("img", files["flip_plot"].relative_to(out_dir), "flipped images"))
    header = [
        "framing",
        "image",
        "label",
        "reference decision",
        "framed decision",
        "target-prob shift",
    ]
    rows = [
        [
            name,
            ex.image,
            ex.target,
            f"{ex.reference.decision} ({ex.reference.decision_prob:.2f})",
            f"{ex.framed.decision} ({ex.framed.decision_prob:.2f})",
            f"{ex.shift:+.3f}",
        ]
        for name, ex in flips
    ]
    return [*b, ("table", header, rows)]


def _method_blocks(r: AuditReport) -> list[Block]:
    m = r.method
    return [
        ("h2", "Method"),
        (
            "p",
            f"Score: {m['score']}. Mean-shift interval: {m['mean_shift_interval']}; median: "
            f"{m['median_shift_interval']}; flip rate: {m['flip_rate_interval']}; significance: "
            f"{m['significance']}; ECE: {m['ece']}. {m['n_bootstrap']} bootstrap replicates, "
            f"seed {m['seed']}.",
        ),
        ("p", f"Skipped: {json.dumps(r.data.skipped)}"),
    ]


def _compare_blocks(r: AuditReport) -> list[Block]:
    if r.compare is None:
        return []
    base, base_gate = r.compare.base, r.compare.base_gate
    out: list[Block] = [
        ("h2", f"Compared with `{base.model.label}`"),
        (
            "p",
            f"Compared model's gate verdict: {base_gate.verdict.upper()} "
            f"({base_gate.n_failed} failed). Sensitivity = mean absolute per-image shift of "
            "the target-class probability; raw shifts are not comparable across models (a model "
            "near chance barely moves), so the verdict rests on the flip rate and on the shift "
            "normalised by each model's own score spread (|shift| / SD of its target-class "
            "probability).",
        ),
    ]
    notes = {
        c["overall"].get("note")
        for c in r.compare.sensitivity_change.values()
        if c["overall"].get("note")
    }
    out += [("p", f"**Comparison uninformative:** {n}.") for n in sorted(notes)]
    rows = []
    for name, framing in r.compare.sensitivity_change.items():
        framed = r.main.framings.get(name)
        # For a negation, *more* sensitivity is the wanted direction.
        negation = framed is not None and framed.expect == "lower"
        for cell_name, cell in [("all", framing["overall"]), *framing["per_class"].items()]:
            if "mean_abs_shift_difference" not in cell:
                continue
            rows.append(
                [
                    name + (" (negation: higher is better)" if negation else ""),
                    cell_name,
                    f"{cell['mean_abs_shift_model']:.3f}",
                    f"{cell['mean_abs_shift_base']:.3f}",
                    fmt_est(cell["mean_abs_shift_difference"], signed=True),
                    _normalised(cell),
                    f"{cell['flip_rate_model']:.3f} vs {cell['flip_rate_base']:.3f}",
                    cell["verdict"],
                ]
            )
    header = [
        "framing",
        "cell",
        "mean |shift| model",
        "mean |shift| base",
        "difference [95% CI]",
        "normalised |shift| model vs base",
        "flip rate model vs base",
        "verdict",
    ]
    return [*out, *side_by_side_blocks(r), ("h3", "Sensitivity change per cell"),
            ("table", header, rows)]


def side_by_side_rows(r: AuditReport) -> list[list[str]]:
    """Per framing ("all" cell): shift and flip rate of this run and of the compared one, each
    with its CI, and the paired-by-image differences with their p-values."""
    rows = []
    change = r.compare.sensitivity_change if r.compare is not None else {}
    for name, framing in change.items():
        sbs = framing["overall"].get("side_by_side")
        if not sbs:
            continue
        rows.append(
            [
                name,
                fmt_est(sbs["mean_shift_model"], signed=True),
                fmt_est(sbs["mean_shift_base"], signed=True),
                f"{fmt_est(sbs['mean_shift_difference'], signed=True)}, p "
                f"{_p(sbs['mean_shift_difference_p'])}",
                fmt_est(sbs["flip_rate_model"]),
                fmt_est(sbs["flip_rate_base"]),
                f"{fmt_est(framing['overall']['flip_rate_difference'], signed=True)}, p "
                f"{_p(sbs['flip_rate_difference_p'])}",
                framing["overall"]["verdict"],
            ]
        )
    return rows


SIDE_BY_SIDE_HEADER = [
    "framing",
    "mean shift: this run",
    "mean shift: compared",
    "difference (paired) [95% CI], p",
    "flip rate: this run",
    "flip rate: compared",
    "difference (paired) [95% CI], p",
    "verdict",
]


def side_by_side_blocks(r: AuditReport) -> list[Block]:
    rows = side_by_side_rows(r)
    if not rows:
        return []
    label = r.compare.base.model.label if r.compare is not None else "?"
    return [
        ("h3", f"This run vs `{label}`, per framing (all images)"),
        (
            "p",
            "Both runs scored the same images; differences are paired by image (the same "
            "bootstrap replicates for both), p-values two-sided. Use it for robust vs plain: "
            "audit the robust run with `--compare PLAIN_RUN`.",
        ),
        ("table", SIDE_BY_SIDE_HEADER, rows),
    ]


def _normalised(cell: dict[str, Any]) -> str:
    """'0.41 vs 0.22' (files written before normalised shifts: '-')."""
    if "normalised_shift_model" not in cell:
        return "-"
    return f"{cell['normalised_shift_model']:.3f} vs {cell['normalised_shift_base']:.3f}"


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for blk in blocks:
        kind = blk[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + blk[1])
        elif kind == "p":
            out.append(blk[1])
        elif kind == "ul":
            out += [f"- {item}" for item in blk[1]]
        elif kind == "code":
            out += ["```", blk[1], "```"]
        elif kind == "table":
            header, rows = blk[1], blk[2]
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "---|" * len(header))
            out += ["| " + " | ".join(_md_escape(c) for c in r) + " |" for r in rows]
        elif kind == "img":
            out.append(f"![{blk[2]}]({Path(blk[1]).as_posix()})")
        out.append("")
    return "\n".join(out)


def _inline_md(text: str) -> str:
    """Escape, then render the two inline styles the reports use: **bold** and `code`."""
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def to_html(blocks: list[Block], out_dir: Path, title: str) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}",
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}",
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}",
        "th{background:#f0f0f0} .fail{color:#b00;font-weight:bold} .pass{color:#070}",
        "img{max-width:100%}</style></head><body>",
    ]
    for blk in blocks:
        kind = blk[0]
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{html.escape(blk[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline_md(blk[1])}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{_inline_md(i)}</li>" for i in blk[1]) + "</ul>")
        elif kind == "code":
            parts.append(f"<pre><code>{html.escape(blk[1])}</code></pre>")
        elif kind == "table":
            parts.append(
                "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in blk[1]) + "</tr>"
            )
            for r in blk[2]:
                cells = []
                for c in r:
                    cls = {"FAIL": " class='fail'", "PASS": " class='pass'"}.get(str(c), "")
                    cells.append(f"<td{cls}>{html.escape(str(c))}</td>")
                parts.append("<tr>" + "".join(cells) + "</tr>")
            parts.append("</table>")
        elif kind == "img":
            png = (out_dir / blk[1]).read_bytes()
            data = base64.b64encode(png).decode()
            parts.append(
                f"<p><img alt='{html.escape(blk[2])}' src='data:image/png;base64,{data}'></p>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_outputs(result: AuditResult, allowed: Sequence[str] = ()) -> dict[str, Path]:
    """Write every audit file into `result.out_dir`; returns kind -> path (their names also go
    into `result.report.files`). `allowed`: subgroup columns the reports may show beyond the
    safe list (`domainclip.privacy`)."""
    out = Path(result.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = result.report
    files: dict[str, Path] = {}
    records = score_rows(result.table, result.rows, result.show_paths)
    files["scores"] = out / "scores.csv"
    with open(files["scores"], "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    if len(result.table.framings) > 1:
        files["shift_plot"] = plot_shift_distributions(
            result.table, report, report.reference, out / "shift_distributions.png"
        )
    examples = [ex for exs in report.flip_examples.values() for ex in exs]
    flip_plot = plot_flip_examples(examples, out / "flip_examples.png", paths=result.paths)
    if flip_plot is not None:
        files["flip_plot"] = flip_plot
    files["junit"] = write_junit(
        report.gate.checks, out / "junit.xml", f"domainclip.audit.{report.spec['name']}"
    )
    blocks = report_blocks(report, files, out, allowed)
    files["markdown"] = out / "report.md"
    files["markdown"].write_text(to_markdown(blocks), encoding="utf-8")
    files["html"] = out / "report.html"
    files["html"].write_text(
        to_html(blocks, out, f"audit {report.spec['name']}"), encoding="utf-8"
    )
    files["json"] = out / AUDIT_FILE
    report.files = {k: p.name for k, p in files.items()}
    report.write(files["json"])
    return files
