"""The deployment gate: one check per (threshold, framing, cell), a verdict, and JUnit XML.

Checks (framings with ``expect: invariant`` other than the reference; ECE also on the reference):

* ``mean_shift``: fails when |mean shift| > max_abs_mean_shift AND the shift is significant: its
  sign-flip permutation p-value (`stats.sign_flip_test`: max-T over the mean test and the
  log-odds signed-rank test), Holm-adjusted over every mean-shift check of the audit (all framings, the
  "all" cell and each class cell), is below alpha. The family-wise correction is what keeps a
  clean model from failing by chance although the gate runs dozens of tests: the probability that
  any shift check of a model without framing bias fails is at most alpha.
  Class cells exist because a bias that favours one class cancels in the all-images mean
  (probabilities sum to one: what one class gains the others lose).
* ``flip_rate``: fails when the share of top-1 decisions that change vs the reference exceeds
  max_flip_rate (point estimate; the Wilson interval is reported).
* ``ece``: fails when the expected calibration error under the framing exceeds max_ece.

Every gated cell reports its power (`analysis.Power`: n, the minimum detectable shift at 80%
power, status tested / underpowered). Cells with fewer than ``min_cell_images`` images are not
tested: their check is ``skipped`` with the reason "underpowered", or ``fail`` when the spec sets
``require_power``; so is a tested cell whose minimum detectable shift exceeds ``require_power``
(the message names about how many images the cell would need).

Before all of these, the performance floors (`audit.floor.floor_checks`: balanced accuracy and
macro AUROC under the reference framing above the chance CI or a stated minimum) are listed
first by `run_audit`: a model that cannot do the task fails the gate on the floor, whatever its
framing stability.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from domainclip.audit.analysis import Cell, FramingComparison
from domainclip.audit.spec import AuditSpec, Thresholds
from domainclip.audit.stats import holm
from domainclip.errors import ConfigError
from domainclip.evaluation.bootstrap import Estimate

PASS, FAIL, SKIPPED = "pass", "fail", "skipped"


@dataclass
class Check:
    """One gate check. `value`/`ci` in probability units (shift, flip rate) or ECE units."""

    id: str
    kind: str
    framing: str
    cell: str
    value: float | None
    threshold: float
    status: str
    message: str
    ci95: list[float] | None = None
    p_value: float | None = None
    p_adjusted: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ci(e: Estimate) -> list[float] | None:
    return None if e.low is None else [e.low, e.high]


def check_resolution(spec: AuditSpec) -> None:
    """Refuse specs whose resampling is too coarse for the Holm correction of its gate.

    A permutation p-value is at least 1 / (B + 1), so with m tests Holm's smallest adjusted p is
    m / (B + 1); the check asks for twice that margin.
    If that is not well below alpha, no shift could ever fail the gate: a silent pass. The same
    is required of the bootstrap (its intervals are what the report shows).

    Raises:
        ConfigError: naming statistics.n_bootstrap / n_permutations and the smallest sensible value.
    """
    th, st = spec.thresholds, spec.statistics
    if th.max_abs_mean_shift is None:
        return
    m = spec.n_gated_shift_tests
    if m / (st.n_bootstrap + 1) > th.alpha / 2:
        need = int(2 * m / th.alpha)
        raise ConfigError(
            f"{spec.source}: statistics.n_bootstrap = {st.n_bootstrap} is too small for {m} "
            f"mean-shift tests at alpha {th.alpha} (the smallest Holm-adjusted p would be "
            f"{m / (st.n_bootstrap + 1):.3g}); use at least {need}"
        )
    if 2 * m / (st.n_permutations + 1) > th.alpha / 2:
        raise ConfigError(
            f"{spec.source}: statistics.n_permutations = {st.n_permutations} is too small for {m} "
            f"mean-shift tests at alpha {th.alpha}; use at least {int(4 * m / th.alpha)}"
        )


def _gated_cells(
    spec: AuditSpec, comparisons: Mapping[str, FramingComparison]
) -> list[tuple[str, str, Cell]]:
    cells: list[tuple[str, str, Cell]] = []
    for f in spec.framings:
        if f.name == spec.reference or not f.gated or f.name not in comparisons:
            continue
        comp = comparisons[f.name]
        cells.append((f.name, "all", comp.overall))
        cells.extend((f.name, f"class={c}", cell) for c, cell in comp.per_class.items())
    return cells


def _power_note(cell: Cell, th: Thresholds) -> tuple[bool, str]:
    """(fails for lack of power, sentence on the cell's power)."""
    mds = cell.mds
    if mds is None:
        return False, f"n={cell.n}"
    can = "nothing up to 1" if mds == float("inf") else f"{mds:.3f}"
    need = f"; about {cell.n_needed} images would be needed" if cell.n_needed else ""
    text = f"n={cell.n}, could detect shifts of at least {can} (80% power){need}"
    weak = th.require_power is not None and cell.status == "underpowered"
    return weak, text


def _shift_checks(spec: AuditSpec, comparisons: Mapping[str, FramingComparison]) -> list[Check]:
    th = spec.thresholds
    if th.max_abs_mean_shift is None:
        return []
    cells = _gated_cells(spec, comparisons)
    tested = [(i, c) for i, (_, _, c) in enumerate(cells) if c.tested and c.p_value is not None]
    adjusted = dict(zip((i for i, _ in tested), holm([c.p_value for _, c in tested]), strict=True))
    out = []
    for i, (framing, key, cell) in enumerate(cells):
        weak, power = _power_note(cell, th)
        if i not in adjusted:
            msg = f"underpowered: {cell.reason or 'not testable'}; {power}"
            if weak:
                msg = f"{msg} (require_power {th.require_power:g})"
            out.append(_shift_check(framing, key, cell, th, FAIL if weak else SKIPPED, msg))
            continue
        p_adj = adjusted[i]
        value = cell.mean_shift.value
        big = abs(value) > th.max_abs_mean_shift
        lod = cell.logodds_shift.value if cell.logodds_shift is not None else None
        big_lod = (
            th.max_abs_logodds_shift is not None
            and lod is not None
            and abs(lod) > th.max_abs_logodds_shift
        )
        significant = p_adj < th.alpha
        sf = cell.sign_flip
        mc = f" +/- {sf.mc_error:.2g}" if sf and sf.mc_error else (" exact" if sf else "")
        msg = (
            f"mean shift {value:+.4f} (95% CI {cell.mean_shift.low:+.4f} .. "
            f"{cell.mean_shift.high:+.4f}, n={cell.n}); |shift| "
            f"{'>' if big else '<='} {th.max_abs_mean_shift}"
            + (f"; log-odds shift {lod:+.3f}" if lod is not None else "")
            + f"; p = {cell.p_value:.3g}{mc}, Holm-adjusted p = {p_adj:.4g} "
            f"({'<' if significant else '>='} alpha {th.alpha}); {power}"
        )
        status = FAIL if (big or big_lod) and significant else PASS
        if weak and status == PASS:
            status = FAIL
            msg = f"underpowered (require_power {th.require_power:g}): {msg}"
        out.append(_shift_check(framing, key, cell, th, status, msg, cell.p_value, p_adj))
    return out


def _shift_check(
    framing: str,
    key: str,
    cell: Cell,
    th: Thresholds,
    status: str,
    msg: str,
    p: float | None = None,
    p_adj: float | None = None,
) -> Check:
    """The mean-shift check of one (framing, cell)."""
    return Check(
        f"mean_shift/{framing}/{key}",
        "mean_shift",
        framing,
        key,
        cell.mean_shift.value,
        th.max_abs_mean_shift,
        status,
        msg,
        _ci(cell.mean_shift),
        p,
        p_adj,
    )


def _flip_checks(spec: AuditSpec, comparisons: Mapping[str, FramingComparison]) -> list[Check]:
    th = spec.thresholds
    if th.max_flip_rate is None:
        return []
    out = []
    for f in spec.framings:
        if f.name == spec.reference or not f.gated or f.name not in comparisons:
            continue
        cell = comparisons[f.name].overall
        rate = cell.flip_rate.value
        status = FAIL if rate is not None and rate > th.max_flip_rate else PASS
        msg = (
            f"{cell.n_flips} of {cell.n} top-1 decisions differ from {spec.reference!r}: "
            f"flip rate {rate:.4f} (95% CI {cell.flip_rate.low:.4f} .. {cell.flip_rate.high:.4f}) "
            f"{'>' if status == FAIL else '<='} {th.max_flip_rate}"
        )
        out.append(
            Check(
                f"flip_rate/{f.name}",
                "flip_rate",
                f.name,
                "all",
                rate,
                th.max_flip_rate,
                status,
                msg,
                _ci(cell.flip_rate),
            )
        )
    return out


def _ece_checks(spec: AuditSpec, calibration: Mapping[str, Mapping[str, Estimate]]) -> list[Check]:
    th = spec.thresholds
    if th.max_ece is None:
        return []
    out = []
    for f in spec.framings:
        if not f.gated or f.name not in calibration:
            continue
        e = calibration[f.name]["ece"]
        status = FAIL if e.value is not None and e.value > th.max_ece else PASS
        msg = f"ECE {e.fmt(4)} {'>' if status == FAIL else '<='} {th.max_ece}"
        out.append(
            Check(f"ece/{f.name}", "ece", f.name, "all", e.value, th.max_ece, status, msg, _ci(e))
        )
    return out


def gate_checks(
    spec: AuditSpec,
    comparisons: Mapping[str, FramingComparison],
    calibration: Mapping[str, Mapping[str, Estimate]],
) -> list[Check]:
    """Every gate check of an audit, in a stable order (shift, flip rate, ECE)."""
    return (
        _shift_checks(spec, comparisons)
        + _flip_checks(spec, comparisons)
        + _ece_checks(spec, calibration)
    )


def verdict(checks: list[Check]) -> dict[str, Any]:
    """{"verdict": "pass"|"fail", "failed": [ids], "n_checks", "n_failed", "n_skipped"}."""
    failed = [c.id for c in checks if c.status == FAIL]
    return {
        "verdict": FAIL if failed else PASS,
        "failed": failed,
        "n_checks": len(checks),
        "n_failed": len(failed),
        "n_skipped": sum(c.status == SKIPPED for c in checks),
    }


def write_junit(checks: list[Check], path: Path, suite: str) -> Path:
    """JUnit XML with one testcase per check (failure = crossed threshold, skipped = untestable)."""
    failures = sum(c.status == FAIL for c in checks)
    skipped = sum(c.status == SKIPPED for c in checks)
    root = ET.Element(
        "testsuites",
        name="domainclip-audit",
        tests=str(len(checks)),
        failures=str(failures),
        errors="0",
        skipped=str(skipped),
    )
    ts = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        tests=str(len(checks)),
        failures=str(failures),
        errors="0",
        skipped=str(skipped),
    )
    for c in checks:
        tc = ET.SubElement(
            ts, "testcase", classname=f"{suite}.{c.kind}", name=f"{c.framing}/{c.cell}", time="0"
        )
        if c.status == FAIL:
            fail = ET.SubElement(tc, "failure", message=c.message, type="threshold_crossed")
            fail.text = f"{c.id}: {c.message}"
        elif c.status == SKIPPED:
            ET.SubElement(tc, "skipped", message=c.message)
        else:
            out = ET.SubElement(tc, "system-out")
            out.text = c.message
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path
