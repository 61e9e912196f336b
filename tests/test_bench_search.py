"""Smoke test of benchmarks/bench_search.py: it runs with --quick and prints its tables (no timing is asserted)."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_search_quick_prints_its_tables_and_the_backends_agree():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_search.py"), "--quick", "--device", "cpu", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, f"bench_search.py failed:\n{result.stdout}\n{result.stderr}"
    out = result.stdout
    assert re.search(r"^- CPU: .+logical cores", out, re.M), out
    assert re.search(r"^\|\s*queries\s*\|\s*method\s*\|", out, re.M), out
    assert re.search(r"^\|\s*1 \| fusemix torch\s*\|", out, re.M), out
    if "faiss: not installed" not in out:
        agreement = re.findall(r"^\|\s*[\d,]+ \|\s*([\d.]+)% \|", out, re.M)
        assert agreement and all(float(a) == 100.0 for a in agreement), out
    assert "Streamed from a float16 LatentStore" in out
