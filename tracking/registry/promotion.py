"""Promote a study's best model in the MLflow registry when the evidence says it beats the
champion on test.

Aliases only (registry stages are deprecated). The candidate (best completed trial with a
logged model, ranked by the study's validation objective: test never selects) and the
current champion (`models:/NAME@alias`) both predict the same test split now, rebuilt
from the candidate's `trial.yaml`; both must carry the data fingerprint of that split.
Their paired per-image outcomes give an exact McNemar p and a paired bootstrap interval of
the accuracy difference (`promotion_stats`). The alias moves only when the difference is
>= `min_improvement` AND p < `alpha`; nothing is registered otherwise. Without a
champion, the first candidate is promoted (there is nothing to compare with).

MLflow keeps no alias history, so every decision (promoted, or refused after a
comparison) is kept as registered-model tag `tunetrack.history.<alias>.<NNNN>` (JSON: when,
the decision and why, the versions, n, both accuracies, the difference and its interval,
b, c, p, alpha, min_improvement; `promotion_history` reads them back), and promotions as
version tags `tunetrack.promoted.<alias>` / `tunetrack.demoted.<alias>`. A registered
model belongs to the study that created it (tag `tunetrack.study`). For people, each
promoted version's description states the decision with its numbers, the study, trial
and data fingerprint, and the champion run's note names its version and its study's runs
(`promotion_notes`).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tunetrack.models import TunetrackError

from .. import tags as T
from .names import alias_problem, model_name_problem
from .onnx_export import EXPORT_FORMATS
from .promotion_notes import RUN_NOTE, run_note, version_description
from .promotion_stats import PairedEvidence, paired_evidence

if TYPE_CHECKING:
    import optuna
    import torch
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel
    from optuna.trial import FrozenTrial

    from tunetrack.models import Splits


DEFAULT_ALPHA = 0.05
HISTORY_PREFIX = "tunetrack.history."
_HISTORY_KEY = re.compile(r"tunetrack\.history\.(.+)\.(\d{4,})")


@dataclass
class PromotionResult:
    promoted: bool
    version: str | None  # registered version of the candidate (None when not registered)
    candidate_accuracy: float
    champion_accuracy: float | None  # None when there was no champion yet
    message: str
    evidence: PairedEvidence | None = None  # None when nothing was compared
    decision: dict[str, Any] | None = None  # the history entry (None: nothing to record)
    dry_run: bool = False


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _validate(model_name: str, alias: str, min_improvement: float, alpha: float,
              export: Sequence[str]) -> None:
    for what, problem in (("model name", model_name_problem(model_name)),
                          ("alias", alias_problem(alias))):
        if problem is not None:
            raise TunetrackError(f"{what} {problem}")
    if not math.isfinite(min_improvement) or min_improvement < 0:
        raise TunetrackError(f"min_improvement must be >= 0 but got {min_improvement}")
    if not (math.isfinite(alpha) and 0 < alpha < 1):
        raise TunetrackError(f"alpha must be in (0, 1) but got {alpha}")
    unknown = [fmt for fmt in export if fmt not in EXPORT_FORMATS]
    if unknown:
        raise TunetrackError(f"export: unknown format {unknown[0]!r}; allowed: "
                             f"{', '.join(EXPORT_FORMATS)}")


@dataclass
class _Candidate:
    trial: FrozenTrial  # the best ranked completed trial with a logged model
    run: Run
    model_id: str
    note: str  # how it was chosen, appended to every message


def _find_candidate(client: MlflowClient, study: optuna.Study) -> _Candidate:
    """The best completed trial (validation objective: test never selects) whose run has a
    logged model; multi-objective: the Pareto front ranked by the first objective."""
    from mlflow.exceptions import MlflowException
    from optuna.trial import TrialState

    from ..directions import direction_sign

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise TunetrackError(f"study {study.study_name!r} has no completed trial to promote")
    sign = direction_sign(study.directions[0])
    multi = len(study.directions) > 1
    ranked = sorted(study.best_trials if multi else complete,
                    key=lambda t: (sign * t.values[0], t.number))
    note = " (multi-objective: Pareto front ranked by the first objective)" if multi else ""
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
            if trial is not ranked[0]:
                note += (f"; best trial #{ranked[0].number} has no logged model, so trial "
                         f"#{trial.number} (the best one with a model) is the candidate")
            return _Candidate(trial, run, model_id, note)
    raise TunetrackError(
        f"no completed trial of the study has a logged model in MLflow ({len(ranked)} "
        f"checked); run it with tracking.log_models 'best' or 'all'")


def _registered(client: MlflowClient, name: str) -> RegisteredModel | None:
    from mlflow.exceptions import MlflowException

    from ..store import error_code

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        code = error_code(exc)
        if code == "RESOURCE_DOES_NOT_EXIST":
            return None
        if code == "INVALID_PARAMETER_VALUE":
            from tunetrack.models.errors import first_line

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

    from ..store import error_code

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if error_code(exc) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _test_split(client: MlflowClient, candidate: _Candidate) -> Splits:
    """The test split, rebuilt from the candidate's `trial.yaml`; refused when the data
    changed since the candidate was trained (its accuracy would not be comparable)."""
    import yaml

    from tunetrack.models import TrialConfig, load_splits
    from tunetrack.models.user_code import code_dirs

    from ..runs import code_folders, code_records
    from ..store import quiet_downloads

    run_id = candidate.run.info.run_id
    with tempfile.TemporaryDirectory(prefix="tunetrack-promote-") as tmp, quiet_downloads():
        try:
            local = client.download_artifacts(run_id, "trial.yaml", tmp)
        except Exception as exc:
            raise TunetrackError(f"run {run_id} has no readable trial.yaml "
                                 f"({type(exc).__name__}); cannot rebuild its test split") \
                from None
        raw = yaml.safe_load(Path(local).read_text())
    # a user dataset: importable from the folders its run recorded (the study file's)
    with code_dirs(code_folders(code_records(candidate.run.data.tags))):
        splits = load_splits(TrialConfig.from_dict(raw).data)
    trained_on = candidate.run.data.tags.get(T.DATA_FINGERPRINT)
    if trained_on and trained_on != splits.fingerprint:
        raise TunetrackError(
            f"the data of trial #{candidate.trial.number} changed since it was trained "
            f"(fingerprint {trained_on} then, {splits.fingerprint} now); cannot evaluate it "
            f"fairly")
    return splits


@dataclass
class _Evaluated:
    """A model's network and its answers on the test split."""

    network: torch.nn.Module
    metadata: dict[str, Any]  # tunetrack's MLmodel metadata (classes, input shape, ...)
    logits: torch.Tensor  # fp32, one row per test image
    correct: np.ndarray  # per test image: argmax of the logits is its label


