"""PeftModule: the one LightningModule for every domain, backbone and method."""

from __future__ import annotations

import math
import random
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from peftlab.backbone import Backbone, check_backbone_reads_data
from peftlab.distributed import unwrapped_name
from peftlab.errors import CheckpointFileError, ConfigError, NonFiniteLossError
from peftlab.methods import LoRA, Method, count_parameters
from peftlab.model.cache import FeatureCache
from peftlab.model.prefix_cache import DTYPES, PrefixCache, cache_key, depth_name, plan_prefix
from peftlab.model.task_kinds import TaskKind, task_kind
from peftlab.persistence.adapter import check_identity, shape_mismatches
from peftlab.persistence.checkpoint_io import CHECKPOINT_KEY, FORMAT_VERSION, LOADED_FROM_KEY


def check_finite_loss(module: L.LightningModule, loss: Tensor, batch: dict[str, Any], batch_idx: int) -> None:
    """Stop training at a NaN / infinite loss, before its backward pass and
    optimiser step, naming the step, the epoch, the batch and its examples.
    (A check in training_step, not a callback: it sees the batch, runs before
    any gradient exists, and holds wherever a PeftModule trains. In
    data-parallel runs all processes agree, so all stop together.)"""
    finite = bool(torch.isfinite(loss.detach()).all())
    trainer = module._trainer
    if trainer is not None and trainer.world_size > 1:
        everywhere = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite and not everywhere:
            raise NonFiniteLossError(f"another data-parallel process had a non-finite training loss at global "
                                     f"step {module.global_step}, epoch {module.current_epoch} (its error names "
                                     f"the batch); training stopped before this step's update")
        finite = everywhere
    if finite:
        return
    ids = [str(i) for i in batch.get("ids", [])]
    shown = ", ".join(ids[:16]) + (f", ... ({len(ids)} in all)" if len(ids) > 16 else "")
    diverged = [n for n, p in module.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    cause = (f"The trained weights already hold NaN or inf (e.g. {diverged[0]}): an earlier update diverged; "
             f"lower the learning rate." if diverged else
             "Check these examples' inputs and labels, or lower the learning rate.")
    raise NonFiniteLossError(
        f"non-finite training loss ({loss.detach().float().flatten()[0].item()}) at global step "
        f"{module.global_step}, epoch {module.current_epoch}, batch {batch_idx} (example ids: {shown or 'none'}). "
        f"Training stopped before this step's update; checkpoints written so far are left as they are "
        f"(peftlab never writes non-finite weights). {cause}")






class PeftModule(L.LightningModule):
    """Backbone + PEFT method + task head, with loss, metrics, optimiser and schedule.

    Args:
        backbone: a :class:`peftlab.backbone.Backbone` (domain package).
        method: a PEFT method (``None`` = LoRA with its defaults).
        task_type / num_outputs / label_names: linked from the DataModule by the CLI.
        pooling: ``mean``, ``cls`` or ``attention`` (sequence tasks).
        head_hidden_dim: optional hidden layer in the head.
        head_dropout: dropout before the head's layers.
        lr: learning rate of the backbone's trainable parameters (adapters).
        head_lr: learning rate of the head (``None`` = ``lr``).
        weight_decay: AdamW weight decay.
        warmup_fraction: share of the optimiser steps spent in linear warm-up
            before the cosine decay to zero.
        layer_weighted_sum: feed the head a learned softmax-weighted sum of
            every layer's states (SUPERB), instead of the last layer's.
        cache_frozen_features: with a fully frozen backbone (``linear_probe``),
            compute each example's features once (first epoch) and reuse them
            (see :class:`peftlab.cache.FeatureCache`).
        cache_frozen_prefix: ``true``: compute the states entering the first trained block (or a
            speech encoder's frozen front end's output) once per example and start every later
            forward from them (see :mod:`peftlab.model.prefix_cache`); refuses, saying why, when a
            trained parameter, a hook, dropout or batch norm sits below that block, or the data
            module augments. ``auto``: the same where it can, else train without it (saying why).
        prefix_cache_dir: keep the cached states on disk here (a folder per backbone, depth and
            dtype), reused by later runs; None: in memory.
        prefix_cache_memory_mb: the most megabytes the in-memory prefix cache keeps (examples past
            it are recomputed each time).
        prefix_cache_dtype: ``float32``, ``float16`` or ``bfloat16``; None: float32 in memory,
            float16 on disk.
        pairs: each example is a pair of inputs that both go through the same
            adapted backbone (linked from the DataModule's ``pairs``; its batches
            hold the first sides' rows, then the second sides').
        pair_combination: how the two pooled embeddings meet in the head:
            ``symmetric``, ``ordered`` or ``both_orders`` (see
            :class:`peftlab.model.heads.PairCombination`).
        task_options: options of the task type (its ``TaskKind.default_options``), e.g.
            segmentation's ``roi_size`` and ``overlap`` of sliding-window inference, or its loss.
    """

    def __init__(self, backbone: Backbone, method: Method | None = None, task_type: str = "regression",
                 num_outputs: int = 1, label_names: list[str] | None = None, pooling: str = "mean",
                 head_hidden_dim: int | None = None, head_dropout: float = 0.1, lr: float = 1e-3,
                 head_lr: float | None = None, weight_decay: float = 0.01, warmup_fraction: float = 0.06,
                 layer_weighted_sum: bool = False, cache_frozen_features: bool = False,
                 cache_frozen_prefix: bool | Literal["auto"] = False, prefix_cache_dir: str | None = None,
                 prefix_cache_memory_mb: float = 4096.0,
                 prefix_cache_dtype: Literal["float32", "float16", "bfloat16"] | None = None, pairs: bool = False,
                 pair_combination: str = "symmetric", task_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.method = method if method is not None else LoRA()
        self.backbone_identity = backbone.identity()  # before the method touches it
        self.backbone_spec = backbone.spec()
        self.method.apply(backbone)
        for p in backbone.always_frozen():
            p.requires_grad_(False)
        self.backbone = backbone
        self.layer_weighted_sum = layer_weighted_sum
        self.feature_cache = FeatureCache() if cache_frozen_features else None
        self.task = task_kind(task_type).with_options(task_options).with_labels(label_names)
        if self.feature_cache is not None:
            if any(p.requires_grad for p in backbone.parameters()):
                raise ValueError(f"cache_frozen_features needs a frozen backbone (linear_probe); "
                                 f"method {self.method.name!r} trains backbone weights")
            if not self.task.cacheable or pairs:
                raise ValueError(f"cache_frozen_features supports sequence-level tasks on single inputs, not "
                                 f"{'pairs' if pairs else task_type}")
        self.prefix_cache = self._build_prefix_cache(
            cache_frozen_prefix, dict(directory=prefix_cache_dir, budget_mb=prefix_cache_memory_mb,
                                      dtype=DTYPES[prefix_cache_dtype] if prefix_cache_dtype else None), pairs)
        layers = backbone.num_blocks + 1 if layer_weighted_sum else None
        if layer_weighted_sum and not backbone.token_sequence:
            raise ValueError(f"layer_weighted_sum needs per-layer token states, which {backbone.name} does not give")
        self.head = self.task.build_head(backbone, num_outputs, pooling=pooling, hidden_dim=head_hidden_dim,
                                         dropout=head_dropout, weighted_layers=layers,
                                         pair_combination=pair_combination if pairs else None)
        self.task_type, self.num_outputs, self.label_names = task_type, num_outputs, label_names
        self.lr, self.head_lr, self.weight_decay, self.warmup_fraction = lr, head_lr, weight_decay, warmup_fraction
        self.head_config = {"task_type": task_type, "num_outputs": num_outputs, "pooling": pooling,
                            "hidden_dim": head_hidden_dim, "dropout": head_dropout,
                            "layer_weighted_sum": layer_weighted_sum, "pairs": pairs,
                            "pair_combination": pair_combination}
        if task_options:
            self.head_config["task_options"] = dict(task_options)
        self.save_hyperparameters(ignore=["backbone", "method"])
        metrics = self.task.build_metrics(num_outputs)
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.primary_metric = self.task.primary_metric
        # only trained state is checkpointed; loading checks what is missing itself
        self.strict_loading = False

    def _build_prefix_cache(self, setting: bool | str, options: dict[str, Any], pairs: bool) -> PrefixCache | None:
        """The frozen-prefix cache ``setting`` asks for (see the class docstring), or None."""
        if setting not in (True, False, "auto"):
            raise ConfigError(f"model.cache_frozen_prefix must be true, false or auto, got {setting!r}")
        if setting is False:
            return None
        if self.feature_cache is not None:
            reason = "cache_frozen_features already caches this linear probe's final features"
        elif pairs or type(self.task).infer is not TaskKind.infer:
            reason = (f"its batch rows are not one example each ({'pairs' if pairs else self.task.name} "
                      f"runs the backbone on other inputs than the batch's examples)")
        else:
            plan = plan_prefix(self.backbone, output_layers=self.layer_weighted_sum)
            if plan.depth is not None:
                key = cache_key(self.backbone_identity, self.backbone_spec, plan.depth,
                                options["dtype"] or (torch.float16 if options["directory"] else torch.float32))
                return PrefixCache(plan.depth, key, **options)
            reason = plan.reason
        return self._no_prefix_cache(setting, reason)

    def _no_prefix_cache(self, setting: bool | str, reason: str) -> None:
        """Refuse (``true``) or say why the cache is off (``auto``)."""
        message = (f"model.cache_frozen_prefix: method {self.method.name!r} on {self.backbone.name} has no "
                   f"frozen prefix to cache: {reason}")
        if setting is True:
            raise ConfigError(message + " (set cache_frozen_prefix: auto to train without the cache then)")
        print(f"peftlab: {message}; training without the prefix cache")
        return None

    def prefix_cache_summary(self) -> str:
        """What the prefix cache keeps, for the start-of-fit line."""
        c = self.prefix_cache
        if c is None:
            return ""
        where = f"on disk in {c.store.directory}" if c.store.directory else "in memory"
        return f"; caching {depth_name(c.depth)} per example {where} ({str(c.store.dtype).replace('torch.', '')})"

    # ---- parameters ------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Every parameter that trains (head included), by its name in this module,
        and the buffers of layers whose own weights train (a trained batch norm's
        running statistics belong to what was trained)."""
        # names as state dicts spell them, also when FSDP or activation checkpointing wraps blocks
        state = {unwrapped_name(n): p.detach() for n, p in self.named_parameters() if p.requires_grad}
        for prefix, module in self.named_modules():
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                for name, buf in module.named_buffers(recurse=False):
                    if name not in module._non_persistent_buffers_set:
                        state[unwrapped_name(f"{prefix}.{name}" if prefix else name)] = buf.detach()
        return state

    def parameter_summary(self) -> dict[str, float]:
        backbone_total = count_parameters(self.backbone)
        trainable = count_parameters(self, trainable_only=True)
        return {"trainable_params": trainable, "total_params": count_parameters(self),
                "backbone_params": backbone_total,
                "backbone_trainable_params": count_parameters(self.backbone, trainable_only=True),
                "trainable_share": trainable / max(1, count_parameters(self))}

    def setup(self, stage: str) -> None:
        # before any batch: a backbone that cannot read the data module's batches is a config error
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        if datamodule is not None:
            check_backbone_reads_data(self.backbone, datamodule)

    # ---- forward and steps ---------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> Tensor:
        if self.feature_cache is not None:
            return self.head(self.feature_cache.features(self.backbone, batch, self.layer_weighted_sum))
        if self.prefix_cache is not None:
            return self.head(self.prefix_cache.forward(self.backbone, batch, self.layer_weighted_sum))
        return self.head(self.backbone(batch, output_layers=self.layer_weighted_sum))

    def _step(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        return self.task.loss_and_predictions(self.task.infer(self, batch), batch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, _, _ = self._step(batch)
        extra = self.method.regularization(self.backbone)  # e.g. AdaLoRA's orthogonality penalty
        if extra is not None:
            loss = loss + extra
        check_finite_loss(self, loss, batch, batch_idx)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["ids"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, preds, target = self._step(batch)
        # sync_dist: the mean over every process's examples in multi-process runs
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch["ids"]), sync_dist=True)
        self.val_metrics.update(preds, target)

    def _log_metrics(self, metrics) -> None:
        """Log every metric as scalars: a vector (per class, label or output)
        becomes ``<name>/<label name or index>``. The primary validation metric
        (the one that selects checkpoints) also goes to the progress bar."""
        values = {}
        for name, value in metrics.compute().items():
            value = value.float()
            if value.ndim == 0:
                values[name] = value
                continue
            names = self.label_names if self.label_names and len(self.label_names) == len(value) else None
            for i, v in enumerate(value):
                values[f"{name}/{names[i] if names else i}"] = v
        primary = f"val/{self.primary_metric}"
        if primary in values:
            self.log(primary, values.pop(primary), prog_bar=True)
        self.log_dict(values)
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, preds, target = self._step(batch)
        self.log("test/loss", loss, batch_size=len(batch["ids"]), sync_dist=True)
        self.test_metrics.update(preds, target)

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self.task.predict_output(self.task.infer(self, batch), batch)

    # ---- optimisation ----------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        head = [p for p in self.head.parameters() if p.requires_grad]
        groups = [{"params": head, "lr": self.head_lr or self.lr, "name": "head"}]
        groups += self.method.param_groups(self.backbone, self.lr)  # LoRA+ gives B its own rate
        optimizer = torch.optim.AdamW(groups, weight_decay=self.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1000
        warmup = int(total * self.warmup_fraction)

        def warmup_cosine(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_epoch_start(self) -> None:
        if self.feature_cache is not None:
            self.backbone.eval()  # cached features must not depend on dropout draws

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Right after the step, gradients still there (Lightning zeroes them at the start of the next
        # step) and before any callback checkpoints it: AdaLoRA scores and re-allocates ranks. Lightning
        # counts the step only once this hook returns: global_step is still the 0-based index of this step.
        self.method.after_optimizer_step(self.backbone, self.global_step)

    def on_fit_start(self) -> None:
        self.method.on_fit_start(self.backbone, max(1, int(self.trainer.estimated_stepping_batches)))
        augments = getattr(self.trainer.datamodule, "augment", False)
        if self.feature_cache is not None and augments:
            raise ValueError("cache_frozen_features reuses each example's first features, but the data module "
                             "augments training examples (set augment: false, or turn the cache off)")
        if self.prefix_cache is not None and augments:
            self.prefix_cache = self._no_prefix_cache(
                self.hparams.cache_frozen_prefix, f"the data module {type(self.trainer.datamodule).__name__} "
                f"augments training examples (augment: true), so an example's states differ every epoch")
        s = self.parameter_summary()
        self.print(f"peftlab: method {self.method!r} on {self.backbone.name}: "
                   f"{s['trainable_params']:,} trainable of {s['total_params']:,} parameters "
                   f"({100 * s['trainable_share']:.3f}%){self.prefix_cache_summary()}")
        if self.logger is not None:
            self.logger.log_hyperparams({k: v for k, v in s.items()})

    # ---- checkpoints: trained state only -------------------------------------------------
    def run_metadata(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "method": self.method.spec(), "backbone": self.backbone_spec,
                "backbone_identity": self.backbone_identity, "head": self.head_config,
                "label_names": self.label_names}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trained = set(self.trainable_state_dict())
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trained}
        bad = [k for k, v in checkpoint["state_dict"].items()  # plain tensors (sharded ones: the loss check)
               if type(v) in (Tensor, torch.nn.Parameter) and v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:  # never replace a good checkpoint with diverged weights
            raise NonFiniteLossError(f"refusing to write a checkpoint at global step {self.global_step}: trained "
                                     f"tensor(s) {bad[:3]} hold NaN or infinite values (training diverged)")
        checkpoint[CHECKPOINT_KEY] = self.run_metadata()
        # Lightning does not save random states; with them a resumed run draws the
        # same dropout masks as an uninterrupted one (exact resume on the CPU).
        # (torch and Python only: numpy's state would not pass torch.load's weights-only mode)
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        method_state = self.method.training_state()
        if method_state:  # e.g. AdaLoRA's importance scores and rank pattern
            checkpoint["method_state"] = method_state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        source = f"the checkpoint {checkpoint[LOADED_FROM_KEY]}" if LOADED_FROM_KEY in checkpoint else "the checkpoint"
        meta = checkpoint.get(CHECKPOINT_KEY)
        if meta is None:
            raise CheckpointFileError(f"{source} was not written by peftlab (no 'peftlab' metadata)")
        try:
            identity, method = dict(meta["backbone_identity"]), meta["method"]
            method_name, method_args = method["name"], method["init_args"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointFileError(f"{source}: its peftlab metadata is damaged ({type(e).__name__}: {e})") from None
        check_identity(identity, self.backbone_identity, source)
        if method_args != self.method.options() or method_name != self.method.name:
            raise ValueError(f"{source} was trained with method {method_name} {method_args}, "
                             f"but this run uses {self.method!r}")
        expected = self.trainable_state_dict()
        missing = sorted(set(expected) - set(checkpoint["state_dict"]))
        if missing:
            raise CheckpointFileError(f"{source} lacks {len(missing)} trained tensor(s), e.g. {missing[:3]}")
        wrong = shape_mismatches(expected, checkpoint["state_dict"])
        if wrong:
            raise CheckpointFileError(f"{source}: tensor shapes do not fit this model: {'; '.join(wrong[:3])}")
        if "rng_states" in checkpoint:
            states = checkpoint["rng_states"]
            try:
                torch.set_rng_state(states["torch"])
                random.setstate(states["python"])  # torch.load keeps its nested tuples
                if states["cuda"] and torch.cuda.is_available():
                    torch.cuda.set_rng_state_all(states["cuda"])
            except (KeyError, TypeError, ValueError, RuntimeError) as e:
                raise CheckpointFileError(f"{source}: its random states are damaged ({e})") from None
        if "method_state" in checkpoint:
            self.method.load_training_state(checkpoint["method_state"])
