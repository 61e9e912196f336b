"""The core against the FuseMix authors' recipe, re-derived here from its formulas (not copied from their code).

What the authors' release (layer6ai-labs/fusemix, a LAVIS fork) computes, written down as small independent
references:

- fusion adapter: ``depth`` pre-LayerNorm residual blocks ``x + W2(Dropout(GELU(W1(LN(x)))))`` with
  ``W1: d -> 4d``, ``W2: 4d -> d``, then ``LN -> Linear(d -> 512)``; default PyTorch initialisation;
- FuseMix: the batch in two halves, one ``lam ~ Beta(1, 1)`` per batch (a numpy float64),
  ``lam * first + (1 - lam) * second`` (``1 - lam`` computed in float64);
- loss: both sides L2-normalised, ``logits = sim / temp`` with a learnable ``temp`` initialised at 0.07 and
  clamped to ``[0.001, 0.5]`` before each forward, the mean of the image->text and text->image cross-entropies;
- AdamW (0.9, 0.999) with weight decay 0.1 on the >= 2-D weights only (not on biases, norms or ``temp``);
- learning rate: during epoch 0, ``min(lr, 1e-6 + (lr - 1e-6) * step / 100)`` by step within the epoch; from
  epoch 1 on, ``1e-6 + (lr - 1e-6) * (1 + cos(pi * epoch / epochs)) / 2``, constant within the epoch;
- mixing alpha: a per-epoch cosine or exponential schedule (flat at 1 in the released configs).

The references below are written from these formulas; the tests pin fusemix's FusionAdapter, FuseMix,
ContrastiveLoss, weight_decay_groups / build_optimizer, lr_at and alpha_at against them.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from fusemix import FuseMix
from fusemix.mixing import mix_latents, sample_mix_params
from fusemix.train import TrainConfig, alpha_at, build_optimizer, lr_at, model_from_config, weight_decay_groups

PAPER_DIMS = {"image": 1536, "text": 1024}  # DINOv2 ViT-G/14 and BGE-large
PAPER_PARAMETERS = 110_440_449
SMALL_DIMS = {"image": 24, "text": 16}


# --------------------------------------------------------------------------- references, from the formulas


class ReferenceAdapter(nn.Module):
    """``depth`` blocks ``x + W2(Dropout(GELU(W1(LN(x)))))``, then ``LN -> Linear(d -> out)``."""

    def __init__(self, dim: int, out: int, depth: int, expansion: int, dropout: float) -> None:
        super().__init__()
        self.up, self.down, self.pre_norms = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for _ in range(depth):  # block by block: the initialisation draws in this order
            self.up.append(nn.Linear(dim, expansion * dim))
            self.down.append(nn.Linear(expansion * dim, dim))
            self.pre_norms.append(nn.LayerNorm(dim))
        self.final_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        for up, down, norm in zip(self.up, self.down, self.pre_norms):
            x = x + down(self.dropout(nn.functional.gelu(up(norm(x)))))
        return self.head(self.final_norm(x))

    def copy_from(self, adapter: nn.Module) -> None:
        """Take the weights of a fusemix FusionAdapter."""
        with torch.no_grad():
            for k, block in enumerate(adapter.blocks):
                self.up[k].weight.copy_(block.fc1.weight)
                self.up[k].bias.copy_(block.fc1.bias)
                self.down[k].weight.copy_(block.fc2.weight)
                self.down[k].bias.copy_(block.fc2.bias)
                self.pre_norms[k].weight.copy_(block.norm.weight)
                self.pre_norms[k].bias.copy_(block.norm.bias)
            self.final_norm.weight.copy_(adapter.norm.weight)
            self.final_norm.bias.copy_(adapter.norm.bias)
            self.head.weight.copy_(adapter.proj.weight)
            self.head.bias.copy_(adapter.proj.bias)


def reference_parameter_count(dim: int, out: int = 512, depth: int = 4, expansion: int = 4) -> int:
    """Parameters of one adapter: per block LN (2d) + W1 (d * 4d + 4d) + W2 (4d * d + d); then LN + head."""
    hidden = expansion * dim
    block = 2 * dim + (dim * hidden + hidden) + (hidden * dim + dim)
    return depth * block + 2 * dim + dim * out + out


def reference_mix(x: Tensor, lam: float) -> Tensor:
    """The two halves mixed with a Python (float64) ``lam``; ``1 - lam`` is computed in float64."""
    half = x.shape[0] // 2
    return lam * x[:half] + (1 - lam) * x[half:]


def reference_infonce(image: Tensor, text: Tensor, temp: Tensor) -> Tensor:
    """Clamp ``temp`` to [0.001, 0.5] in place, then the mean of the two cross-entropies as explicit log-sum-exps."""
    with torch.no_grad():
        temp.clamp_(0.001, 0.5)
    image = image / image.norm(dim=1, keepdim=True)
    text = text / text.norm(dim=1, keepdim=True)
    image_to_text = image @ text.T / temp
    text_to_image = text @ image.T / temp
    loss_i = (image_to_text.logsumexp(dim=1) - image_to_text.diagonal()).mean()
    loss_t = (text_to_image.logsumexp(dim=1) - text_to_image.diagonal()).mean()
    return (loss_i + loss_t) / 2


def reference_lr(epoch: int, step_in_epoch: int, epochs: int, lr=1e-3, warmup_lr=1e-6, min_lr=1e-6, warmup=100):
    if epoch == 0:
        return min(lr, warmup_lr + (lr - warmup_lr) * step_in_epoch / max(warmup, 1))
    return (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs)) + min_lr


def reference_alpha(kind: str, epoch: int, epochs: int, start: float, end: float) -> float:
    if kind == "cosine":
        return (start - end) * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs)) + end
    return start * (start / end) ** (-epoch / epochs)


def paper_config(**overrides) -> TrainConfig:
    return TrainConfig(device="cpu", **overrides)


def small_model(seed: int, dtype: torch.dtype = torch.float32, dropout: float = 0.6):
    torch.manual_seed(seed)
    model = model_from_config(SMALL_DIMS, paper_config(shared_dim=8, dropout=dropout)).to(dtype)
    torch.manual_seed(seed)
    refs = {m: ReferenceAdapter(d, 8, 4, 4, dropout).to(dtype) for m, d in SMALL_DIMS.items()}
    return model, refs


# --------------------------------------------------------------------------- adapter


def test_paper_shape_has_the_authors_parameter_count():
    assert sum(reference_parameter_count(d) for d in PAPER_DIMS.values()) + 1 == PAPER_PARAMETERS
    with torch.device("meta"):
        model = model_from_config(PAPER_DIMS, paper_config())
    assert sum(p.numel() for p in model.parameters()) == PAPER_PARAMETERS
    assert model.loss.temperature.numel() == 1 and model.loss.temperature.requires_grad


def test_same_seed_gives_the_reference_initialisation():
    model, refs = small_model(seed=3)
    for modality, ref in refs.items():
        adapter = model.adapters[modality]
        for k, block in enumerate(adapter.blocks):
            assert torch.equal(block.fc1.weight, ref.up[k].weight) and torch.equal(block.fc1.bias, ref.up[k].bias)
            assert torch.equal(block.fc2.weight, ref.down[k].weight)
            assert torch.equal(block.norm.weight, ref.pre_norms[k].weight)
        assert torch.equal(adapter.proj.weight, ref.head.weight) and torch.equal(adapter.norm.bias, ref.final_norm.bias)
    assert model.loss.temperature.dtype == torch.float32 and model.loss.temperature.item() == torch.tensor(0.07).item()


@pytest.mark.parametrize("train_mode", [False, True])
def test_adapter_outputs_equal_the_reference_with_copied_weights(train_mode):
    model, refs = small_model(seed=0)
    for modality, dim in SMALL_DIMS.items():
        x = torch.randn(32, dim)
        refs[modality].copy_from(model.adapters[modality])
        model.train(train_mode)
        refs[modality].train(train_mode)
        torch.manual_seed(11)  # the same dropout masks, drawn in the same order
        ours = model.adapters[modality](x)
        torch.manual_seed(11)
        theirs = refs[modality](x)
        assert (ours - theirs).abs().max().item() == 0.0


# --------------------------------------------------------------------------- mixing


def test_fusemix_equals_the_reference_mixing_in_float64():
    x, y = torch.randn(40, 24, dtype=torch.float64), torch.randn(40, 16, dtype=torch.float64)
    params = sample_mix_params(40, 1.0, pairing="halves", generator=torch.Generator().manual_seed(5))
    assert params.lam.shape == (1, 20) and bool((params.lam == params.lam[0, 0]).all())  # one lam per batch
    lam = params.lam[0, 0].item()
    mixed_x, mixed_y = mix_latents([x, y], params)
    assert torch.equal(mixed_x, reference_mix(x, lam)) and torch.equal(mixed_y, reference_mix(y, lam))


def test_fusemix_equals_the_reference_mixing_in_float32():
    # The reference multiplies float32 rows by a float64 lam and a float64 (1 - lam); torch casts each to float32.
    # Computing 1 - float32(lam) in float32 instead differs in the last bit for about half of the draws.
    x = torch.randn(4096, 64)
    for seed in range(20):
        out, params = FuseMix(generator=torch.Generator().manual_seed(seed))(x, return_params=True)
        assert out.dtype == torch.float32
        assert torch.equal(out, reference_mix(x, params.lam[0, 0].item())), seed


def test_lambda_is_drawn_from_beta_one_one():
    mix = FuseMix(alpha=1.0, generator=torch.Generator().manual_seed(0))
    draws = np.sort([mix.sample_params(4).lam[0, 0].item() for _ in range(4000)])
    n = draws.size
    ks = max(np.max(np.arange(1, n + 1) / n - draws), np.max(draws - np.arange(n) / n))
    assert ks < 1.63 / math.sqrt(n)  # Kolmogorov-Smirnov against the uniform distribution, 1 % level


@pytest.mark.parametrize("kind", ["cosine", "exponential"])
def test_alpha_schedules_follow_the_reference(kind):
    config = paper_config(epochs=50, alpha=0.2, alpha_schedule=kind, alpha_end=1.0)
    for epoch in range(50):
        assert alpha_at(epoch, config) == pytest.approx(reference_alpha(kind, epoch, 50, 0.2, 1.0), rel=1e-12)
    assert alpha_at(7, paper_config()) == 1.0  # the released configs: flat at 1


# --------------------------------------------------------------------------- loss


def _paper_step(model, refs, image: Tensor, text: Tensor, lam: float):
    """One loss and its gradients, fusemix's way and the reference way, from the same weights."""
    params = sample_mix_params(image.shape[0], pairing="halves")
    params = dataclasses.replace(params, lam=torch.full_like(params.lam, lam))
    mixed = dict(zip(("image", "text"), mix_latents([image, text], params)))
    ours = model(mixed)
    temp = nn.Parameter(model.loss.temperature.detach().clone())
    theirs = reference_infonce(refs["image"](reference_mix(image, lam)), refs["text"](reference_mix(text, lam)), temp)
    ours.backward()
    theirs.backward()
    return ours, theirs, temp


