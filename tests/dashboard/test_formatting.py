"""Number formatting of the dashboard tables."""

from __future__ import annotations

from domainclip.dashboard.calibdata import fmt_estimate


def test_estimates_round_without_negative_zero() -> None:
    # an audit's median shift of -1e-9 with CI [-2e-7, -0.0] showed as "-0.0000 [-0.0000, -0.0000]"
    assert fmt_estimate({"value": -1e-9, "ci95": [-2e-7, -0.0]}, 4) == "0.0000 [0.0000, 0.0000]"
    assert fmt_estimate({"value": -0.01234, "ci95": [-0.02, 0.005]}) == "-0.012 [-0.020, 0.005]"
    assert fmt_estimate({"value": 0.5}) == "0.500"
    assert fmt_estimate({"value": None, "reason": "one class only"}) == "undefined (one class only)"
    assert fmt_estimate(None) == ""