def _evaluate(model_uri: str, client: MlflowClient, splits: Splits) -> _Evaluated:
    """`model_uri` on the test split. Correct = argmax of fp32 logits, the rule
    `Trainer.evaluate` uses, so the mean is the recorded test accuracy."""
    from .model_io import load_pytorch_model, predict_logits

    network, metadata = load_pytorch_model(model_uri, client)
    logits = predict_logits(network, splits.test.x.cpu().float())
    correct = ((logits.argmax(1) == splits.test.y.cpu()).numpy() if len(logits)
               else np.zeros(0, dtype=bool))
    return _Evaluated(network, metadata, logits, correct)


def _accuracy(correct: np.ndarray) -> float:
    return int(correct.sum()) / max(len(correct), 1)  # as Trainer.evaluate: correct / n


def _judge(evidence: PairedEvidence, min_improvement: float, alpha: float
           ) -> tuple[bool, str]:
    """Both gates: a large enough gain AND one unlikely under "equally good"."""
    b, c, p = evidence.champion_only, evidence.candidate_only, evidence.p_value
    if b + c == 0:
        return False, "the models agree on every test image: no evidence either way"
    if evidence.difference < min_improvement:
        return False, (f"difference {evidence.difference:+.4f} < min_improvement "
                       f"{min_improvement:g}")
    if p >= alpha:
        return False, (f"not significant: McNemar p = {p:.3g} >= alpha {alpha:g} (only "
                       f"{b + c} images decide: {c} for the candidate, {b} for the champion)")
    return True, (f"difference {evidence.difference:+.4f} >= min_improvement "
                  f"{min_improvement:g} and McNemar p = {p:.3g} < alpha {alpha:g}")


def _evidence_entry(evidence: PairedEvidence) -> dict[str, Any]:
    numbers = evidence.as_dict()
    return {"n": numbers["n"],
            "candidate_test_accuracy": numbers["candidate_accuracy"],
            "champion_test_accuracy": numbers["champion_accuracy"],
            "difference": numbers["difference"],
            "ci95": [numbers["ci_low"], numbers["ci_high"]],
            "b_champion_only": numbers["champion_only"],
            "c_candidate_only": numbers["candidate_only"],
            "p_value": evidence.p_value}


