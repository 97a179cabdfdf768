"""--metrics-file: the file parses as Prometheus text, holds the values set, drops resolved
divergences to 0, and is replaced atomically (a reader never sees half of it)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from inodewatch.events import LIVE, NAMES
from inodewatch.metrics import Metrics


def samples(path: Path) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) -> value, from the file as the textfile collector reads it."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(path.read_text())
            for s in family.samples}


def live(subject: str, kind: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return "inodewatch_divergences_live", frozenset({("subject", subject), ("kind", kind)})


def events(name: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return "inodewatch_events_total", frozenset({("event", name)})


TARGETS = ("inodewatch_targets_watched", frozenset())
UPDATED = ("inodewatch_last_update_timestamp_seconds", frozenset())


def test_written_file_holds_the_values(tmp_path):
    path = tmp_path / "inodewatch.prom"
    metrics = Metrics(str(path))
    metrics.set_targets(2)
    metrics.count_event("mapping.deleted")
    metrics.count_event("mapping.deleted")
    metrics.count_event("target.attached")
    metrics.set_live({("mapping", "deleted"): 1, ("fd", "replaced"): 3})
    before = time.time()
    assert metrics.write() is None
    got = samples(path)
    assert got[TARGETS] == 2
    assert got[events("mapping.deleted")] == 2 and got[events("target.attached")] == 1
    assert got[live("mapping", "deleted")] == 1 and got[live("fd", "replaced")] == 3
    assert before <= got[UPDATED] <= time.time()


def test_every_series_exists_from_the_start(tmp_path):
    """A series born at 1 is invisible to increase(): every known one starts at 0."""
    path = tmp_path / "inodewatch.prom"
    assert Metrics(str(path)).write() is None
    got = samples(path)
    assert all(got[events(name)] == 0 for name in NAMES)
    assert all(got[live(subject, kind)] == 0 for subject, kind in LIVE)
    assert ("fd", "overwritten") not in LIVE
    assert not any(name.endswith("_created") for name, _ in got)  # no creation-time gauges


def test_live_counts_drop_to_zero(tmp_path):
    path = tmp_path / "inodewatch.prom"
    metrics = Metrics(str(path))
    metrics.set_live({("mapping", "overwritten"): 1, ("mapping", "renamed"): 2, ("fd", "odd"): 4})
    metrics.write()
    metrics.set_live({("mapping", "renamed"): 1})
    metrics.write()
    got = samples(path)
    assert got[live("mapping", "renamed")] == 1
    assert got[live("mapping", "overwritten")] == 0
    assert got[live("fd", "odd")] == 0  # a series not known in advance drops too


def test_replaced_atomically(tmp_path, monkeypatch):
    """The new file is complete, in the same directory, before it is renamed over the old
    one; a reader holding the old file reads it whole; nothing is left behind."""
    path = tmp_path / "inodewatch.prom"
    metrics = Metrics(str(path))
    metrics.set_targets(1)
    assert metrics.write() is None
    old_text = path.read_text()
    renames: list[tuple[str, str]] = []
    real_rename, real_replace = os.rename, os.replace

    def checked(real):
        def rename(src, dst, *args, **kwargs):
            assert os.path.dirname(src) == str(tmp_path) and dst == str(path)
            assert "inodewatch_targets_watched 5.0" in Path(src).read_text()  # already whole
            assert path.read_text() == old_text  # the old file untouched until now
            renames.append((src, dst))
            return real(src, dst, *args, **kwargs)
        return rename

    monkeypatch.setattr(os, "rename", checked(real_rename))
    monkeypatch.setattr(os, "replace", checked(real_replace))
    with open(path) as reader:
        metrics.set_targets(5)
        assert metrics.write() is None
        assert reader.read() == old_text  # the old inode, whole
    assert len(renames) == 1
    assert samples(path)[TARGETS] == 5
    assert os.listdir(tmp_path) == ["inodewatch.prom"]


def test_failed_rename_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "inodewatch.prom"
    metrics = Metrics(str(path))
    assert metrics.write() is None
    old_text = path.read_text()

    def fail(src, dst, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", fail)
    monkeypatch.setattr(os, "replace", fail)
    metrics.set_targets(9)
    assert metrics.write() == f"cannot write metrics file {path}: No space left on device"
    assert path.read_text() == old_text
    assert os.listdir(tmp_path) == ["inodewatch.prom"]


def test_missing_directory_is_an_error_not_an_exception(tmp_path):
    path = tmp_path / "absent" / "inodewatch.prom"
    message = Metrics(str(path)).write()
    assert message == f"cannot write metrics file {path}: No such file or directory"
    assert not (tmp_path / "absent").exists()


def test_private_registry():
    from prometheus_client import REGISTRY

    Metrics("/nonexistent/inodewatch.prom")
    assert REGISTRY.get_sample_value("inodewatch_targets_watched") is None
    Metrics("/nonexistent/again.prom")  # a second instance: no duplicate-series error
