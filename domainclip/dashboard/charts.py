"""Chart builders (altair for interactive charts, matplotlib for image overlays).

Pure functions from data to chart objects: the pages only place them. Every axis says what it
shows and, where there is one, its unit.
"""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd


def class_balance_chart(balance: dict[str, dict[str, int]]) -> alt.Chart:
    """Stacked bars: images per label, coloured by split (from `manifest_stats`)."""
    records = [
        {"split": split, "label": label, "images": n}
        for split, counts in balance.items()
        for label, n in counts.items()
    ]
    df = pd.DataFrame(records, columns=["split", "label", "images"])
    return (
        alt.Chart(df, title="Class balance per split")
        .mark_bar()
        .encode(
            x=alt.X("label:N", title="label", sort="-y"),
            y=alt.Y("sum(images):Q", title="images (count)"),
            color=alt.Color("split:N", title="split"),
            tooltip=["label", "split", "images"],
        )
    )


def facet_curves_chart(df: pd.DataFrame, title: str, color: str = "run") -> alt.Chart:
    """One small line chart per metric (independent y scales), lines coloured by `color`."""
    base = (
        alt.Chart(df)
        .mark_line(point=alt.OverlayMarkDef(size=20))
        .encode(
            x=alt.X("step:Q", title="optimizer step", axis=alt.Axis(format="d")),
            y=alt.Y(
                "value:Q", title="value", scale=alt.Scale(zero=False), axis=alt.Axis(format=".4~g")
            ),
            color=alt.Color(f"{color}:N", title=color),
            tooltip=[color, "metric", "step", alt.Tooltip("value:Q", format=".4f")],
        )
        .properties(width=240, height=180)
    )
    return (
        base.facet(facet=alt.Facet("metric:N", title=None), columns=3)
        .resolve_scale(y="independent")
        .properties(title=title)
    )


def histogram_chart(
    df: pd.DataFrame, field: str, title: str, x_title: str, color: str | None = None
) -> alt.Chart:
    """Histogram of `field` (20 bins), optionally one colour per `color` value, overlaid."""
    enc: dict[str, Any] = {
        "x": alt.X(f"{field}:Q", bin=alt.Bin(maxbins=20), title=x_title),
        "y": alt.Y("count():Q", title="images (count)", stack=None),
    }
    if color:
        enc["color"] = alt.Color(f"{color}:N", title=color)
    return alt.Chart(df, title=title).mark_bar(opacity=0.6).encode(**enc)


def deletion_insertion_chart(df: pd.DataFrame) -> alt.Chart:
    """Deletion / insertion curves: columns fraction, curve, value (similarity)."""
    return (
        alt.Chart(df, title="Deletion and insertion curves")
        .mark_line(point=True)
        .encode(
            x=alt.X(
                "fraction:Q",
                title="fraction of pixels removed / inserted",
                axis=alt.Axis(format="%"),
            ),
            y=alt.Y("value:Q", title="similarity to prompt A (logit)"),
            color=alt.Color("curve:N", title="curve"),
            tooltip=[
                "curve",
                alt.Tooltip("fraction:Q", format=".0%"),
                alt.Tooltip("value:Q", format=".3f"),
            ],
        )
        .properties(width=420, height=240)
    )


def reliability_chart(bins: pd.DataFrame, title: str) -> alt.LayerChart:
    """Reliability diagram: accuracy per confidence bin (bars), the diagonal of perfect
    calibration, and each bin's mean confidence (points). `bins` from `reliability_frame`."""
    diagonal = pd.DataFrame({"x": [0.0, 1.0], "y": [0.0, 1.0]})
    axis_x = alt.X(
        "lower:Q", title="confidence (predicted probability)", scale=alt.Scale(domain=[0, 1])
    )
    bars = (
        alt.Chart(bins)
        .mark_bar(opacity=0.75, stroke="white")
        .encode(
            x=axis_x,
            x2="upper:Q",
            y=alt.Y(
                "accuracy:Q", title="accuracy (fraction correct)", scale=alt.Scale(domain=[0, 1])
            ),
            y2=alt.datum(0),
            tooltip=[
                alt.Tooltip("lower:Q", format=".2f", title="bin from"),
                alt.Tooltip("upper:Q", format=".2f", title="bin to"),
                alt.Tooltip("count:Q", title="predictions"),
                alt.Tooltip("confidence:Q", format=".3f", title="mean confidence"),
                alt.Tooltip("accuracy:Q", format=".3f"),
            ],
        )
    )
    points = (
        alt.Chart(bins)
        .mark_point(color="black", filled=True, size=30)
        .encode(x="confidence:Q", y="confidence:Q")
    )
    line = alt.Chart(diagonal).mark_line(strokeDash=[4, 4], color="gray").encode(x="x:Q", y="y:Q")
    return alt.layer(bars, line, points, title=title).properties(width=320, height=280)


