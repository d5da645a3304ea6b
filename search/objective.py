"""The Optuna objective: one trial = sample a config, train it, report every epoch.

Outcomes map onto Optuna states so nothing looks better than it is:
- the pruner stops the trial -> PRUNED (`trial.report` every epoch, `should_prune`);
- patience runs out -> COMPLETE with the best epoch's value (its weights are restored);
- non-finite loss -> PRUNED, the reason in user attr `reason`;
- CUDA out of memory or any other error -> FAIL with the reason; the study goes on for OOM
  and for errors in the user's own code (its network, its metric: `UserCodeError`), whose
  reason is the exception's last line.
The test split is evaluated once per COMPLETE trial, for reporting and promotion only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
import torch

from tunetrack.models import EpochResult, FitResult, Splits, Trainer, count_parameters, create
from tunetrack.models.config import ModelConfig, TrialConfig
from tunetrack.models.cost import CostMeter
from tunetrack.models.errors import first_line
from tunetrack.models.user_code import UserCodeError, last_line

from .config import StudySpec
from .space import SearchSpace
from .startup_gc import resume as resume_gc
from .termination import reason as interrupt_reason
from .user_objects import score_functions, used_code

if TYPE_CHECKING:
    from tunetrack.tracking import NullRun, StudyTracker, TrialRun

    from .pruning_round import PruningRound



class PruningCallback:
    """Reports the study metric to Optuna after each epoch and asks the pruner; in a fused
    group with a `PruningRound`, the round has reported it and answers from its one read."""

    def __init__(self, trial: optuna.Trial, metric: str,
                 group_round: PruningRound | None = None):
        self.trial, self.metric, self.group_round = trial, metric, group_round
        self.pruned_at: int | None = None

    def value(self, result: EpochResult) -> float:
        return result.value(self.metric)

    def on_epoch_end(self, result: EpochResult) -> bool:
        if self.group_round is None:
            self.trial.report(self.value(result), result.epoch)
            prune = self.trial.should_prune()
        else:
            prune = self.group_round.should_prune(self.trial, result.epoch)
        if prune:
            self.pruned_at = result.epoch
            return True
        return False


@dataclass
class StudyDeadline:
    """Stops a trial after the epoch during which the study's timeout ran out: Optuna only
    checks its timeout between trials, so one long trial could run far past it. The trial
    ends PRUNED, with the reason (`Objective.conclude`)."""

    deadline: float  # time.monotonic()

    def on_epoch_end(self, result: EpochResult) -> bool:
        return time.monotonic() >= self.deadline


def user_failure(exc: Exception, model: ModelConfig) -> str | None:
    """The reason of a trial (or fused group) that `exc` ended, when the user's own code
    raised it: a `UserCodeError` (their metric, their network's constructor), or anything
    raised while their network trains (its forward, its parameters), by its last line;
    None for tunetrack's own errors, which stop the study."""
    from tunetrack.models.nets import model_path

    if isinstance(exc, UserCodeError):
        return str(exc)
    return last_line(exc) if model_path(model) is not None else None


def measure_latency_ms(model: torch.nn.Module, splits: Splits, device: torch.device) -> float:
    """Median forward time of one 64-image batch in eval mode, in milliseconds."""
    x = splits.test.x[:64].to(device)
    model.eval()
    times = []
    with torch.inference_mode():
        for _ in range(7):
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


@dataclass
class Objective:
    """Callable for `study.optimize`; holds the data so trials share one loaded copy."""

    spec: StudySpec
    space: SearchSpace
    splits: Splits
    device: torch.device
    tracker: StudyTracker | None = None  # None: tracking is off
    progress: Any = None  # search.progress.StudyProgress: a bar of each trial's epochs
    deadline: float | None = None  # time.monotonic() when --timeout / timeout_s runs out
    objectives: list = field(init=False)
    scores: dict = field(init=False)  # name -> fn(y_true, y_prob): macro_f1, the user's own

    def __post_init__(self) -> None:
        self.objectives = self.spec.search.objective_list
        self.scores = score_functions(self.spec)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        try:  # Ctrl-C while sampling or creating the run: the FAIL trial still says why
            sampled = self.space.sample(trial)
            cfg = self.space.resolve(sampled, device=str(self.device))
            run = self.start_run(trial, sampled, cfg)
        except KeyboardInterrupt as exc:
            trial.set_user_attr("reason", interrupt_reason(exc))
            raise
        state, reason = "FAIL", ""
        meter = CostMeter(self.device).start()
        try:
            value = self._train(trial, cfg, run, meter)
            state = "COMPLETE"
            return value
        except optuna.TrialPruned as exc:
            state, reason = "PRUNED", str(exc)
            raise
        except torch.cuda.OutOfMemoryError as exc:
            reason = f"CUDA out of memory: {first_line(exc)}"
            raise
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (termination.py)
            reason = interrupt_reason(exc)
            raise
        except Exception as exc:
            user = user_failure(exc, cfg.model)
            reason = user if user is not None else f"{type(exc).__name__}: {exc}"
            if user is not None and not isinstance(exc, UserCodeError):
                raise UserCodeError(reason) from exc  # this trial fails, not the study
            raise
        finally:
            self.close(trial, run, meter, state, reason)

    def start_run(self, trial: optuna.Trial, sampled: dict[str, Any], cfg: TrialConfig, *,
                  tags: dict[str, str] | None = None) -> TrialRun | NullRun:
        """The trial's MLflow child run (a `NullRun` when tracking is off)."""
        from tunetrack.tracking.runs import NullRun

        if self.tracker is None:
            return NullRun()
        return self.tracker.trial_run(trial, sampled, cfg, device=str(self.device),
                                      data_fingerprint=self.splits.fingerprint, tags=tags,
                                      code=used_code(self.spec, cfg))

    def pruning_callback(self, trial: optuna.Trial,
                         group_round: PruningRound | None = None) -> PruningCallback | None:
        """None where Optuna cannot prune (multi-objective studies)."""
        if self.spec.search.multi_objective:
            return None
        return PruningCallback(trial, self.objectives[0].metric, group_round)

    def _train(self, trial: optuna.Trial, cfg: TrialConfig, run: TrialRun | NullRun,
               meter: CostMeter) -> float | tuple[float, ...]:
        splits = self.splits
        model = create(cfg.model, splits.input_shape, splits.n_classes, splits.mean,
                       splits.std, seed=cfg.train.seed)
        pruning = self.pruning_callback(trial)
        callbacks: list[Any] = [run]
        if self.progress is not None:
            callbacks.append(self.progress.for_trial(trial.number, cfg.train.max_epochs))
        if pruning is not None:
            callbacks.append(pruning)
        if self.deadline is not None:
            callbacks.append(StudyDeadline(self.deadline))
        trainer = Trainer(model, cfg.train, splits, callbacks=callbacks, device=self.device,
                          scores=self.scores)
        resume_gc()  # the imports a trial needs are done (data, network, optimizer)
        with meter.on_device():
            fit = trainer.fit()
        return self.conclude(trial, fit, trainer, pruning, run, meter)

    def conclude(self, trial: optuna.Trial, fit: FitResult, trainer: Trainer,
                 pruning: PruningCallback | None, run: TrialRun | NullRun,
                 meter: CostMeter) -> float | tuple[float, ...]:
        """What follows training, fused or not: raises `TrialPruned` with the reason (a
        non-finite loss, the pruner), else evaluates the test split once, records the
        values and logs the completed run. `trainer` holds the best epoch's weights."""
        trial.set_user_attr("epochs_run", fit.epochs_run)
        trial.set_user_attr("stop_reason", fit.stop_reason)
        if fit.stop_reason == "non_finite":
            raise optuna.TrialPruned(fit.message)
        if pruning is not None and pruning.pruned_at is not None:
            metric = pruning.metric
            raise optuna.TrialPruned(
                f"pruned by {type(trial.study.pruner).__name__} at epoch "
                f"{pruning.pruned_at} ({metric}={fit.history[-1].value(metric):.4f})")
        if fit.stop_reason == "callback" and self.deadline is not None and (
                time.monotonic() >= self.deadline):  # cut short: not a result to compare
            raise optuna.TrialPruned(f"the study's timeout ran out after epoch "
                                     f"{fit.history[-1].epoch}")
        with meter.on_device():
            test = trainer.evaluate(self.splits.test)
        values = self._values(fit, trainer, meter)
        trial.set_user_attr("best_epoch", fit.best_epoch)
        trial.set_user_attr("test_accuracy", test.accuracy)
        if self.scores:  # the study's scores on the test split too, for the report
            test_scores = {f"test_{k}": v for k, v in
                           trainer.score_all(self.splits.test.y, test.probabilities).items()}
            for key, score in test_scores.items():
                trial.set_user_attr(key, score)
            run.log_metrics(test_scores)
        trial.set_user_attr("param_count", count_parameters(trainer.model))
        value = values[0] if len(values) == 1 else tuple(values)
        run.completed(values=value, model=trainer.model, splits=self.splits, test_eval=test,
                      fit=fit)
        return value

    def close(self, trial: optuna.Trial, run: TrialRun | NullRun, meter: CostMeter,
              state: str, reason: str) -> None:
        """The end of every trial, fused or not: its reason (unless COMPLETE) and cost
        (pruned and failed trials cost too) as user attrs, its run ended with its state;
        the writing goes on in the tracking helper."""
        if state != "COMPLETE":
            trial.set_user_attr("reason", reason)
        cost = meter.stop().metrics()
        for key, value in cost.items():
            trial.set_user_attr(key, value)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        run.log_metrics(cost)
        run.end(state, reason)

    def _values(self, fit: FitResult, trainer: Trainer, meter: CostMeter) -> list[float]:
        best = fit.best
        out = []
        for objective in self.objectives:
            if objective.metric == "params":
                out.append(float(count_parameters(trainer.model)))
            elif objective.metric == "cost_device_seconds":
                out.append(meter.device_seconds)  # training + test evaluation so far
            elif objective.metric == "latency_ms":
                out.append(measure_latency_ms(trainer.model, self.splits, self.device))
            else:
                out.append(float(best.value(objective.metric)))
        return out