def promote(study: optuna.Study, *, model_name: str, alias: str = "champion",
            min_improvement: float = 0.0, alpha: float = DEFAULT_ALPHA,
            export: Sequence[str] = (), dry_run: bool = False,
            tracking_uri: str | None = None) -> PromotionResult:
    """Register the best trial's model and point `alias` at it when the evidence says it
    beats the champion: test accuracy gain >= `min_improvement` and exact McNemar p <
    `alpha`. Every decision (promoted or refused after a comparison) goes into the
    history; `dry_run` decides and changes nothing. A new champion is also logged in each
    format of `export` (`onnx_export`; a network that does not export is a line of the
    message). Promotions of one model run one at a time (`promotion_lock`): each decides
    on what the one before it left."""
    from ..runs import HELPER
    from ..store import open_client
    from .promotion_lock import promotion_lock

    _validate(model_name, alias, min_improvement, alpha, export)
    uri, client = open_client(tracking_uri)
    HELPER.flush()  # runs this process is still writing
    candidate = _find_candidate(client, study)
    with contextlib.nullcontext() if dry_run else promotion_lock(uri, model_name):
        return _decide(client, study, candidate, model_name=model_name, alias=alias,
                       min_improvement=min_improvement, alpha=alpha,
                       export=tuple(export), dry_run=dry_run)


def _decide(client: MlflowClient, study: optuna.Study, candidate: _Candidate, *,
            model_name: str, alias: str, min_improvement: float, alpha: float,
            export: tuple[str, ...], dry_run: bool) -> PromotionResult:
    """Read the champion, judge the candidate against it, register or refuse."""
    registered = _registered(client, model_name)
    if registered is not None:
        _check_owner(registered, study.study_name)
    champion = _champion(client, model_name, alias) if registered is not None else None
    splits = _test_split(client, candidate)
    evaluated = _evaluate(f"models:/{candidate.model_id}", client, splits)
    correct = evaluated.correct
    accuracy = _accuracy(correct)
    entry: dict[str, Any] = {
        "at": _now(), "alias": alias, "study": study.study_name,
        "trial": candidate.trial.number, "run_id": candidate.run.info.run_id,
        "n": len(correct), "candidate_test_accuracy": round(accuracy, 6), "alpha": alpha,
        "min_improvement": min_improvement,
        "champion_version": str(champion.version) if champion is not None else None}
    decider = _Decider(client, study, model_name, alias, dry_run, registered, candidate,
                       splits.fingerprint, accuracy, entry, export, splits, evaluated)
    if champion is None:
        return decider.promoted(f"first champion: {model_name}@{alias} does not exist yet, "
                                f"nothing to compare")
    return _challenge(decider, champion, splits, correct, min_improvement, alpha)


@dataclass
class _Decider:
    """One promotion past the candidate's own evaluation, and the two ways it ends."""

    client: MlflowClient
    study: optuna.Study
    model_name: str
    alias: str
    dry_run: bool
    registered: RegisteredModel | None
    candidate: _Candidate
    fingerprint: str  # of the test split both models are judged on
    accuracy: float  # the candidate's test accuracy
    entry: dict[str, Any]  # the history entry so far
    export: tuple[str, ...]  # formats a new champion is logged in too
    splits: Splits  # the test split both models are judged on
    evaluated: _Evaluated  # the candidate on it

    def refused(self, reason: str, champion_acc: float | None,
                evidence: PairedEvidence | None = None, record: bool = True
                ) -> PromotionResult:
        """Not promoted; the decision is recorded unless `record` is False or a dry run."""
        decision = {**self.entry, "decision": "refused", "version": None, "reason": reason}
        if record and not self.dry_run:
            _record(self.client, self.model_name, self.alias, decision)
        stamp = "dry run: " if self.dry_run else ""
        return PromotionResult(False, None, self.accuracy, champion_acc,
                               f"{stamp}not promoted: {reason}{self.candidate.note}",
                               evidence, decision if record else None, self.dry_run)

    def promoted(self, reason: str, champion: ModelVersion | None = None,
                 champion_acc: float | None = None, evidence: PairedEvidence | None = None
                 ) -> PromotionResult:
        """Registered and aliased (`_register`) over `champion` (None: the first one); a
        dry run only says it would be."""
        trial = self.candidate.trial.number
        decision = {**self.entry, "decision": "promoted",
                    "replaced": str(champion.version) if champion is not None else None,
                    "reason": reason}
        if self.dry_run:
            why = f" over version {champion.version}: {reason}" if champion else f" ({reason})"
            return PromotionResult(False, None, self.accuracy, champion_acc,
                                   f"dry run: would promote trial #{trial}{why}"
                                   f"{self.candidate.note}", evidence, decision, True)
        version = _register(self, champion, decision)
        why = (f", replacing version {champion.version}: {reason}" if champion
               else f": test accuracy {self.accuracy:.4f}, {reason}")
        message = (f"promoted trial #{trial} as {self.model_name} version {version} "
                   f"@{self.alias}{why}{self.candidate.note}")
        # one line per exported format, after the decision: the promotion stands anyway
        message += "".join(f"\n{line}" for line in self.exported(version))
        return PromotionResult(True, version, self.accuracy, champion_acc, message,
                               evidence, decision)

    def exported(self, version: str) -> list[str]:
        """Log the new champion in each `export` format (onnx, the only one) and tag
        `version` with where it went; one line per format."""
        from .onnx_export import DIFFERENCE_TAG, ONNX_TAG, log_onnx

        if "onnx" not in self.export:
            return []
        run = self.candidate.run
        logged = log_onnx(
            self.client, run_id=run.info.run_id, experiment_id=run.info.experiment_id,
            network=self.evaluated.network, x=self.splits.test.x,
            torch_logits=self.evaluated.logits, metadata=self.evaluated.metadata)
        if logged.model_id is not None:
            self.client.set_model_version_tag(self.model_name, version, ONNX_TAG,
                                              f"models:/{logged.model_id}")
            self.client.set_model_version_tag(
                self.model_name, version, DIFFERENCE_TAG,
                f"{logged.agreement.max_probability_diff:.3g}")
        return [logged.line]