def confidence_histogram_chart(bins: pd.DataFrame) -> alt.Chart:
    """Predictions per confidence bin, before vs after temperature scaling."""
    return (
        alt.Chart(bins, title="Confidence histogram")
        .mark_bar(opacity=0.6)
        .encode(
            x=alt.X(
                "lower:Q",
                title="confidence (predicted probability)",
                scale=alt.Scale(domain=[0, 1]),
            ),
            x2="upper:Q",
            y=alt.Y("count:Q", title="predictions (count)", stack=None, axis=alt.Axis(format="d")),
            y2=alt.datum(0),
            color=alt.Color("when:N", title="temperature scaling", sort=["before", "after"]),
            tooltip=[
                "when",
                "count",
                alt.Tooltip("lower:Q", format=".2f"),
                alt.Tooltip("upper:Q", format=".2f"),
            ],
        )
        .properties(width=420, height=240)
    )


def estimate_bars_chart(
    df: pd.DataFrame, category: str, value: str, title: str, x_title: str, color: str | None = None
) -> alt.LayerChart:
    """Horizontal point estimates with 95% CI whiskers (columns value, ci_low, ci_high)."""
    enc: dict[str, Any] = {"y": alt.Y(f"{category}:N", title=None)}
    if color:
        enc["color"] = alt.Color(f"{color}:N", title=color)
    points = (
        alt.Chart(df)
        .mark_point(filled=True, size=60)
        .encode(x=alt.X(f"{value}:Q", title=x_title), tooltip=list(df.columns), **enc)
    )
    whiskers = alt.Chart(df).mark_rule().encode(x="ci_low:Q", x2="ci_high:Q", **enc)
    return alt.layer(whiskers, points, title=title).properties(width=420, height=alt.Step(26))


def shift_distribution_chart(
    shifts: pd.DataFrame, means: pd.DataFrame, reference: str
) -> alt.LayerChart:
    """Per-framing distribution of per-image score shifts (box + points) with the mean's 95% CI.

    `shifts`: framing, shift (probability units) per image; `means`: framing, value, ci_low,
    ci_high (from audit.json).
    """
    x = alt.X(
        "shift:Q",
        title=f"shift of the target-class probability vs '{reference}' (probability units)",
    )
    y = alt.Y("framing:N", title="framing")
    box = alt.Chart(shifts).mark_boxplot(extent="min-max", opacity=0.5, size=22).encode(x=x, y=y)
    dots = (
        alt.Chart(shifts)
        .mark_circle(size=28, opacity=0.6)
        .encode(
            x=x,
            y=y,
            color=alt.Color("target:N", title="target class"),
            tooltip=["row", "target", alt.Tooltip("shift:Q", format="+.4f")],
        )
    )
    zero = (
        alt.Chart(pd.DataFrame({"zero": [0.0]}))
        .mark_rule(color="gray", strokeDash=[4, 4])
        .encode(x="zero:Q")
    )
    ci = (
        alt.Chart(means)
        .mark_rule(color="black", strokeWidth=3)
        .encode(x="ci_low:Q", x2="ci_high:Q", y="framing:N")
    )
    mean = (
        alt.Chart(means)
        .mark_tick(color="black", thickness=3, size=26)
        .encode(
            x="value:Q",
            y="framing:N",
            tooltip=[
                alt.Tooltip("value:Q", title="mean shift", format="+.4f"),
                alt.Tooltip("ci_low:Q", format="+.4f"),
                alt.Tooltip("ci_high:Q", format="+.4f"),
            ],
        )
    )
    return alt.layer(
        box, dots, zero, ci, mean, title="Score shift per image (black: mean with 95% CI)"
    ).properties(width=640, height=alt.Step(40))
