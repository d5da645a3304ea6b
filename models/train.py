"""One trainer for every network and recipe, with a per-epoch callback hook.

The epoch loop never synchronises with the device: loss and correct counts accumulate as
tensors and are read once per epoch. Callers (Optuna pruning, MLflow logging) plug in via
`EpochCallback.on_epoch_end(result) -> stop?`; the trainer knows nothing about them.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .batches import ResidentBatches, StreamingBatches
from .config import TrainConfig
from .data import Split, Splits
from .metrics import ScoreFn, score
from .optimizers import Stepper, build_optimizer, build_scheduler, l1_penalty, param_groups
from .trainer_core import EpochBook, EpochResult, TrainerCore, check_train_config

if TYPE_CHECKING:  # annotations only
    from .trainer_core import EpochCallback, FitResult


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    predictions: torch.Tensor  # (N,) int64, on CPU
    probabilities: torch.Tensor  # (N, n_classes) float32, on CPU


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


class Trainer(TrainerCore):
    """Trains `model` on `splits.train`, validating on `splits.val` after every epoch.

    LR schedulers step where PyTorch documents: OneCycleLR after every batch,
    ReduceLROnPlateau after every epoch with the validation loss, the others after every
    epoch. Between epochs an `EpochBook` (trainer_core) decides when to stop and keeps the
    best epoch's weights, which the model holds after `fit`.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, splits: Splits, *,
                 callbacks: Sequence[EpochCallback] = (), device: torch.device | None = None,
                 scores: Mapping[str, ScoreFn] | None = None):
        check_train_config(cfg)
        device = self.device_for(cfg, device)
        # channels_last suits convolutions on CUDA and on CPU too (oneDNN; bench/README.md)
        channels_last = _has_conv(model) and splits.train.x.dim() == 4
        super().__init__(cfg, splits, device, channels_last)
        self.callbacks = list(callbacks)
        self.scores = dict(scores or {})  # name -> fn(y_true, y_prob), every epoch on val
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=fmt)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.optimizer = build_optimizer(param_groups(self.model, cfg.lr), cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.stepper = Stepper(self.scheduler)

    def _train_epoch(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        cfg, model = self.cfg, self.model
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        for x, y, mix in self.train_batches():
            with self.autocast():
                logits = self.forward(x if mix is None else mix.x)
                if mix is None:
                    loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                else:
                    loss = mix.loss(logits, cfg.label_smoothing)
            total = loss + cfg.l1 * l1_penalty(model) if cfg.l1 else loss
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(total).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                total.backward()
                self.optimizer.step()
            self.stepper.after_batch()
            loss_sum += loss.detach().float() * len(y)
            correct += (logits.argmax(1) == (y if mix is None else mix.dominant_labels())).sum()
            seen += len(y)
        return loss_sum, correct, seen

    @torch.inference_mode()
    def _predict(self, data: ResidentBatches | StreamingBatches, *, autocast: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Summed loss, logits and labels over `data` in eval mode."""
        self.model.eval()
        logits, labels = [], []
        for x, y in data.iterate(self.eval_batch_size):
            with self.autocast() if autocast else contextlib.nullcontext():
                logits.append(self.forward(x).float())
            labels.append(y)
        out, y = torch.cat(logits), torch.cat(labels)
        return F.cross_entropy(out, y, reduction="sum"), out, y

    def evaluate(self, split: Split) -> Evaluation:
        """Loss, accuracy, predictions and probabilities of the current model on `split`.

        In full precision, without autocast: these are the numbers that are reported and
        that a saved (fp32) copy of the model reproduces exactly; per-epoch validation
        keeps autocast for speed."""
        loss_sum, logits, y = self._predict(self.batches(split), autocast=False)
        pred = logits.argmax(1)
        n = max(len(y), 1)
        return Evaluation(loss=float(loss_sum) / n, accuracy=int((pred == y).sum()) / n,
                          predictions=pred.cpu(), probabilities=logits.softmax(1).cpu())

    def score_all(self, y: torch.Tensor, prob: torch.Tensor) -> dict[str, float]:
        """Every score of the study on labels `y` and probabilities `prob`."""
        return {name: score(name, fn, y, prob) for name, fn in self.scores.items()}

    def _fit(self) -> FitResult:
        """Train until `max_epochs`, early stopping or a callback says stop; the best
        epoch's weights are restored."""
        book = EpochBook(self.cfg, self.callbacks)
        # dropout draws from torch's global generator: seed it so a trial can be replayed
        # from its config alone (one trial per process thread, as Optuna runs them here)
        torch.manual_seed(self.cfg.seed)
        while not book.done:
            start = time.perf_counter()
            book.begin_epoch(self.optimizer.param_groups[0]["lr"])
            loss_sum, correct, seen = self._train_epoch()
            val_loss_sum, val_logits, val_y = self._predict(self.val_data)
            val_correct = (val_logits.argmax(1) == val_y).sum()
            # the one host sync of the epoch
            sums = torch.stack([loss_sum, correct.float(), val_loss_sum.float(),
                                val_correct.float()]).tolist()
            res = EpochResult.from_sums(len(book.fit.history), sums, seen, len(val_y),
                                        book.lr, time.perf_counter() - start)
            if self.scores:
                res.scores = self.score_all(val_y, val_logits.softmax(1))
            book.observe(res, lambda: copy.deepcopy(self.model.state_dict()))
            if book.done:
                break
            self.stepper.after_epoch(res.val_loss)
            book.decide(res)
        if book.best_state is not None:
            self.model.load_state_dict(book.best_state)
        return book.fit