@pytest.mark.parametrize(
    ("dtype", "loss_tol", "grad_tol"), [(torch.float64, 1e-12, 1e-12), (torch.float32, 1e-6, 1e-6)]
)
def test_loss_and_gradients_equal_the_reference(dtype, loss_tol, grad_tol):
    model, refs = small_model(seed=1, dtype=dtype, dropout=0.0)
    for modality in SMALL_DIMS:
        refs[modality].copy_from(model.adapters[modality])
    image, text = torch.randn(64, 24, dtype=dtype), torch.randn(64, 16, dtype=dtype)
    ours, theirs, temp = _paper_step(model, refs, image, text, lam=0.3141592653589793)
    assert abs(ours.item() - theirs.item()) <= loss_tol
    assert abs(model.loss.temperature.grad.item() - temp.grad.item()) <= grad_tol
    for modality, ref in refs.items():
        adapter = model.adapters[modality]
        pairs = [(adapter.proj.weight, ref.head.weight), (adapter.norm.weight, ref.final_norm.weight)]
        for k, block in enumerate(adapter.blocks):
            pairs += [(block.fc1.weight, ref.up[k].weight), (block.fc2.bias, ref.down[k].bias)]
        for a, b in pairs:
            assert (a.grad - b.grad).abs().max().item() <= grad_tol