def _challenge(decider: _Decider, champion: ModelVersion, splits: Splits,
               candidate_correct: np.ndarray, min_improvement: float, alpha: float
               ) -> PromotionResult:
    """The evidence against the current champion: both models on the same test images,
    then both gates (`_judge`). Nothing to compare when the candidate already is the
    champion or the champion was trained on other data."""
    name, alias = decider.model_name, decider.alias
    champion_model = champion.tags.get(T.MODEL_ID) or getattr(champion, "model_id", None)
    if champion_model == decider.candidate.model_id:
        result = decider.refused(f"trial #{decider.candidate.trial.number} is already "
                                 f"{name}@{alias} (version {champion.version}); nothing to "
                                 f"do", decider.accuracy, record=False)
        result.version = str(champion.version)
        return result
    champion_fp = champion.tags.get(T.DATA_FINGERPRINT)
    if champion_fp != splits.fingerprint:
        return decider.refused(f"champion {name}@{alias} (version {champion.version}) was "
                               f"trained on other data (fingerprint {champion_fp}, "
                               f"candidate {splits.fingerprint}); their test accuracies are "
                               f"not comparable", None)
    try:
        champion_correct = _evaluate(f"models:/{name}@{alias}", decider.client,
                                     splits).correct
    except TunetrackError as exc:
        raise TunetrackError(f"current champion {name}@{alias} (version {champion.version}) "
                             f"cannot be evaluated: {exc}; delete that alias to start over") \
            from None
    champion_acc = _accuracy(champion_correct)
    evidence = paired_evidence(champion_correct, candidate_correct)
    decider.entry.update(_evidence_entry(evidence))
    wins, reason = _judge(evidence, min_improvement, alpha)
    if not wins:
        return decider.refused(reason, champion_acc, evidence)
    return decider.promoted(reason, champion, champion_acc, evidence)


def evidence_lines(result: PromotionResult) -> list[str]:
    """What `tunetrack promote` prints before its decision: the numbers behind it."""
    decision = result.decision or {}
    n = decision.get("n")
    lines = []
    if n is not None:
        lines.append(f"test images: n = {n}")
    lines.append(f"candidate (trial #{decision.get('trial', '?')}) test accuracy "
                 f"{result.candidate_accuracy:.4f}")
    if result.champion_accuracy is not None:
        lines.append(f"champion (version {decision.get('champion_version', '?')}) test "
                     f"accuracy {result.champion_accuracy:.4f}")
    ev = result.evidence
    if ev is not None:
        lines.append(f"difference {ev.difference:+.4f}, 95% paired bootstrap CI "
                     f"[{ev.ci_low:+.4f}, {ev.ci_high:+.4f}]")
        lines.append(f"discordant images: b = {ev.champion_only} (only the champion right), "
                     f"c = {ev.candidate_only} (only the candidate right); exact McNemar "
                     f"p = {ev.p_value:.4g} (alpha {decision.get('alpha')}, min_improvement "
                     f"{decision.get('min_improvement')})")
    return lines


