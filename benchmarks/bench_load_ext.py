"""How long `%load_ext compozy_nb` takes in a fresh kernel-like process (target: <= 0.5 s).

IPython is imported first (a notebook kernel already has it loaded); then the time of `%load_ext compozy_nb`
is measured in a fresh subprocess, several times, and compared with loading IPython's own `autoreload`
extension measured the same way (the ratio is printed). pandas, matplotlib, ipywidgets, redis-py and fakeredis
must not be imported by `%load_ext` (the magic's completer and the inspector load them on first use).

    python benchmarks/bench_load_ext.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

PROBE = r"""
import time, sys
from IPython.core.interactiveshell import InteractiveShell
ip = InteractiveShell.instance()
t = time.perf_counter()
ip.run_line_magic("load_ext", "EXTENSION")
elapsed = time.perf_counter() - t
heavy = [m for m in ("pandas", "matplotlib", "ipywidgets", "redis", "fakeredis") if m in sys.modules]
print(elapsed, ",".join(heavy))
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    times, baseline, heavy = [], [], set()
    for _ in range(args.runs):
        for extension, into in (("compozy_nb", times), ("autoreload", baseline)):
            probe = PROBE.replace("EXTENSION", extension)
            out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
            value, _, mods = out.strip().partition(" ")
            into.append(float(value))
            if extension == "compozy_nb":
                heavy.update(m for m in mods.split(",") if m)
    median = statistics.median(times)
    print(
        f"%load_ext compozy_nb: median {median * 1000:.0f} ms, min {min(times) * 1000:.0f} ms, "
        f"max {max(times) * 1000:.0f} ms over {args.runs} fresh processes (target <= 500 ms): "
        f"{'PASS' if median <= 0.5 else 'MISS'}"
    )
    reference = statistics.median(baseline)
    print(f"baseline %load_ext autoreload: median {reference * 1000:.1f} ms; ratio {median / reference:.1f}x")
    print(f"heavy modules imported by %load_ext: {sorted(heavy) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
