"""Draw fleet-sweep.json (fleetsweep.py's points) as a PNG: each cost against N.

Run with the benchmarks' own venv, never inodewatch's (matplotlib is no dependency of it)::

    python3 -m venv benchmarks/.venv && benchmarks/.venv/bin/pip install matplotlib
    benchmarks/.venv/bin/python benchmarks/sweepplot.py benchmarks/fleet-sweep.json benchmarks/fleet-sweep.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after the backend is chosen)

PANELS = [  # (title, y label, [(field, label, scale)], target line or None)
    ("daemon attach (all N)", "s", [("attach_s", "attach", 1)], 5.0),
    ("daemon CPU", "% of one core", [("first_cpu", "first 30 s", 100), ("idle_cpu", "steady", 100),
                                     ("exec_cpu", "1,000 execs/s", 100)], None),
    ("daemon VmHWM", "MB", [("hwm_mb", "VmHWM", 1)], 100.0),
    ("full-host scan", "ms", [("scan_ms", "scan --all --json", 1), ("lsof_ms", "lsof -nP", 1),
                              ("floor_ms", "cat /proc/*/maps", 1)], None),
    ("rm+cp detection", "ms", [("lat_p50_ms", "p50", 1), ("lat_p99_ms", "p99", 1)], 5.0),
    ("mass exit drained", "s", [("drain_s", "all N exits told", 1)], 10.0),
]


def main(data: str, png: str) -> None:
    points = json.load(open(data))
    ns = [p["n"] for p in points]
    fig, axes = plt.subplots(2, 3, figsize=(14, 8))
    for ax, (title, unit, series, target) in zip(axes.flat, PANELS):
        for key, label, scale in series:
            ax.plot(ns, [p[key] * scale for p in points], marker="o", label=label)
        if target is not None:
            ax.axhline(target, color="grey", linestyle="--", linewidth=1, label="target")
        ax.set_title(title)
        ax.set_xlabel("N (plugin hosts)")
        ax.set_ylabel(unit)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("inodewatch: cost against N (benchmarks/fleet.py --hosts ...)")
    fig.tight_layout()
    fig.savefig(png, dpi=80)


if __name__ == "__main__":
    main(*sys.argv[1:3])
