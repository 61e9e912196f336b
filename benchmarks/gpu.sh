#!/usr/bin/env bash
# Training benchmarks on one CUDA GPU, in under 5 minutes on a current data-centre GPU.
#
# Runs benchmarks/bench_training.py --device cuda --amp bf16: the paper's training step (bf16 autocast) at
# B = 4,096 and 40,960 against the GPU's bf16 GEMM peak measured in the same run, where the step's time goes,
# and loader + step end to end at B = 40,960 (the authors' per-sample DataLoader against fusemix's LatentBatcher
# with the latents preloaded on the GPU, preload=True; then fusemix.train.fit). Prints the machine and the tables.
#
# Usage:  bash benchmarks/gpu.sh [more bench_training.py options, e.g. --workers 8 --repeats 5]
# Env:    PYTHON  the interpreter to use (default: python)
#
# Exits with status 2 and a message on stderr when torch sees no CUDA GPU.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python}"

if ! "$python" - <<'PY'
import sys

try:
    import torch
except ImportError as err:
    sys.exit(f"gpu.sh: cannot import torch with {sys.executable} ({err}); activate the environment that has "
             "fusemix installed, or set PYTHON")
if not torch.cuda.is_available():
    sys.exit(f"gpu.sh: no CUDA GPU available: torch.cuda.is_available() is False (torch {torch.__version__}, "
             f"CUDA build: {torch.version.cuda}). Run this on a machine with an NVIDIA GPU and a CUDA build of "
             "PyTorch, or run 'python benchmarks/bench_training.py --device cpu' for the CPU numbers.")
PY
then
    exit 2
fi

"$python" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"gpu.sh: {p.name}, torch {torch.__version__}, CUDA {torch.version.cuda}")'
start=$SECONDS
"$python" "$here/bench_training.py" --device cuda --amp bf16 "$@"
echo "gpu.sh: done in $((SECONDS - start)) s"
