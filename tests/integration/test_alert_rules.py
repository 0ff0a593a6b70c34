"""The example alert rules only name metrics loramill really exports."""

from __future__ import annotations

import re

import yaml

from core.kit import metrics
from core.ops.metrics import QueueCollector
from tests.conftest import ROOT


def exported() -> set[str]:
    names = {family.name for family in QueueCollector(30, ["cpu"]).describe()}
    for metric in (metrics.HTTP_LATENCY, metrics.JOB_DURATION, metrics.TRAINED_TOKENS,
                   metrics.LEASE_EXPIRIES, metrics.JOBS_FINISHED, metrics.SCHEDULER_TICKS,
                   metrics.SCHEDULER_LAST_TICK):
        for family in metric.collect():
            names |= {s.name for s in family.samples} | {family.name}
    names |= {f"{metrics.HTTP_LATENCY._name}_count", f"{metrics.LEASE_EXPIRIES._name}_total",
              f"{metrics.JOBS_FINISHED._name}_total"}
    return names


def test_alert_rules_use_exported_metrics() -> None:
    rules = yaml.safe_load((ROOT / "infra" / "prometheus" / "alerts.yml").read_text())
    exprs = [r["expr"] for group in rules["groups"] for r in group["rules"]]
    assert len(exprs) >= 3
    names = exported()
    for expr in exprs:
        used = set(re.findall(r"loramill_[a-z_]+", expr))
        assert used and used <= names, (expr, used - names)
