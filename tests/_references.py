"""Slow, hand-written references that several test files check the library against."""

import math

import torch


def reference_infonce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> float:
    """Symmetric InfoNCE written with explicit loops over rows and columns."""
    a = a / a.norm(dim=1, keepdim=True)
    b = b / b.norm(dim=1, keepdim=True)
    n = a.shape[0]
    sim = [[float(a[i] @ b[j]) / temperature for j in range(n)] for i in range(n)]
    i2t = sum(-sim[i][i] + math.log(sum(math.exp(s) for s in sim[i])) for i in range(n)) / n
    t2i = sum(-sim[j][j] + math.log(sum(math.exp(sim[i][j]) for i in range(n))) for j in range(n)) / n
    return 0.5 * (i2t + t2i)


def reference_siglip(a: torch.Tensor, b: torch.Tensor, scale: float, bias: float) -> float:
    """SigLIP's pairwise sigmoid loss written with explicit loops, summed over pairs and divided by the rows."""
    a = a / a.norm(dim=1, keepdim=True)
    b = b / b.norm(dim=1, keepdim=True)
    n = a.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = scale * float(a[i] @ b[j]) + bias
            label = 1.0 if i == j else -1.0
            total += math.log1p(math.exp(-label * z))
    return total / n
