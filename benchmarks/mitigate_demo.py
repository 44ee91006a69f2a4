"""Wall time of ``memprune mitigate`` (default grid) and ``memprune demo`` on the bundled tiny VAR.

Targets (issue 11): mitigate with its default grid under 15 minutes, the demo under 3 minutes, on 2 CPU cores.
Both run as subprocesses of the installed CLI, so the times include model loading and SSCD start-up. Record the
machine's load beside the figures (``os.getloadavg``): on a shared machine the times say little.

Examples:
    python benchmarks/mitigate_demo.py --threads 1 --json mitigate_demo.json      # the rare model
    python benchmarks/mitigate_demo.py --model dense --threads 1
    python benchmarks/mitigate_demo.py --skip-mitigate          # the demo only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _timed(cmd: list[str]) -> tuple[float, int, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return time.perf_counter() - t, proc.returncode, proc.stdout[-2000:] + proc.stderr[-2000:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", choices=("rare", "dense"), default="rare", help="the bundled model (demo --model)")
    ap.add_argument("--target", default="3")
    ap.add_argument("--skip-mitigate", action="store_true")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    py = [sys.executable, "-m", "memprune"]
    out: dict[str, object] = {"model": args.model, "threads": args.threads, "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="mitigate_bench_") as tmp:
        data = Path(tmp) / "data"
        subprocess.run([*py, "demo", "--model", args.model, "--export-data", str(data), "-q"], check=True)
        if not args.skip_demo:
            sec, rc, tail = _timed([*py, "demo", "--model", args.model, "--threads", str(args.threads),
                                    "-o", str(Path(tmp) / "demo")])
            out["demo"] = {"seconds": round(sec, 1), "exit": rc}
            print(tail)
        if not args.skip_mitigate:
            sec, rc, tail = _timed([*py, "mitigate", str(data / "var_demo.safetensors"), "-t",
                                    str(data / "vae_demo.safetensors"), "--data", str(data / "train.csv"),
                                    "--heldout", str(data / "heldout.csv"), "--target", args.target,
                                    "--threads", str(args.threads), "-o", str(Path(tmp) / "mitigate")])
            out["mitigate"] = {"seconds": round(sec, 1), "exit": rc}
            print(tail)
    out["load_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