def _record(client: MlflowClient, model_name: str, alias: str, entry: dict[str, Any]) -> None:
    """Append `entry` to the registered model's history: tag
    `tunetrack.history.<alias>.<NNNN>` (MLflow keeps no alias history of its own)."""
    prefix = f"{HISTORY_PREFIX}{alias}."
    tags = client.get_registered_model(model_name).tags
    seq = 1 + sum(key.startswith(prefix) for key in tags)
    client.set_registered_model_tag(model_name, f"{prefix}{seq:04d}",
                                    T.clip(json.dumps(entry)))


def promotion_history(model_name: str, *, alias: str | None = None,
                      tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Every recorded decision of `model_name` (all aliases, or one), oldest first.

    Entries written before promotion became statistical lack `decision` (they were all
    promotions) and the evidence numbers; they are returned as they are, marked promoted.
    """
    from ..store import open_client

    uri, client = open_client(tracking_uri)
    registered = _registered(client, model_name)
    if registered is None:
        raise TunetrackError(f"no registered model {model_name!r} in {uri}; promote a study "
                             f"first (tunetrack promote STUDY)")
    rows = []
    for key, value in registered.tags.items():
        match = _HISTORY_KEY.fullmatch(key)
        if match is None or (alias is not None and match[1] != alias):
            continue
        try:
            entry = json.loads(value)
        except ValueError:
            entry = {"reason": f"unreadable history entry: {value[:80]}"}
        entry.setdefault("alias", match[1])
        entry.setdefault("decision", "promoted")
        entry["seq"] = int(match[2])
        rows.append(entry)
    return sorted(rows, key=lambda e: (str(e.get("at", "")), e["seq"], e["alias"]))


def _register(decider: _Decider, champion: ModelVersion | None, decision: dict[str, Any]
              ) -> str:
    """Create the version, move the alias, write the history; undo all of it on error."""
    from mlflow.exceptions import MlflowException

    from ..store import error_code

    client, model_name, alias, study = (decider.client, decider.model_name, decider.alias,
                                        decider.study)
    trial, run, model_id = (decider.candidate.trial, decider.candidate.run,
                            decider.candidate.model_id)
    created_model = created_version = None
    alias_moved = False
    try:
        if decider.registered is None:
            try:
                client.create_registered_model(model_name, tags={T.STUDY: study.study_name},
                                               description=f"best models of study "
                                                           f"{study.study_name}")
                created_model = model_name
            except MlflowException as exc:
                if error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                    raise
                _check_owner(client.get_registered_model(model_name), study.study_name)
        when = decision["at"]
        val = run.data.metrics.get("best_val_accuracy")
        version_tags: dict[str, Any] = {
            T.STUDY: study.study_name, T.TRIAL: trial.number, T.MODEL_ID: model_id,
            "test_accuracy": f"{decider.accuracy:.6f}", "objective_value": trial.values[0],
            T.DATA_FINGERPRINT: decider.fingerprint, f"tunetrack.promoted.{alias}": when,
            f"tunetrack.promoted_over.{alias}": champion.version if champion else "none",
        }
        if decision.get("p_value") is not None:
            version_tags[f"tunetrack.promotion_p.{alias}"] = f"{decision['p_value']:.6g}"
        if val is not None:
            version_tags["val_accuracy"] = f"{val:.6f}"
        # source = the artifact location, not "models:/<id>": for that form MLflow's SQL
        # registry looks the LoggedModel up in the *global* default store (its own TODO)
        source = client.get_logged_model(model_id).artifact_location
        where = {"parent_run_id": run.data.tags.get(T.PARENT_RUN_ID),
                 "experiment_id": run.info.experiment_id}
        mv = client.create_model_version(
            model_name, source=source, run_id=run.info.run_id,
            tags={k: str(v) for k, v in version_tags.items()}, model_id=model_id,
            description=version_description(decision, fingerprint=decider.fingerprint,
                                            **where))
        created_version = str(mv.version)
        client.set_registered_model_alias(model_name, alias, mv.version)
        alias_moved = True
        if champion is not None:
            client.set_model_version_tag(model_name, champion.version,
                                         f"tunetrack.demoted.{alias}", when)
            client.set_model_version_tag(model_name, champion.version,
                                         f"tunetrack.replaced_by.{alias}", str(mv.version))
        decision["version"] = str(mv.version)
        _record(client, model_name, alias, decision)
        client.set_tag(run.info.run_id, RUN_NOTE, run_note(model_name, str(mv.version),
                                                         decision, **where))
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
