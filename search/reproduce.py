"""`tunetrack reproduce RUN_ID`: retrain a trial from its MLflow run alone and check it.

Everything comes from the run: `trial.yaml` (the resolved config, seeds included), the
data fingerprint tag, the device and environment tags (`tracking.provenance`), and the
recorded per-epoch metrics. The trial is retrained for as many epochs as were recorded
(a pruned trial stops where the pruner stopped it; schedules still see the original
`max_epochs`), then:

- same environment (versions, CPU, threads, code commit) on CPU: every epoch's train/val
  loss and accuracy and the test accuracy must be equal to the last bit; otherwise the
  first differing epoch and metric is named;
- anything else (GPU, another machine, other versions): validation accuracy per epoch and
  test accuracy within `tolerance`, and what differs in the environment is listed.

The user's own code (network, dataset, metric) is imported again from the folders the run
recorded (`tracking.runs.code_provenance`), put first on sys.path, and must hash as it did:
retraining changed code could not tell a changed trainer from a changed network.

Bad input (unknown run, no trial.yaml, data or user code missing or changed) raises
TunetrackError: one line, exit 2, nothing logged. The verdict is logged as a new run
nested under the original, tagged `tunetrack.reproduces=<run id>`.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunetrack.models import TunetrackError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from tunetrack.models import EpochResult, FitResult, Splits, TrialConfig

REPRODUCES = "tunetrack.reproduces"
ROLE_REPRODUCTION = "reproduction"
HISTORY_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
DEFAULT_TOLERANCE = 0.005


@dataclass
class Reproduction:
    """The verdict, and the numbers behind it."""

    run_id: str
    device: str
    exact: bool  # a bit-exact replay was expected (and checked)
    reproduced: bool
    epochs_recorded: int
    epochs_now: int
    lines: list[str] = field(default_factory=list)  # what `tunetrack reproduce` prints
    environment_differences: list[str] = field(default_factory=list)
    first_difference: str | None = None
    test_accuracy: tuple[float, float] | None = None  # (recorded, now)
    reproduction_run_id: str | None = None


class _StopAfter:
    """Ends training after the number of epochs the original trial ran."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_epoch_end(self, result: EpochResult) -> bool:
        return result.epoch + 1 >= self.epochs


def _run(client: MlflowClient, run_id: str, uri: str) -> Run:
    from mlflow.exceptions import MlflowException

    from tunetrack.tracking import tags as T

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise TunetrackError(f"unknown MLflow run {run_id!r} in {uri}") from None
    role = run.data.tags.get(T.ROLE)
    if role != T.ROLE_TRIAL:
        raise TunetrackError(f"run {run_id} is not a tunetrack trial run (role "
                             f"{role or 'none'}); pass the run id of a trial")
    return run


def _config(client: MlflowClient, run_id: str) -> TrialConfig:
    import yaml

    from tunetrack.models import TrialConfig
    from tunetrack.tracking.store import quiet_downloads

    with tempfile.TemporaryDirectory(prefix="tunetrack-reproduce-") as tmp, quiet_downloads():
        try:
            local = client.download_artifacts(run_id, "trial.yaml", tmp)
        except Exception as exc:
            raise TunetrackError(f"run {run_id} has no readable trial.yaml "
                                 f"({type(exc).__name__}); it cannot be rebuilt") from None
        raw = yaml.safe_load(Path(local).read_text())
    return TrialConfig.from_dict(raw)


def _recorded_history(client: MlflowClient, run_id: str) -> dict[str, list[float]]:
    history = {}
    for key in HISTORY_KEYS:
        points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        history[key] = [m.value for m in points]
    if not history["val_accuracy"]:
        raise TunetrackError(f"run {run_id} has no per-epoch history to compare with")
    return history


def _device(recorded: str, asked: str | None):
    """The device asked for, else the recorded one if this machine has it, else auto."""
    from tunetrack.models import resolve_device

    if asked is not None:
        return resolve_device(asked)
    try:
        return resolve_device(recorded)
    except TunetrackError:
        return resolve_device("auto")


