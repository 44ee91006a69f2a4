"""benchmarks/gpu_check.sh end to end in its CPU mode (tiny models): every figure is produced and sane."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_quick(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--quick", "--json", str(out),
                           "--models", "var-d16,var-d30,rar-xxl,llamagen-xxl"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["schema"] == "memprune.gpu_check/1" and result["quick"] and result["device"] == "cpu"
    for name in ("var-d16", "rar-xxl"):
        row = result["models"][name]
        assert "error" not in row, row
        for key in ("tf_fp32", "tf_bf16", "prefix_cand_s", "fid_img_s", "score_overhead"):
            assert row[key] > 0, (name, key)
        assert 0.0 <= row["top10_overlap"] <= 1.0 and row["top10_units"] > 0
    assert "note" in result["models"]["var-d30"]  # quick: one tiny VAR stands in for every depth
    llamagen = result["models"]["llamagen-xxl"]
    assert "error" not in llamagen, llamagen  # measured where the family exists, else a note
    assert "note" in result["official_var"] and "skipped" in result["pytest_cuda"]["note"]
    assert "model" in proc.stdout and "FID img/s" in proc.stdout  # the table
