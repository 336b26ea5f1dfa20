"""Write an audit's files: audit.json, scores.csv, report.md / report.html, plots, junit.xml.

The reports are built once as a list of blocks (heading, paragraph, table, image) and rendered to
Markdown and to a self-contained HTML page (images inlined), so both always say the same thing.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from domainclip.audit.gate import Check, write_junit
from domainclip.audit.plots import plot_flip_examples, plot_shift_distributions
from domainclip.audit.results import score_rows

# ("h1"|"h2"|"h3"|"p"|"code", text) | ("ul", [items]) | ("table", header, rows) | ("img", path, alt)
Block = tuple


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Atomic JSON write (temp file + fsync + rename): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, default=_json_default, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


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


def _cell_row(name: str, cell: dict[str, Any]) -> list[str]:
    w = cell["wilcoxon"]
    return [
        name,
        str(cell["n"]),
        fmt_est(cell["mean_shift"], signed=True),
        fmt_est(cell["median_shift"], signed=True),
        _p(cell["p_value"]),
        _p(w.get("p")) + (f" ({w['note']})" if w.get("note") else ""),
        f"{cell['flips']} = " + fmt_est(cell["flip_rate"]),
        fmt_est(cell["raw_similarity_shift"], 4, signed=True),
    ]


_CELL_HEADER = [
    "cell",
    "n",
    "mean shift [95% CI]",
    "median shift [95% CI]",
    "p (bootstrap-t)",
    "Wilcoxon p",
    "flips = rate [95% CI]",
    "raw similarity shift",
]


def report_blocks(data: dict[str, Any], files: dict[str, Path], out_dir: Path) -> list[Block]:
    """The report as blocks (see module doc). Image paths are relative to `out_dir`."""
    spec, gate, model = data["spec"], data["gate"], data["model"]
    ref = spec["reference"]
    verdict = gate["verdict"].upper()
    b: list[Block] = [
        ("h1", f"Prompt-framing audit: {spec['name']} ({spec['version']})"),
        (
            "p",
            f"**Verdict: {verdict}** ({gate['n_failed']} of {gate['n_checks']} checks failed, "
            f"{gate['n_skipped']} skipped). Model: `{model['label']}` ({model['family']}, "
            f"temperature {model['temperature']:.3g}: {model['temperature_source']}). "
            f"Data: `{data['data']['manifest']}`, split `{data['data']['split'] or 'all'}`, "
            f"{data['data']['n_images']} images. Reference framing: `{ref}`.",
        ),
    ]
    th = gate["thresholds"]
    b.append(
        (
            "p",
            f"Thresholds: |mean shift| > {th['max_abs_mean_shift']} with Holm-adjusted p < "
            f"{th['alpha']}; flip rate > {th['max_flip_rate']}; ECE > {th['max_ece']} "
            "(null = check off). Shifts are in probability units of the image's target class.",
        )
    )
    checks = sorted(gate["checks"], key=lambda c: {"fail": 0, "pass": 1, "skipped": 2}[c["status"]])
    b += [
        ("h2", "Gate checks"),
        (
            "table",
            ["status", "check", "detail"],
            [[c["status"].upper(), c["id"], c["message"]] for c in checks],
        ),
        ("h2", "Framings"),
    ]
    rows = []
    for name, f in data["framings"].items():
        overall = data["comparisons"].get(name, {}).get("overall")
        rows.append(
            [
                name
                + (" (reference)" if f["is_reference"] else "")
                + ("" if f["gated"] else " (not gated)"),
                f["template"],
                fmt_est(overall["mean_shift"], signed=True) if overall else "-",
                fmt_est(overall["flip_rate"]) if overall else "-",
                fmt_est(f["accuracy"]),
                fmt_est(f["ece"]),
            ]
        )
    b.append(("table", ["framing", "template", "mean shift", "flip rate", "accuracy", "ECE"], rows))
    if "shift_plot" in files:
        b.append(("img", files["shift_plot"].relative_to(out_dir), "score shifts per framing"))
    for name, comp in data["comparisons"].items():
        b.append(("h3", f"{name} vs {ref}"))
        table = [_cell_row("all", comp["overall"])]
        table += [_cell_row(f"class {c}", cell) for c, cell in comp["per_class"].items()]
        for col, cells in comp["per_subgroup"].items():
            table += [_cell_row(f"{col} = {v}", cell) for v, cell in cells.items()]
        b.append(("table", _CELL_HEADER, table))
    for name, neg in data.get("negation", {}).items():
        b.append(
            (
                "p",
                f"Negation check `{name}`: mean shift {fmt_est(neg['mean_shift'], signed=True)}; {neg['note']}.",
            )
        )
    if data.get("subgroup_calibration"):
        b.append(("h2", "Calibration per subgroup (ECE, point values)"))
        for col, values in data["subgroup_calibration"].items():
            names = list(next(iter(values.values())))
            b.append(
                (
                    "table",
                    [col, "n", *names],
                    [
                        [
                            v,
                            str(next(iter(per.values()))["n"]),
                            *[f"{per[n]['ece']:.3f}" for n in names],
                        ]
                        for v, per in values.items()
                    ],
                )
            )
    b += _compare_blocks(data)
    b.append(("h2", "Flip examples"))
    flips = [(name, ex) for name, exs in data["flip_examples"].items() for ex in exs]
    if flips:
        if "flip_plot" in files:
            b.append(("img", files["flip_plot"].relative_to(out_dir), "flipped images"))
        b.append(
            (
                "table",
                [
                    "framing",
                    "image",
                    "label",
                    "reference decision",
                    "framed decision",
                    "target-prob shift",
                ],
                [
                    [
                        name,
                        ex["image"],
                        ex["target"],
                        f"{ex['reference']['decision']} ({ex['reference']['decision_prob']:.2f})",
                        f"{ex['framed']['decision']} ({ex['framed']['decision_prob']:.2f})",
                        f"{ex['shift']:+.3f}",
                    ]
                    for name, ex in flips
                ],
            )
        )
    else:
        b.append(("p", "No top-1 decision changed under any framing."))
    m = data["method"]
    b += [
        ("h2", "Method"),
        (
            "p",
            f"Score: {m['score']}. Mean-shift interval: {m['mean_shift_interval']}; median: "
            f"{m['median_shift_interval']}; flip rate: {m['flip_rate_interval']}; significance: "
            f"{m['significance']}; ECE: {m['ece']}. {m['n_bootstrap']} bootstrap replicates, seed {m['seed']}.",
        ),
        ("p", f"Skipped: {json.dumps(data['data']['skipped'])}"),
    ]
    return b


def _compare_blocks(data: dict[str, Any]) -> list[Block]:
    comp = data.get("compare")
    if not comp:
        return []
    base = comp["base"]
    out: list[Block] = [
        ("h2", f"Compared with the base model `{base['model']['label']}`"),
        (
            "p",
            f"Base model gate verdict: {base['gate']['verdict'].upper()} "
            f"({base['gate']['n_failed']} failed). Sensitivity = mean absolute per-image shift of "
            "the target-class probability; a positive difference means fine-tuning amplified it.",
        ),
    ]
    rows = []
    for name, framing in comp["sensitivity_change"].items():
        for cell_name, cell in [("all", framing["overall"]), *framing["per_class"].items()]:
            if "mean_abs_shift_difference" not in cell:
                continue
            negation = data["framings"].get(name, {}).get("expect") == "lower"
            rows.append(
                [
                    # For a negation, *more* sensitivity is the wanted direction.
                    name + (" (negation: higher is better)" if negation else ""),
                    cell_name,
                    f"{cell['mean_abs_shift_model']:.3f}",
                    f"{cell['mean_abs_shift_base']:.3f}",
                    fmt_est(cell["mean_abs_shift_difference"], signed=True),
                    f"{cell['flip_rate_model']:.3f} vs {cell['flip_rate_base']:.3f}",
                    cell["verdict"],
                ]
            )
    out.append(
        (
            "table",
            [
                "framing",
                "cell",
                "mean |shift| model",
                "mean |shift| base",
                "difference [95% CI]",
                "flip rate model vs base",
                "verdict",
            ],
            rows,
        )
    )
    return out


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


def write_outputs(result) -> dict[str, Path]:
    """Write every audit file into `result.out_dir`; returns kind -> path (also in data["files"])."""
    out = Path(result.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = result.data
    files: dict[str, Path] = {}
    records = score_rows(result.table, result.rows)
    files["scores"] = out / "scores.csv"
    with open(files["scores"], "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    ref = data["spec"]["reference"]
    if len(result.table.framings) > 1:
        files["shift_plot"] = plot_shift_distributions(
            result.table, data, ref, out / "shift_distributions.png"
        )
    examples = [ex for exs in data["flip_examples"].values() for ex in exs]
    flip_plot = plot_flip_examples(examples, out / "flip_examples.png")
    if flip_plot is not None:
        files["flip_plot"] = flip_plot
    checks = [Check(**c) for c in data["gate"]["checks"]]
    files["junit"] = write_junit(
        checks, out / "junit.xml", f"domainclip.audit.{data['spec']['name']}"
    )
    blocks = report_blocks(data, files, out)
    files["markdown"] = out / "report.md"
    files["markdown"].write_text(to_markdown(blocks), encoding="utf-8")
    files["html"] = out / "report.html"
    files["html"].write_text(
        to_html(blocks, out, f"audit {data['spec']['name']}"), encoding="utf-8"
    )
    files["json"] = out / "audit.json"
    data["files"] = {k: p.name for k, p in files.items()}
    write_json(files["json"], data)
    return files