@contextlib.contextmanager
def _threads(recorded: str | None, device: Any):
    """Replay on the recorded number of torch threads (CPU reduction order depends on it)."""
    import torch

    previous = torch.get_num_threads()
    if device.type == "cpu" and recorded and recorded.isdigit() and int(recorded) > 0:
        torch.set_num_threads(int(recorded))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _first_difference(recorded: dict[str, list[float]], now: list[EpochResult]) -> str | None:
    """'epoch E METRIC: recorded X, now Y' for the first bit that differs, or None."""
    for epoch in range(min(len(recorded["val_accuracy"]), len(now))):
        for key in HISTORY_KEYS:
            if epoch >= len(recorded[key]):
                continue
            before, after = recorded[key][epoch], getattr(now[epoch], key)
            if before != after and not (math.isnan(before) and math.isnan(after)):
                return f"epoch {epoch} {key}: recorded {before!r}, now {after!r}"
    return None


def reproduce(run_id: str, *, tracking_uri: str | None = None,
              tolerance: float = DEFAULT_TOLERANCE, device: str | None = None,
              log: bool = True) -> Reproduction:
    """Retrain the trial of MLflow run `run_id` and compare it with what was recorded."""
    from tunetrack.models.user_code import code_dirs
    from tunetrack.tracking import tags as T
    from tunetrack.tracking.provenance import THREADS, environment_differences
    from tunetrack.tracking.runs import HELPER, code_folders, code_records
    from tunetrack.tracking.store import check_reachable, client_for, resolve_tracking_uri

    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise TunetrackError(f"--tolerance must be >= 0 but got {tolerance}")
    uri = resolve_tracking_uri(tracking_uri)
    check_reachable(uri)
    client = client_for(uri)
    HELPER.flush()  # runs this process is still writing (e.g. a notebook's last trial)
    run = _run(client, run_id, uri)
    tags = run.data.tags
    code = code_records(tags)
    with code_dirs(code_folders(code)):
        _same_code(code, run_id)
        cfg = _config(client, run_id)
        recorded = _recorded_history(client, run_id)
        splits = _same_data(cfg, tags.get(T.DATA_FINGERPRINT), run_id)
        recorded_device = tags.get(T.DEVICE, cfg.train.device)
        dev = _device(recorded_device, device)
        epochs = len(recorded["val_accuracy"])
        recorded_test = run.data.metrics.get("test_accuracy")
        with _threads(tags.get(THREADS), dev):
            now_env = T.runtime_tags()
            differences = environment_differences(tags, now_env)
            for key in (T.GIT_SHA, T.GIT_DIRTY):
                if tags.get(key) != now_env.get(key):
                    differences.append(f"{key}: {tags.get(key, 'not recorded')} -> "
                                       f"{now_env.get(key, 'none')}")
            if str(dev) != recorded_device:
                differences.append(f"device: {recorded_device} -> {dev}")
            exact = not differences and dev.type == "cpu"
            fit, test_now, seconds = _retrain(cfg, splits, dev, epochs,
                                              test=recorded_test is not None)

    result = Reproduction(run_id=run_id, device=str(dev), exact=exact, reproduced=False,
                          epochs_recorded=epochs, epochs_now=fit.epochs_run,
                          environment_differences=differences)
    where = (f"trial #{tags.get(T.OPTUNA_TRIAL, '?')} of study "
             f"{tags.get(T.STUDY, '?')}")
    result.lines.append(f"run {run_id} ({where}): rebuilt from trial.yaml, data "
                        f"fingerprint {splits.fingerprint} matches")
    if code:
        result.lines.append("user code as recorded (sha256): " + ", ".join(
            f"{role} {rec['import_path']}" for role, rec in code.items()))
    result.lines.append(_environment_line(exact, differences, tolerance))
    result.lines.append(f"retrained {fit.epochs_run} epoch(s) on {dev} in {seconds:.1f} s")
    problems = _compare_history(result, recorded, fit.history, tolerance)
    if recorded_test is not None and test_now is not None:
        problems += _compare_test(result, recorded_test, test_now, tolerance)
    result.reproduced = not problems
    result.lines += [f"not reproduced: {p}" for p in problems]
    if log:
        result.reproduction_run_id = _log(client, run, fit.history, test_now, result,
                                          now_env, tolerance)
        result.lines.append(f"logged as run {result.reproduction_run_id} "
                            f"({REPRODUCES}={run_id})")
    result.lines.append("reproduced" if result.reproduced else "NOT reproduced")
    return result


