"""What both Lightning tasks share: optimizer, schedule, per-eval-set metric bookkeeping.

Final and best. ``last_val`` holds the latest evaluation at the configured protocol (what ``metrics.json``
reports as ``metrics``, the final numbers). Every validation during training also updates the best record
(:meth:`TaskBase.best_summary`, ``metrics.json``'s ``best``). The official IBN-Net ImageNet script
(XingangPan/IBN-Net ``imagenet.py``) validates every epoch and copies the checkpoint to ``model_best.pth``
whenever ``is_best = test_acc > best_acc``, where ``test_loss, test_acc1, test_acc = test(...)`` and
``test`` returns ``(losses.avg, top1.avg, top5.avg)``: the top-5 accuracy. The IBN tables therefore set
``trainer.best_metric: top5_err``; the official SN code (``train_imagenet.py``: ``is_best = prec1 >
best_prec1``) and the default choose by top-1 error (classification), mIoU (segmentation). So ``best``
holds the whole evaluation of the epoch where the first evaluation set's ``trainer.best_metric`` was best
(the first such epoch on ties, as ``>``), plus the best of every metric of every set with its epoch. Epochs
are 0-based indices of finished training epochs. The record is saved in checkpoints, so resumed runs keep it;
so is ``last_val`` with its epoch: a run resumed from the last epoch's ``last.ckpt`` (stopped in the evaluation
after training) then does not evaluate that epoch's model again, which the uninterrupted run did not either.
"""
from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from ..config.validate import best_metric
from ..data.transforms.pipeline import normalize_batch, prepare_batch
from .optim import build_optimizer, linear_scaled_lr, param_groups

# Metrics whose best is tracked per evaluation set (lower is better for *_err, higher for the others).
_HEADLINE = ("top1_err", "top5_err", "top1_acc", "top5_acc", "miou", "pixel_acc")


