"""``make bench``: every benchmark at CPU-small settings (minutes); ``--full`` for the long versions.

Each benchmark writes its own JSON + Markdown result (machine, command, figures) under
``bench/results/``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

QUICK = [
    ["throughput.py"],
    ["peer_baseline.py"],
    ["solvers.py"],
    ["coreset_compare.py", "--dataset", "digits", "--epochs", "10",
     "--methods", "full:None,craig:0.5,gradmatch:0.5,random:0.5", "--tag", "quick"],
]
FULL = [
    ["coreset_compare.py", "--dataset", "digits", "--epochs", "30"],
    ["coreset_compare.py", "--dataset", "digits", "--epochs", "30", "--warm", "0.25", "--skip", "0.25",
     "--every", "0.17", "--methods", "full:None,craig:0.5,gradmatch:0.5,random:0.5", "--tag", "reference_skip"],
    ["coreset_compare.py", "--dataset", "cifar10", "--n-train", "4000", "--n-test", "500", "--n-eval", "500",
     "--epochs", "10", "--methods", "full:None,craig:0.5,gradmatch:0.5,random:0.5"],
    ["objectives_digits.py"],
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="run the long benchmarks too (about an hour on a CPU)")
    args = parser.parse_args()
    for script, *rest in QUICK + (FULL if args.full else []):
        print(f"== {script} {' '.join(rest)}", flush=True)
        subprocess.run([sys.executable, str(HERE / script), *rest], check=True)


if __name__ == "__main__":
    main()