def _environment_line(exact: bool, differences: list[str], tolerance: float) -> str:
    """Which comparison the verdict uses, and why: only an unchanged CPU replays bit-exact."""
    if exact:
        return ("environment: as recorded (versions, CPU, threads, code) on CPU: expecting a "
                "bit-exact replay")
    return (f"environment differs: {'; '.join(differences) or 'none'}"
            f"{'' if differences else ' (but not on CPU)'}; comparing within tolerance "
            f"{tolerance:g}")


def _same_code(code: dict[str, dict[str, Any]], run_id: str) -> None:
    """Refuse a run whose user code is not the code it ran, naming the file: changed since
    the run, an object passed without an import path, or an import path that now finds a
    file of other content. The sha256 is the code's identity, not the path: a file gone
    from where the run had it (another machine, a folder mounted elsewhere) will do when
    the import path finds the same content on sys.path."""
    from tunetrack.models.user_code import changed_code

    for role, rec in code.items():
        problem = changed_code(rec)
        gone = rec["file"] is not None and not Path(rec["file"]).is_file()
        if problem and not gone:  # changed in place, or never had an import path
            raise TunetrackError(f"run {run_id} cannot be reproduced: {problem}")
        if rec["file"] is None:
            continue
        now = _importable_file(rec["import_path"])  # imports it: the user's code runs
        if now is not None and now[1] == rec["sha256"]:
            continue
        raise TunetrackError(f"run {run_id} cannot be reproduced: " + (
            problem if now is None or gone else
            f"{rec['import_path']} (its {role}) now imports from {now[0]}, whose content "
            f"differs from the run's {rec['file']}"))


def _importable_file(import_path: str) -> tuple[str, str] | None:
    """(file, sha256) of the module `import_path` imports from now, or None when it does
    not import (or its file is gone)."""
    from tunetrack.models.user_code import code_record

    try:
        now = code_record(import_path)
    except (TunetrackError, OSError):
        return None
    return (now.file, now.sha256) if now.file and now.sha256 else None


def _same_data(cfg: TrialConfig, fingerprint: str | None, run_id: str) -> Splits:
    """The trial's splits, refused when they are not the data the run was trained on: no
    retraining could then tell a changed trainer from changed data."""
    from tunetrack.models import load_splits

    splits = load_splits(cfg.data)  # a missing dataset raises its own one-line error
    if fingerprint and fingerprint != splits.fingerprint:
        raise TunetrackError(f"the data of run {run_id} changed since it was trained "
                             f"(fingerprint {fingerprint} then, {splits.fingerprint} now); "
                             f"it cannot be reproduced")
    return splits


def _retrain(cfg: TrialConfig, splits: Splits, dev: Any, epochs: int,
             *, test: bool) -> tuple[FitResult, float | None, float]:
    """(the fit, test accuracy, seconds) of the trial trained again on `dev` for the
    recorded number of epochs; the test split is read only where the original read it."""
    from tunetrack.models import Trainer, create

    cfg.train.device = str(dev)
    started = time.perf_counter()
    model = create(cfg.model, splits.input_shape, splits.n_classes, splits.mean,
                   splits.std, seed=cfg.train.seed)
    trainer = Trainer(model, cfg.train, splits, callbacks=[_StopAfter(epochs)], device=dev)
    fit = trainer.fit()
    test_now = trainer.evaluate(splits.test).accuracy if test else None
    return fit, test_now, time.perf_counter() - started