class TaskBase(pl.LightningModule):
    def __init__(self, cfg: dict, num_classes: int, val_names: list[str]):
        super().__init__()
        # Plain containers only: checkpoints stay loadable with torch.load(weights_only=True).
        self.save_hyperparameters({"cfg": cfg, "num_classes": num_classes, "val_names": list(val_names)})
        self.cfg = OmegaConf.create(cfg)
        self.num_classes = num_classes
        self.val_names = list(val_names)
        self.last_val: dict[str, dict[str, Any]] = {}
        self.last_val_epoch = -1
        self.best_state: dict[str, Any] = {}
        self._restored = False                                  # a checkpoint was loaded; no batch has run since
        self._resumed_sums: dict[str, Any] | None = None        # its running epoch sums (see _epoch_sums)
        self._saved_logger_step: int | None = None              # its loops' logger step (see on_validation_start)

    @property
    def network(self) -> torch.nn.Module:
        return self.model if hasattr(self, "model") else self.net

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Workers hand over uint8 images; scaling and ImageNet normalisation run here, on the device (as
        # timm's prefetcher does), bit-identical to the old worker-side float pipeline.
        return prepare_batch(batch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Direct callers (e.g. the SN batch-average callback) may pass the loader's uint8 images.
        x = normalize_batch(x)
        if self.cfg.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.network(x)

    def load_initial_weights(self) -> bool:
        """Load the configured starting weights (only when a fit starts fresh); False if there are none."""
        raise NotImplementedError

    def compile_model(self) -> None:
        """torch.compile the network in place (``trainer.compile``); state_dict keys are unchanged."""
        from ..models.compiling import compile_network, training_device_type
        compile_network(self.network, training_device_type(self.cfg.trainer.accelerator))

    # subclasses: self.model parameters split into backbone/head groups if they want different lrs
    def parameter_groups(self) -> list[dict]:
        o = self.cfg.optim
        return param_groups(self.named_parameters(), o.weight_decay, o.no_weight_decay_norm_bias)

    def total_batch(self) -> int:
        t = self.trainer
        return self.cfg.data.batch_size * max(1, t.world_size) * t.accumulate_grad_batches

    def configure_optimizers(self):
        o = self.cfg.optim
        total_steps = int(self.trainer.estimated_stepping_batches)
        max_epochs = self.trainer.max_epochs or 1
        if self.trainer.max_steps and self.trainer.max_steps > 0:
            loader = self.trainer.datamodule.train_dataloader()
            limit = self.trainer.limit_train_batches
            n = len(loader) if isinstance(limit, float) else min(len(loader), int(limit))
            if isinstance(limit, float):
                n = max(1, int(n * limit))
            steps_per_epoch = max(1.0, n / self.trainer.accumulate_grad_batches)
        else:
            steps_per_epoch = max(1.0, total_steps / max_epochs)
        peak = linear_scaled_lr(o, self.total_batch())
        return build_optimizer(o, self.parameter_groups(), peak, steps_per_epoch, total_steps)

    def fitting(self) -> bool:
        return self.trainer.state.fn == "fit"

    def training_time_reduced(self) -> bool:
        """Whether validations during training use a cheaper protocol than the final one (segmentation)."""
        return False

    def log_eval_results(self, results: dict[str, dict[str, float]], reduced: bool = False) -> None:
        """Log one evaluation; ``reduced``: run at the cheaper training-time protocol, not the final one."""
        flat = {f"val/{name}/{k}": v for name, res in results.items() for k, v in res.items()
                if isinstance(v, (int, float)) and math.isfinite(v)}
        # Values are already reduced across processes by torchmetrics; logging must not average them again.
        self.log_dict(flat, sync_dist=False, rank_zero_only=False)
        if self.trainer.sanity_checking:
            return
        if not reduced:
            self.last_val = results
            self.last_val_epoch = self.current_epoch
        # Best over the training-time protocol only: a final multi-scale evaluation is not comparable with
        # single-scale ones. After fit, current_epoch is one past the last trained epoch.
        if reduced == self.training_time_reduced():
            self._update_best(results, self.current_epoch if self.fitting() else self.current_epoch - 1, reduced)

    def _update_best(self, results: dict[str, dict[str, Any]], epoch: int, reduced: bool) -> None:
        if epoch < 0 or not results:
            return
        b = self.best_state
        first = next(iter(results))
        metric, mode = best_metric(self.cfg)
        value = results[first].get(metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        better = (lambda a, ref: a < ref) if mode == "min" else (lambda a, ref: a > ref)
        if "epoch" not in b or better(value, b["value"]):
            b.update(monitor=f"val/{first}/{metric}", mode=mode, value=value, epoch=epoch, metrics=results,
                     protocol="training-time (single-scale, no flip)" if reduced else "as configured")
        per = b.setdefault("per_metric", {})
        for name, res in results.items():
            for k, v in res.items():
                if k not in _HEADLINE or not isinstance(v, (int, float)) or not math.isfinite(v):
                    continue
                old = per.setdefault(name, {}).get(k)
                minimize = k.endswith("_err")
                if old is None or (v < old["value"] if minimize else v > old["value"]):
                    per[name][k] = {"value": v, "epoch": epoch}
        b["epochs_validated"] = sorted(set(b.get("epochs_validated", [])) | {epoch})

    def best_summary(self) -> dict[str, Any] | None:
        """The best record for ``metrics.json`` (None if no training-time validation ran)."""
        if "epoch" not in self.best_state:
            return None
        return {k: v for k, v in self.best_state.items() if k != "value"}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ibnnet_best"] = self.best_state
        checkpoint["ibnnet_last_val"] = {"epoch": self.last_val_epoch, "results": self.last_val}
        sums = self._epoch_sums()
        if sums is not None:
            checkpoint["ibnnet_epoch_sums"] = sums

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_state = dict(checkpoint.get("ibnnet_best") or {})
        # Without it, a resume whose fit ends at once (from the last epoch's last.ckpt) found no evaluation of the
        # last epoch and ran it again after fit: the same numbers, but a row in metrics.csv (and wandb) that the
        # uninterrupted run, whose last in-fit validation is that evaluation, does not have.
        last = checkpoint.get("ibnnet_last_val") or {}
        self.last_val = dict(last.get("results") or {})
        self.last_val_epoch = int(last.get("epoch", -1))
        self._restored = True
        self._resumed_sums = checkpoint.get("ibnnet_epoch_sums")
        step = ((checkpoint.get("loops") or {}).get("fit_loop") or {}).get("epoch_loop.state_dict", {})
        self._saved_logger_step = step.get("_batches_that_stepped")

    # --- the epoch values of training metrics across a resume in the middle of an epoch ---------------------------
    # Lightning accumulates what is logged with on_epoch=True (train/loss_epoch, train/top1_acc) in its result
    # collection, which no checkpoint holds: an epoch resumed in its middle reported the mean of the batches after
    # the resume. A checkpoint saved between two batches or in the epoch-end validation (preempt.ckpt) therefore
    # carries every process's running sums; the resumed process adds its own back once its first batch has logged
    # (or, resumed into the validation, puts them back at the epoch's end), and as a + b == b + a in floats, the
    # epoch's value is the uninterrupted run's to the bit.

    def _epoch_sums(self) -> dict[str, Any] | None:
        """{"position": [epoch, batches done], "sums": {key: {"value", "count"}: one entry per process}}, or None
        where no epoch is under way (its start, its end: a resume starts the next epoch afresh)."""
        trainer = getattr(self, "_trainer", None)
        if trainer is None or trainer.state.fn != "fit" or trainer.sanity_checking:
            return None
        loop = trainer.fit_loop.epoch_loop
        position = [int(trainer.current_epoch), int(loop.batch_progress.current.completed)]
        # every batch done but the epoch not ended: a stop in the epoch-end validation (or its batch-average
        # estimate), whose checkpoint resumes into that validation and then the epoch's end. Not last.ckpt, saved
        # at the epoch's end, after its values were logged.
        done = position[1] == trainer.num_training_batches
        if not 0 < position[1] <= trainer.num_training_batches or (done and not trainer.validating):
            return None
        pending = self._resumed_sums   # saved again before the resumed epoch's first batch has run
        if pending is not None and list(pending["position"]) == position:
            return pending
        sums = {}
        for key, m in sorted(loop._results.items()):
            if m.meta.fx != "training_step" or not (m.is_tensor and m.meta.on_epoch) or m.has_reset:
                continue
            if m.meta.is_mean_reduction:
                sums[key] = {"value": m.value.detach(), "count": m.cumulated_batch_size.detach()}
            elif m.meta.is_sum_reduction:
                sums[key] = {"value": m.value.detach()}
        # every process reaches this together (Lightning saves checkpoints on all ranks); only rank 0 writes the file
        sums = self.all_gather(sums) if trainer.world_size > 1 else \
            {k: {n: t.unsqueeze(0) for n, t in v.items()} for k, v in sums.items()}
        return {"position": position, "sums": {k: {n: t.cpu() for n, t in v.items()} for k, v in sums.items()}}

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._restored:
            self._restored = False
            # Lightning adds one to its logger step on a restart, right for a checkpoint saved at a batch's end; ours
            # are saved between two batches (preempt.ckpt) or at an epoch's end, where it already counted every
            # optimizer step. Rows logged after a mid-epoch resume were one step ahead of the uninterrupted run's.
            self.trainer.fit_loop.epoch_loop._batches_that_stepped = self.trainer.global_step

    def on_validation_start(self) -> None:
        trainer = self.trainer
        if self._restored and self.fitting() and not trainer.sanity_checking:
            self._restored = False
            # Resumed into this validation (stopped in it: Lightning's "restarted mid-evaluation"), no training batch
            # first. Lightning added one to its logger step at the restart, as above, though the checkpoint was saved
            # in this very validation, with the step it logs at: the uninterrupted run's, one below global_step at an
            # epoch's end (the last batch's step is counted after its validation). Its rows were one step ahead.
            if self._saved_logger_step is not None:
                trainer.fit_loop.epoch_loop._batches_that_stepped = int(self._saved_logger_step)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        pending, self._resumed_sums = self._resumed_sums, None
        if pending is None or list(pending["position"]) != [self.current_epoch, batch_idx]:
            return
        rank, results = self.trainer.global_rank, self.trainer.fit_loop.epoch_loop._results
        for key, saved in pending["sums"].items():
            m = results.get(key)
            if m is None or saved["value"].shape[0] != self.trainer.world_size:
                continue
            m.value = m.value + saved["value"][rank].to(m.value.device)
            if "count" in saved:
                m.cumulated_batch_size = m.cumulated_batch_size + saved["count"][rank].to(m.value.device)

    def log_loss(self, name: str, value: torch.Tensor, prog_bar: bool = False) -> None:
        """``<name>_step``: this process's value, logged every step without ``sync_dist`` (a per-step all-reduce
        is a host-device sync that stalls the GPU queue); ``<name>_epoch``: the epoch mean over all processes,
        all-reduced once per epoch. The same keys Lightning gives ``on_step=True, on_epoch=True``."""
        self.log(f"{name}_step", value, prog_bar=prog_bar, on_step=True, on_epoch=False)
        self.log(f"{name}_epoch", value, on_step=False, on_epoch=True, sync_dist=True)

    def on_train_epoch_end(self) -> None:
        # in the epoch's row; not logged at the epoch's start, which Lightning skips when it resumes mid-epoch
        self.log("epoch_float", float(self.current_epoch), on_step=False, on_epoch=True)
        self._restore_sums_of_a_finished_epoch()

    def _restore_sums_of_a_finished_epoch(self) -> None:
        """Resumed into an epoch's end (stopped in its validation): no training batch runs before the epoch's
        values are logged, so the saved sums go into entries made here, under the names training_step logs."""
        pending = self._resumed_sums
        if pending is None or list(pending["position"]) != [self.current_epoch, self.trainer.num_training_batches]:
            return
        self._resumed_sums = None
        rank, results = self.trainer.global_rank, self.trainer.fit_loop.epoch_loop._results
        for key, saved in pending["sums"].items():
            if saved["value"].shape[0] != self.trainer.world_size:
                continue
            name = key.split(".", 1)[1]   # "training_step.train/loss_epoch": the logged name after the hook's
            value = saved["value"][rank].to(self.device)
            # as training_step logs it (epoch only, synced over processes), then its sums put in place
            self.log(name, torch.zeros_like(value), on_step=False, on_epoch=True, sync_dist=True, batch_size=1,
                     reduce_fx="mean" if "count" in saved else "sum")
            m = results[f"on_train_epoch_end.{name}"]
            m.value = value
            if "count" in saved:
                m.cumulated_batch_size = saved["count"][rank].to(self.device)

    @staticmethod
    def as_float(t: torch.Tensor) -> float:
        return float(t.detach().cpu())
