"""Reading GET /metrics the way Prometheus does: with prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, by name and labels; the parser fails on text Prometheus would refuse."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of the series of `name` whose labels include `labels` (PromQL's sum over the others)."""
    wanted = set(labels.items())
    found = [value for (series, have), value in samples(text).items() if series == name and wanted <= have]
    assert found, f"{name}{labels} not in /metrics"
    return sum(found)