def _compare_history(result: Reproduction, recorded: dict[str, list[float]],
                     history: list[EpochResult], tolerance: float) -> list[str]:
    """What differs in the per-epoch history (bit for bit when exact, else validation
    accuracy within `tolerance`); the line saying how close it came goes to `result`."""
    epochs, now = result.epochs_recorded, len(history)
    problems = [f"ran {now} epoch(s), the original {epochs}"] if now != epochs else []
    if result.exact:
        result.first_difference = _first_difference(recorded, history)
        if result.first_difference:
            problems.append(f"not bit-exact: first difference at {result.first_difference}")
        else:
            result.lines.append(f"validation history: bit-exact ({min(epochs, now)}"
                                f" epochs of train/val loss and accuracy)")
        return problems
    gaps = [abs(a - b.val_accuracy) for a, b in zip(recorded["val_accuracy"],
                                                    history, strict=False)]
    worst = max(gaps, default=0.0)
    result.lines.append(f"validation accuracy: largest per-epoch difference {worst:.4g}")
    if worst > tolerance:
        problems.append(f"val_accuracy at epoch {gaps.index(worst)} differs by {worst:.4g} > "
                        f"tolerance {tolerance:g}")
    return problems


def _compare_test(result: Reproduction, recorded: float, now: float,
                  tolerance: float) -> list[str]:
    """The test accuracy then and now (equal when exact, else within `tolerance`)."""
    result.test_accuracy = (recorded, now)
    off = abs(recorded - now)
    result.lines.append(f"test accuracy: recorded {recorded:.4f}, now {now:.4f}"
                        f" ({'equal' if off == 0 else f'differs by {off:.4g}'})")
    same = recorded == now if result.exact else off <= tolerance
    if same:
        return []
    return [f"test accuracy differs by {off:.4g}"
            f"{'' if result.exact else f' > tolerance {tolerance:g}'}"]


def _log(client: MlflowClient, original: Run, history: list[EpochResult],
         test_accuracy: float | None, result: Reproduction, env: dict[str, str],
         tolerance: float) -> str:
    """One finished run beside the original, made only once there is a verdict (so a
    failure while retraining leaves no RUNNING orphan)."""
    from mlflow.entities import Metric, RunTag

    from tunetrack.tracking import tags as T

    stamp = int(time.time() * 1000)
    tags = {**env, T.PARENT_RUN_ID: original.info.run_id, REPRODUCES: original.info.run_id,
            T.ROLE: ROLE_REPRODUCTION, T.DEVICE: result.device,
            T.STUDY: original.data.tags.get(T.STUDY, ""),
            "tunetrack.reproduced": str(result.reproduced).lower(),
            "tunetrack.reproduce.mode": "bit-exact" if result.exact else
            f"tolerance {tolerance:g}",
            "tunetrack.reproduce.verdict": T.clip(" | ".join(result.lines))}
    if result.first_difference:
        tags["tunetrack.reproduce.first_difference"] = T.clip(result.first_difference)
    if result.environment_differences:
        tags["tunetrack.reproduce.environment"] = T.clip(
            "; ".join(result.environment_differences))
    metrics = [Metric(k, float(v), stamp, h.epoch) for h in history
               for k, v in h.metrics().items()]
    if test_accuracy is not None:
        metrics.append(Metric("test_accuracy", test_accuracy, stamp, 0))
    name = f"reproduce-{original.info.run_name or original.info.run_id}"
    run_id = client.create_run(original.info.experiment_id, run_name=name).info.run_id
    try:
        for start in range(0, max(len(metrics), 1), 1000):
            client.log_batch(run_id, metrics=metrics[start:start + 1000],
                             tags=[RunTag(k, v) for k, v in tags.items()] if not start else [])
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        with contextlib.suppress(Exception):
            client.delete_run(run_id)
        raise
    return run_id
