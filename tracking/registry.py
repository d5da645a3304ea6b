"""Promote a study's best model in the MLflow registry when it beats the champion on test.

Aliases only (registry stages are deprecated). The candidate (best completed trial with a
logged model, ranked by the study's validation objective: test never selects) and the
current champion (`models:/NAME@alias`) are both evaluated now, on the same test split
rebuilt from the candidate's `trial.yaml`; both must carry the data fingerprint of that
split. The alias moves only when `candidate >= champion + min_improvement`; nothing is
registered otherwise.

MLflow keeps no alias history, so each promotion is recorded as registered-model tag
`tunetrack.history.<alias>.<NNNN>` (JSON: when, which version replaced which, both
accuracies) and as version tags `tunetrack.promoted.<alias>` / `tunetrack.demoted.<alias>`.
A registered model belongs to the study that created it (tag `tunetrack.study`).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunetrack.models import TunetrackError

from . import tags as T

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel
    from optuna.trial import FrozenTrial

    from tunetrack.models import Splits


@dataclass
class PromotionResult:
    promoted: bool
    version: str | None  # registered version of the candidate (None when not registered)
    candidate_accuracy: float
    champion_accuracy: float | None  # None when there was no champion yet
    message: str


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _validate(model_name: str, alias: str, min_improvement: float) -> None:
    if not model_name or not model_name.strip() or "/" in model_name:
        raise TunetrackError(f"model name must be non-empty without '/', got {model_name!r}")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", alias or ""):
        raise TunetrackError(f"alias must be letters, digits, '_' or '-', got {alias!r}")
    if alias.lower() == "latest" or re.fullmatch(r"v\d+", alias, flags=re.IGNORECASE):
        raise TunetrackError(f"alias {alias!r} is reserved by MLflow; choose another")
    if not math.isfinite(min_improvement) or min_improvement < 0:
        raise TunetrackError(f"min_improvement must be >= 0 but got {min_improvement}")


def _ranked(study: optuna.Study) -> tuple[list[FrozenTrial], str]:
    """Completed trials, best validation objective first (multi-objective: the Pareto
    front ordered by the first objective)."""
    from optuna.trial import TrialState

    from .compare import direction_sign

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise TunetrackError(f"study {study.study_name!r} has no completed trial to promote")
    sign = direction_sign(study.directions[0])
    if len(study.directions) == 1:
        return sorted(complete, key=lambda t: (sign * t.values[0], t.number)), ""
    front = sorted(study.best_trials, key=lambda t: (sign * t.values[0], t.number))
    return front, " (multi-objective: Pareto front ranked by the first objective)"


def _candidate(client: MlflowClient, ranked: list[FrozenTrial]) -> tuple[FrozenTrial, Run, str]:
    """The best ranked trial whose run has a logged model, and the model id."""
    from mlflow.exceptions import MlflowException

    for trial in ranked:
        run_id = trial.user_attrs.get(T.ATTR_RUN_ID)
        if not run_id:
            continue
        try:
            run = client.get_run(run_id)
        except MlflowException:
            continue
        model_id = run.data.tags.get(T.MODEL_ID)
        if model_id:
            return trial, run, model_id
    raise TunetrackError(
        f"no completed trial of the study has a logged model in MLflow ({len(ranked)} "
        f"checked); run it with tracking.log_models 'best' or 'all'")


def _registered(client: MlflowClient, name: str) -> RegisteredModel | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        code = str(getattr(exc, "error_code", ""))
        if code == "RESOURCE_DOES_NOT_EXIST":
            return None
        if code == "INVALID_PARAMETER_VALUE":
            from .client import first_line

            raise TunetrackError(f"invalid registered model name {name!r}: "
                                 f"{first_line(exc)}") from None
        raise


def _check_owner(registered: RegisteredModel, study_name: str) -> None:
    owner = registered.tags.get(T.STUDY)
    if owner != study_name:
        who = f"study {owner!r}" if owner else "something other than tunetrack"
        raise TunetrackError(f"registered model {registered.name!r} belongs to {who}, not "
                             f"study {study_name!r}; choose another registry.model_name")


def _champion(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if str(getattr(exc, "error_code", "")) in ("RESOURCE_DOES_NOT_EXIST",
                                                   "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _splits_of(client: MlflowClient, run: Run) -> Splits:
    import yaml

    from tunetrack.models import TrialConfig, load_splits

    from .client import quiet_downloads

    with tempfile.TemporaryDirectory(prefix="tunetrack-promote-") as tmp, quiet_downloads():
        try:
            local = client.download_artifacts(run.info.run_id, "trial.yaml", tmp)
        except Exception as exc:
            raise TunetrackError(f"run {run.info.run_id} has no readable trial.yaml "
                                 f"({type(exc).__name__}); cannot rebuild its test split") \
                from None
        raw = yaml.safe_load(Path(local).read_text())
    return load_splits(TrialConfig.from_dict(raw).data)


def _test_accuracy(model_uri: str, client: MlflowClient, splits: Splits) -> float:
    """Accuracy computed like `Trainer.evaluate` (correct / n in Python floats)."""
    from .model_io import load_pytorch_model, predict_logits

    model, _ = load_pytorch_model(model_uri, client)
    logits = predict_logits(model, splits.test.x.cpu().float())
    correct = int((logits.argmax(1) == splits.test.y.cpu()).sum()) if len(logits) else 0
    return correct / max(len(splits.test), 1)


def promote(study: optuna.Study, *, model_name: str, alias: str = "champion",
            min_improvement: float = 0.0, tracking_uri: str | None = None) -> PromotionResult:
    """Register the best trial's model and point `alias` at it if it beats the champion."""
    from .client import client_for
    from .sidecar import SIDECAR
    from .uri import check_reachable, resolve_tracking_uri

    _validate(model_name, alias, min_improvement)
    uri = resolve_tracking_uri(tracking_uri)
    check_reachable(uri)
    client = client_for(uri)
    SIDECAR.drain()  # runs of this process ended with wait=False
    ranked, ranking_note = _ranked(study)
    trial, run, model_id = _candidate(client, ranked)
    note = ranking_note
    if trial is not ranked[0]:
        note += (f"; best trial #{ranked[0].number} has no logged model, so trial "
                 f"#{trial.number} (the best one with a model) is the candidate")
    registered = _registered(client, model_name)
    if registered is not None:
        _check_owner(registered, study.study_name)
    champion = _champion(client, model_name, alias) if registered is not None else None

    splits = _splits_of(client, run)
    trained_on = run.data.tags.get(T.DATA_FINGERPRINT)
    if trained_on and trained_on != splits.fingerprint:
        raise TunetrackError(
            f"the data of trial #{trial.number} changed since it was trained (fingerprint "
            f"{trained_on} then, {splits.fingerprint} now); cannot evaluate it fairly")
    candidate_acc = _test_accuracy(f"models:/{model_id}", client, splits)

    def refuse(message: str, champion_acc: float | None, version: str | None = None):
        return PromotionResult(False, version, candidate_acc, champion_acc, message + note)

    champion_acc = None
    if champion is not None:
        champion_model = champion.tags.get(T.MODEL_ID) or getattr(champion, "model_id", None)
        if champion_model == model_id:
            return refuse(f"trial #{trial.number} is already {model_name}@{alias} (version "
                          f"{champion.version}); nothing to do", candidate_acc,
                          str(champion.version))
        champion_fp = champion.tags.get(T.DATA_FINGERPRINT)
        if champion_fp != splits.fingerprint:
            return refuse(f"not promoted: champion {model_name}@{alias} (version "
                          f"{champion.version}) was trained on other data (fingerprint "
                          f"{champion_fp}, candidate {splits.fingerprint}); their test "
                          f"accuracies are not comparable", None)
        try:
            champion_acc = _test_accuracy(f"models:/{model_name}@{alias}", client, splits)
        except TunetrackError as exc:
            raise TunetrackError(f"current champion {model_name}@{alias} (version "
                                 f"{champion.version}) cannot be evaluated: {exc}; delete "
                                 f"that alias to start over") from None
        if candidate_acc < champion_acc + min_improvement:
            return refuse(
                f"not promoted: trial #{trial.number} test accuracy {candidate_acc:.4f} < "
                f"champion version {champion.version} {champion_acc:.4f} + min_improvement "
                f"{min_improvement:g}", champion_acc)

    version = _register(client, model_name=model_name, alias=alias, study=study, trial=trial,
                        run=run, model_id=model_id, fingerprint=splits.fingerprint,
                        candidate_acc=candidate_acc, champion=champion,
                        champion_acc=champion_acc, registered=registered,
                        min_improvement=min_improvement)
    was = (f"replacing version {champion.version} ({champion_acc:.4f})" if champion
           else "first champion")
    return PromotionResult(True, version, candidate_acc, champion_acc,
                           f"promoted trial #{trial.number} as {model_name} version {version} "
                           f"@{alias}: test accuracy {candidate_acc:.4f}, {was}{note}")


