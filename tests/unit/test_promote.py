"""The promotion gate's decision rule, on given scores (tests/test_flows.py runs it on real models)."""

from __future__ import annotations

from relsft import promote


def test_gate_decisions():
    floors = {"test": 0.5, "test_ood": 0.3}
    assert promote.gate({"test": 0.6, "test_ood": 0.4}, None, floors, 0.02).promote
    low = promote.gate({"test": 0.6, "test_ood": 0.2}, None, floors, 0.02)
    assert not low.promote and "test_ood strict_f1 0.2000 is below the floor 0.3000" in low.reasons
    prod = {"test": 0.8, "test_ood": 0.5}
    assert promote.gate({"test": 0.79, "test_ood": 0.48}, prod, floors, 0.02).promote  # within tolerance
    worse = promote.gate({"test": 0.9, "test_ood": 0.47}, prod, floors, 0.02)
    assert not worse.promote and any("test_ood" in r and "worse than production" in r for r in worse.reasons)