@pytest.mark.parametrize(("start", "clamped"), [(1e-4, 0.001), (0.9, 0.5), (0.07, 0.07)])
def test_temperature_is_clamped_like_the_reference(start, clamped):
    model, refs = small_model(seed=2, dtype=torch.float64, dropout=0.0)
    for modality in SMALL_DIMS:
        refs[modality].copy_from(model.adapters[modality])
    with torch.no_grad():
        model.loss.temperature.fill_(start)
    image, text = torch.randn(16, 24, dtype=torch.float64), torch.randn(16, 16, dtype=torch.float64)
    ours, theirs, temp = _paper_step(model, refs, image, text, lam=0.5)
    assert model.loss.temperature.item() == pytest.approx(clamped) and temp.item() == pytest.approx(clamped)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-12)


# --------------------------------------------------------------------------- optimiser and schedule


def test_weight_decay_only_on_the_weights_of_linear_layers():
    model, _ = small_model(seed=0)
    groups = weight_decay_groups(model, 0.1)
    decayed = {id(p) for g in groups if g["weight_decay"] == 0.1 for p in g["params"]}
    plain = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert decayed == {id(p) for p in model.parameters() if p.ndim >= 2}
    assert plain == {id(p) for p in model.parameters() if p.ndim < 2}
    assert id(model.loss.temperature) in plain
    optimizer = build_optimizer(model, paper_config())
    assert isinstance(optimizer, torch.optim.AdamW)
    for group in optimizer.param_groups:
        assert group["betas"] == (0.9, 0.999) and group["lr"] == 1e-3 and group["eps"] == 1e-8


def test_learning_rate_follows_the_reference_schedule():
    config = paper_config()  # 500 epochs, 100 warm-up steps from 1e-6, cosine to 1e-6
    steps_per_epoch = 122  # ~5M pairs at 40,960 per step
    epochs = [0, 1, 2, 3, 100, 250, 498, 499]
    for epoch in epochs:
        for step_in_epoch in range(steps_per_epoch):
            step = epoch * steps_per_epoch + step_in_epoch
            expected = reference_lr(epoch, step_in_epoch, config.epochs)
            assert lr_at(step, epoch, steps_per_epoch, config) == pytest.approx(expected, rel=1e-12, abs=1e-18)
    assert lr_at(0, 0, steps_per_epoch, config) == 1e-6