def _register(client: MlflowClient, *, model_name: str, alias: str, study: optuna.Study,
              trial: FrozenTrial, run: Run, model_id: str, fingerprint: str,
              candidate_acc: float, champion: ModelVersion | None,
              champion_acc: float | None, registered: RegisteredModel | None,
              min_improvement: float) -> str:
    """Create the version, move the alias, write the history; undo all of it on error."""
    from mlflow.exceptions import MlflowException

    created_model = created_version = None
    alias_moved = False
    try:
        if registered is None:
            try:
                client.create_registered_model(model_name, tags={T.STUDY: study.study_name},
                                               description=f"best models of study "
                                                           f"{study.study_name}")
                created_model = model_name
                registered = client.get_registered_model(model_name)
            except MlflowException as exc:
                if str(getattr(exc, "error_code", "")) != "RESOURCE_ALREADY_EXISTS":
                    raise
                registered = client.get_registered_model(model_name)  # lost a race
                _check_owner(registered, study.study_name)
        when = _now()
        val = run.data.metrics.get("best_val_accuracy")
        version_tags: dict[str, Any] = {
            T.STUDY: study.study_name, T.TRIAL: trial.number, T.MODEL_ID: model_id,
            "test_accuracy": f"{candidate_acc:.6f}", "objective_value": trial.values[0],
            T.DATA_FINGERPRINT: fingerprint, f"tunetrack.promoted.{alias}": when,
            f"tunetrack.promoted_over.{alias}": champion.version if champion else "none",
        }
        if val is not None:
            version_tags["val_accuracy"] = f"{val:.6f}"
        # source = the artifact location, not "models:/<id>": for that form MLflow's SQL
        # registry looks the LoggedModel up in the *global* default store (its own TODO)
        source = client.get_logged_model(model_id).artifact_location
        mv = client.create_model_version(
            model_name, source=source, run_id=run.info.run_id,
            tags={k: str(v) for k, v in version_tags.items()}, model_id=model_id,
            description=f"study {study.study_name}, trial #{trial.number}")
        created_version = str(mv.version)
        client.set_registered_model_alias(model_name, alias, mv.version)
        alias_moved = True
        if champion is not None:
            client.set_model_version_tag(model_name, champion.version,
                                         f"tunetrack.demoted.{alias}", when)
            client.set_model_version_tag(model_name, champion.version,
                                         f"tunetrack.replaced_by.{alias}", str(mv.version))
        prefix = f"tunetrack.history.{alias}."
        seq = 1 + sum(key.startswith(prefix) for key in registered.tags)
        client.set_registered_model_tag(model_name, f"{prefix}{seq:04d}", json.dumps({
            "at": when, "version": str(mv.version),
            "replaced": str(champion.version) if champion else None,
            "study": study.study_name, "trial": trial.number,
            "candidate_test_accuracy": round(candidate_acc, 6),
            "champion_test_accuracy": None if champion_acc is None else round(champion_acc, 6),
            "min_improvement": min_improvement,
            "reason": "first champion" if champion is None else "beat champion on test"}))
        return str(mv.version)
    except BaseException:
        _rollback(client, model_name, alias, champion, created_version, alias_moved,
                  created_model)
        raise


def _rollback(client: MlflowClient, model_name: str, alias: str, champion: ModelVersion | None,
              created_version: str | None, alias_moved: bool, created_model: str | None) -> None:
    """Best-effort undo so a failed promotion leaves the registry as it was."""
    steps = []
    if alias_moved:
        steps.append(lambda: client.set_registered_model_alias(model_name, alias,
                                                               champion.version)
                     if champion else client.delete_registered_model_alias(model_name, alias))
        if champion is not None:
            for key in (f"tunetrack.demoted.{alias}", f"tunetrack.replaced_by.{alias}"):
                steps.append(lambda key=key: client.delete_model_version_tag(
                    model_name, champion.version, key))
    if created_version is not None:
        steps.append(lambda: client.delete_model_version(model_name, created_version))
    if created_model is not None:
        steps.append(lambda: client.delete_registered_model(model_name))
    for step in steps:
        with contextlib.suppress(Exception):  # keep undoing the rest
            step()
