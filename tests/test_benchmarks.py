"""Smoke tests of the benchmark scripts: each runs with --quick and prints the machine and a markdown table.

No timing is asserted here; speed goals live in the benchmarks' own output.
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def run_quick(script: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", "--device", "cpu", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def table_rows(output: str, first_header: str) -> list[list[str]]:
    """The body rows of the markdown table whose header starts with ``first_header``."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"\|\s*{re.escape(first_header)}\s*\|", line))
    assert re.fullmatch(r"\|(-+:?\|)+", lines[start + 1]), lines[start + 1]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def assert_machine_described(output: str) -> None:
    assert re.search(r"^- CPU: .+logical cores", output, re.M), output
    assert re.search(r"^- Python .+, torch .+intra-op threads", output, re.M), output


def test_gemm_peak_quick():
    out = run_quick("bench_gemm_peak.py")
    assert_machine_described(out)
    rows = table_rows(out, "n")
    assert [r[0] for r in rows] == ["128", "256", "512"]
    assert all(float(r[-1].replace(",", "")) > 0 for r in rows)
    assert re.search(r"Machine fp32 GEMM peak \(achieved\): [\d,.]+ GFLOP/s", out)


def test_retrieval_quick_agrees_with_lavis_loop():
    out = run_quick("bench_retrieval.py")
    assert_machine_described(out)
    rows = table_rows(out, "size")
    methods = [r[1] for r in rows]
    assert sum(m.startswith("LAVIS") for m in methods) == 2
    assert any("extrapolated from" in m for m in methods)
    assert sum(m.startswith("fusemix.retrieval_metrics") for m in methods) == 3
    assert all(r[4].endswith("x") for r in rows)
    # The script exits non-zero when the float64 ranks differ; it also says they matched.
    assert "float64 check: identical ranks" in out


def test_fusemix_cost_quick():
    out = run_quick("bench_fusemix_cost.py")
    assert_machine_described(out)
    rows = table_rows(out, "B")
    assert len(rows) == 1 and rows[0][0] == "128"
    assert rows[0][5].endswith("%")


def test_package_does_not_import_benchmarks():
    sources = sorted((ROOT / "src" / "fusemix").rglob("*.py"))
    assert sources
    importing = [
        p.name
        for p in sources
        if re.search(r"^\s*(from|import)\s+(benchmarks|_common|bench_)", p.read_text(encoding="utf-8"), re.M)
    ]
    assert importing == []
