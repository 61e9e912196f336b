"""One call of :func:`fusemix.train.fit`: the pieces of the run, its checkpoints, and the loop over epochs.

:class:`Run` builds every piece once (model, warm start, augmentation with
its alpha schedule, optimizer, learning-rate schedule, batcher, validation
task, selection), restores them from the checkpoint of ``out_dir``, trains
epoch by epoch and saves checkpoints; :func:`fusemix.train.fit` sets the
process up around it and returns its result.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from fusemix._fileio import recover_directory
from fusemix._resume import CHECKPOINT_FORMAT, check_ranks_agree, check_same_data, compare_config, data_identity
from fusemix._run_files import CHECKPOINT_DIR
from fusemix._run_log import RunLog
from fusemix._selection import Selector
from fusemix._version import fusemix_version
from fusemix.checkpoint import TrainingCheckpoint, load_training_checkpoint, save_training_checkpoint
from fusemix.data import LatentBatch, LatentBatcher, PairedLatents
from fusemix.distributed import ProcessPlace, all_gather_tensors, all_reduce_sum, barrier
from fusemix.evaluation import retrieval_pair, score_retrieval_task
from fusemix.losses import ContrastiveLoss, PairwiseContrastiveLoss, SigLIPLoss
from fusemix.model import FusionModel, loss_accepts_masks
from fusemix.recipe import (
    AUGMENTATION_STREAM,
    INIT_STREAM,
    LearningRateSchedule,
    augmentation_from_config,
    build_optimizer,
    derived_seed,
    model_from_config,
    warm_start_from_config,
)
from fusemix.train_config import TrainConfig


@dataclass(frozen=True)
class TrainState:
    """What a callback sees after each optimizer step.

    Attributes:
        epoch: Epoch of the step (0-based).
        step: Optimizer steps done so far, this one included.
        loss: The step's loss, a detached 0-d tensor on the training device
            (``float(state.loss)`` reads it, at the cost of a device sync).
        lr: The step's learning rate.

    """

    epoch: int
    step: int
    loss: Tensor
    lr: float


def _resolve_amp(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if config.amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if config.amp == "fp16" and device.type != "cuda":
        raise ValueError(f"amp: 'fp16' needs a CUDA device, got {device}; use amp='bf16' or amp='off'")
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.amp]


def seed_torch(seed: int, device: torch.device) -> None:
    """Seed torch's CPU generator and, for a CUDA run, that device's generator (and no other)."""
    torch.random.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def _temperature(model: nn.Module) -> float | None:
    loss = getattr(model, "loss", None)
    if isinstance(loss, ContrastiveLoss):
        return float(loss.current_temperature())
    if isinstance(loss, SigLIPLoss):
        return float(torch.exp(-loss.logit_scale.detach()))
    return None


class Run:
    """One call of :func:`~fusemix.train.fit`: the pieces of the run and the loop over epochs."""

    def __init__(
        self,
        train: PairedLatents,
        config: TrainConfig,
        val: PairedLatents | None,
        val_pair: tuple[str, str] | None,
        out_dir: Path | None,
        model: FusionModel | None,
        callbacks: Sequence[Callable[[TrainState], None]],
        place: ProcessPlace,
        device: torch.device,
    ) -> None:
        self.train_data, self.config, self.out_dir, self.callbacks = train, config, out_dir, tuple(callbacks)
        self.train_identity = data_identity(train) if out_dir is not None else None  # checked on resume
        self.place, self.device = place, device
        self.threads = torch.get_num_threads()
        self.amp_dtype = _resolve_amp(config, self.device)
        self.model = (model if model is not None else model_from_config(train.dims, config)).to(self.device)
        missing = [m for m in train.modalities if m not in self.model.modalities]
        if missing:
            raise ValueError(f"model: has no adapter for the training modalities {missing}")
        if not train.complete and not loss_accepts_masks(self.model.loss):
            raise ValueError(
                f"model: its loss ({type(self.model.loss).__name__}) does not take masks, but some training pairs "
                "lack a modality (-1 in rows); use ContrastiveLoss or SigLIPLoss, or train on complete pairs "
                "(PairedLatents.subset)"
            )
        # Deterministic, so a resumed run computes it again before loading the checkpoint over it.
        warm_start_from_config(self.model, train, config)
        self.forward_model: nn.Module = self.model
        if place.world_size > 1:
            self.forward_model = self._data_parallel()
            if place.rank > 0:  # every rank starts from the same weights, then draws its own dropout masks
                seed_torch(derived_seed(config.seed, INIT_STREAM, place.rank), device)
        self.eval_pair = None if val is None else retrieval_pair(val, val_pair, "val_pair")
        if self.eval_pair is not None and any(m not in self.model.modalities for m in self.eval_pair):
            raise ValueError(f"val_pair: the model has no adapter for one of {self.eval_pair}")
        self.eval_task = None if val is None else val.retrieval_task(*self.eval_pair)  # type: ignore[misc]
        self.selector = Selector(config.selection_metric, config.patience) if config.selection == "best" else None
        self.val_identity = None
        if self.selector is not None and out_dir is not None:
            self.val_identity = {**data_identity(val), "pair": list(self.eval_pair)}  # type: ignore[arg-type]
        aug_device = self.device if config.augmentation == "noise" else torch.device("cpu")
        self.generator = torch.Generator(device=aug_device).manual_seed(
            derived_seed(config.seed, AUGMENTATION_STREAM, place.rank)
        )
        self.augment = augmentation_from_config(config, self.generator)
        self.optimizer = build_optimizer(self.model, config)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.batcher = LatentBatcher(
            train,
            config.batch_size,
            shuffle=True,
            drop_last=True,
            seed=config.seed,
            device=self.device,
            preload=config.preload,  # type: ignore[arg-type]
            num_replicas=place.world_size,
            rank=place.rank,
            reuse_buffers=True,  # a step (backward included) is done with its batch before the next is read
        )
        self.steps_per_epoch = len(self.batcher)
        self.lr_schedule = LearningRateSchedule(config, self.steps_per_epoch)
        self.epoch, self.step = 0, 0
        self.history: list[dict[str, Any]] = []

    def _data_parallel(self) -> DistributedDataParallel:
        """The model wrapped for data parallelism; its loss must gather the other ranks' negatives."""
        loss = self.model.loss
        if isinstance(loss, PairwiseContrastiveLoss) and not loss.gather_distributed:
            raise ValueError(
                f"model: its {type(loss).__name__} has gather_distributed=False, so on {self.place.world_size} "
                "processes each rank would contrast its own rows only; build the loss with gather_distributed=True "
                "(as model_from_config does)"
            )
        unused = any(m not in self.train_data.modalities for m in self.model.modalities)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=device_ids, find_unused_parameters=unused)

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def _rng_state(self) -> dict[str, Any]:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return {"torch_cpu": torch.get_rng_state(), "torch_cuda": cuda, "augmentation": self.generator.get_state()}

    def _all_rng_states(self) -> dict[str, Any]:
        """This rank's random states; under several processes (a collective) also every rank's, as ``per_rank``."""
        mine = self._rng_state()
        if self.place.world_size == 1:
            return mine
        gathered = {k: None if v is None else all_gather_tensors(v, self.device) for k, v in mine.items()}
        per_rank = [{k: None if v is None else v[r] for k, v in gathered.items()} for r in range(self.place.world_size)]
        return {**mine, "per_rank": per_rank}

    def save_checkpoint(self) -> None:
        """Write the checkpoint from rank 0, with every rank's random states; all ranks wait for it."""
        assert self.out_dir is not None
        rng_state = self._all_rng_states()
        if not self.place.is_main:
            barrier(self.device)
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "fusemix_version": fusemix_version(),
            "epoch": self.epoch,
            "step": self.step,
            "batcher": self.batcher.state_dict(),
            "config": self.config.to_dict(),
            "device_type": self.device.type,
            "world_size": self.place.world_size,
            "threads": self.threads,
            "train": self.train_identity,
            "history": self.history,
        }
        if self.selector is not None:
            state["val"] = self.val_identity
            state["selection"] = self.selector.state_dict()
        optimizer = {
            "optimizer": self.optimizer.state_dict(),
            "grad_scaler": None if self.scaler is None else self.scaler.state_dict(),
        }
        save_training_checkpoint(
            self.out_dir / CHECKPOINT_DIR,
            model=self.model,
            optimizer_state=optimizer,
            rng_state=rng_state,
            state=state,
            best_state=None if self.selector is None else self.selector.weights,
        )
        barrier(self.device)

    def restore(self, resume: bool) -> None:
        """Load the checkpoint of ``out_dir`` if there is one (and ``resume``), else start afresh.

        Under several processes rank 0 first settles an interrupted checkpoint
        write, then every rank loads the checkpoint and the ranks check that
        they all saw the same one.
        """
        ckpt = None
        if self.out_dir is not None and self.place.is_main:
            recover_directory(self.out_dir / CHECKPOINT_DIR)
        barrier(self.device)
        if self.out_dir is not None:
            ckpt = load_training_checkpoint(self.out_dir / CHECKPOINT_DIR)
        check_ranks_agree(self.out_dir, ckpt, self.place, self.device)
        if ckpt is None:
            return
        assert self.out_dir is not None
        where = self.out_dir / CHECKPOINT_DIR
        state = ckpt.state
        if not resume:
            raise FileExistsError(
                f"out_dir: {self.out_dir} holds a checkpoint (epoch {state.get('epoch')} of "
                f"{state.get('config', {}).get('epochs')}); pass resume=True to continue it, or use another out_dir"
            )
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint: {where} is not a fusemix training checkpoint")
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.place.world_size:
            raise ValueError(
                f"out_dir: the checkpoint in {where} was saved by a run on {saved_world} process(es), but this run "
                f"has {self.place.world_size}; every rank's slice of the batch and its mixing and dropout streams "
                f"depend on the world size, so resume it on {saved_world} process(es) (torchrun "
                f"--nproc_per_node={saved_world}) or train in another out_dir"
            )
        compare_config(state["config"], self.config, where)
        check_same_data("train", state["train"], self.train_identity, where)  # type: ignore[arg-type]
        if self.selector is not None:
            self._restore_selection(ckpt, where)
        self._warn_threads(state.get("threads"))
        try:
            self.model.load_state_dict(ckpt.model_state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"model: does not fit the checkpoint in {where}: {err}") from err
        self.optimizer.load_state_dict(ckpt.optimizer_state["optimizer"])
        if self.scaler is not None and ckpt.optimizer_state.get("grad_scaler") is not None:
            self.scaler.load_state_dict(ckpt.optimizer_state["grad_scaler"])
        rng = ckpt.rng_state if self.place.world_size == 1 else ckpt.rng_state["per_rank"][self.place.rank]
        self._restore_rng(rng, state.get("device_type"))
        self.batcher.load_state_dict(state["batcher"])
        self.epoch, self.step, self.history = int(state["epoch"]), int(state["step"]), list(state["history"])

    def _restore_selection(self, ckpt: TrainingCheckpoint, where: Path) -> None:
        """Check that ``val`` is the checkpoint's validation data, then restore the selection state."""
        assert self.selector is not None and self.val_identity is not None
        saved = ckpt.state["val"]
        check_same_data("val", saved, self.val_identity, where)
        if saved["pair"] != self.val_identity["pair"]:
            raise ValueError(
                f"val_pair: {tuple(self.val_identity['pair'])} differs from {tuple(saved['pair'])}, which the "
                f"checkpoint in {where} selected on; resume with the same val_pair, or train in another out_dir"
            )
        self.selector.load_state_dict(ckpt.state["selection"], ckpt.best_state, where)

    def _warn_threads(self, saved: int | None) -> None:
        if saved is not None and saved != self.threads:
            warnings.warn(
                f"fit: resuming a run saved with {saved} torch thread(s) on {self.threads} (threads); the weights "
                "continue, but float rounding changes with the thread count, so results differ in the last bits "
                "from an uninterrupted run",
                stacklevel=5,
            )

    def _restore_rng(self, rng: Mapping[str, Any], saved_device_type: str | None) -> None:
        torch.set_rng_state(rng["torch_cpu"])
        same_device = saved_device_type == self.device.type
        if not same_device:
            warnings.warn(
                f"fit: resuming a run saved on {saved_device_type} on {self.device.type}; weights, optimizer and CPU "
                "random state continue, device random streams restart, so results differ from an uninterrupted run",
                stacklevel=3,
            )
        if same_device and self.device.type == "cuda" and rng.get("torch_cuda") is not None:
            torch.cuda.set_rng_state(rng["torch_cuda"], self.device)
        if same_device or self.generator.device.type == "cpu":
            self.generator.set_state(rng["augmentation"])

    # -- training ------------------------------------------------------------------------------------------------

    def _due(self, every: int, epoch: int) -> bool:
        return epoch + 1 == self.config.epochs or (every > 0 and (epoch + 1) % every == 0)

    @property
    def stopped_early(self) -> bool:
        """Whether ``patience`` ended the run before its ``epochs`` (not when it ran out at the last one)."""
        return self.selector is not None and self.selector.out_of_patience and self.epoch < self.config.epochs

    @property
    def finished(self) -> bool:
        """Whether every epoch ran, or ``patience`` stopped the run."""
        return self.epoch >= self.config.epochs or self.stopped_early

    def _record(self, kind: str, epoch: int, loss: float, lr: float, alpha: float | None) -> dict[str, Any]:
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"loss: became {loss} at step {self.step} (epoch {epoch}); lower the learning rate "
                f"(lr={self.config.lr:g}), set grad_clip or use amp='off'"
            )
        temperature = _temperature(self.model)
        return dict(kind=kind, epoch=epoch, step=self.step, loss=loss, lr=lr, temperature=temperature, alpha=alpha)

    def _loss(self, batch: LatentBatch) -> Tensor:
        """The loss of one batch: augmented (masks and all) when configured, then the model."""
        masks = batch.masks
        if masks is None:
            return self.forward_model(self.augment(batch) if self.augment is not None else batch)
        latents: Mapping[str, Tensor] = batch
        if self.augment is not None:
            latents, masks = self.augment(batch, masks=masks)
        return self.forward_model(latents, masks=masks)

    def _train_step(self, batch: LatentBatch, lr: float) -> Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss = self._loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        clip = self.config.grad_clip
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if clip is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
        return loss.detach()

    def run_epoch(self, log: RunLog, bar: Any) -> None:
        epoch, config = self.epoch, self.config
        if self.augment is not None:
            self.augment.set_epoch(epoch)
        alpha = getattr(self.augment, "alpha", None)  # FuseMix's alpha of this epoch; None without mixing
        self.model.train()
        if bar is not None:
            bar.set_description(f"epoch {epoch + 1}/{config.epochs}")
        started = time.perf_counter()
        epoch_sum = torch.zeros((), device=self.device)
        window_sum = torch.zeros((), device=self.device)
        window, lr = 0, config.lr
        first_batch = self.batcher.batch_index
        for batch in self.batcher:
            lr = self.lr_schedule(self.step, epoch)
            loss = self._train_step(batch, lr)
            self.step += 1
            epoch_sum += loss.float()
            window_sum += loss.float()
            window += 1
            if self.step % config.log_every == 0:
                window_loss = float(all_reduce_sum(window_sum)) / (window * self.place.world_size)
                log.append(self._record("step", epoch, window_loss, lr, alpha))
                window_sum.zero_()
                window = 0
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{log.history[-1]['loss']:.4f}", lr=f"{lr:.2e}", temp=log.history[-1]["temperature"]
                    )
            if bar is not None:
                bar.update(1)
            if self.callbacks:
                state = TrainState(epoch=epoch, step=self.step, loss=loss, lr=lr)
                for callback in self.callbacks:
                    callback(state)
        steps = (self.steps_per_epoch - first_batch) * self.place.world_size
        record = self._record("epoch", epoch, float(all_reduce_sum(epoch_sum)) / steps, lr, alpha)
        if self.eval_task is not None and self._due(config.eval_every, epoch):
            record["metrics"] = self.evaluate()
            if self.selector is not None:
                self.selector.update(epoch, self.step, record["metrics"], self.model)
        record["epoch_seconds"] = time.perf_counter() - started
        log.append(record)
        self.epoch = epoch + 1
        if self.out_dir is not None and (self._due(config.checkpoint_every, epoch) or self.finished):
            self.save_checkpoint()
        log.write_csv()

    def conclude(self, log: RunLog) -> None:
        """With ``selection="best"``: put the selected weights in the model and log the ``"selection"`` record."""
        if self.selector is None:
            return
        assert self.selector.weights is not None  # the run's last epoch is always evaluated
        self.model.load_state_dict(self.selector.weights)
        log.append(self.selector.record(self.stopped_early))
        log.write_csv()

    def evaluate(self) -> dict[str, float]:
        """The validation metrics of the model now."""
        assert self.eval_task is not None and self.eval_pair is not None
        config = self.config
        return score_retrieval_task(
            self.model,
            self.eval_task,
            self.eval_pair,
            batch_size=config.batch_size,
            chunk_size=config.eval_chunk_size,
            device=self.device,
        )
