"""Inside the helper process (`__main__.py`): each message of the study process as MLflow
calls, through `MlflowClient` and explicit run ids only. The lanes they run on and what a
failure does: `lanes.py`; the study's shared parent run: `parent_run.py`.
"""

from __future__ import annotations

import gc
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunetrack.models.errors import first_line
from tunetrack.models.user_code import add_code_dirs

from .. import tags as T
from ..runs import code_folders, code_records, full_path
from ..store import client_for, end_run  # MLflow's client, before the first message
from .lanes import Lanes, RunState, StudyState
from .parent_run import find_or_create

if TYPE_CHECKING:
    from ..pictures import PlotDrawer

_log = logging.getLogger(__name__)
MAX_METRICS, MAX_PARAMS = 1000, 100  # MLflow's log_batch limits


class Writer(Lanes):
    """Carries out the study process's messages; `answer(seq, result)` reports each."""

    def __init__(self, answer: Callable[[int, Any], None]):
        self._drawer: PlotDrawer | None = None  # started at the end of warm_up
        super().__init__(answer)

    def dispatch(self, seq: int, op: str, kwargs: dict[str, Any]) -> None:
        if op == "create_run":  # before its `completed` is unpickled: its model's class
            add_code_dirs(code_folders(code_records(kwargs["tags"])))  # is the user's
        if op == "finish_study":
            kwargs["drawing"] = self._draw_early(kwargs)
        super().dispatch(seq, op, kwargs)

    def _draw_early(self, finish: dict[str, Any]) -> bool:
        """Hand the study's dearest PNGs to the drawer process as soon as `finish_study`
        arrives, while the slow lane still writes the last trial's files; True if it took
        them (`finish_study` then only collects them)."""
        state = self._studies.get(finish["study"])
        if self._drawer is None or state is None or state.parent_run_id is None:
            return False
        from ..pictures import ASIDE

        return self._drawer.submit(list(ASIDE), finish["trials"], finish["directions"])

    def close(self) -> None:
        super().close()
        if self._drawer is not None:
            self._drawer.close()

    def warm_up(self) -> None:
        """Import what the slow lane needs, and draw a made-up trial's files once, while
        the first trials train (`run_contents.warm_up_files`)."""
        self._quick_ready.wait(timeout=60)
        import optuna.visualization.matplotlib  # noqa: F401  (the study's plots)
        import torch

        from ..registry import log_pytorch_model  # noqa: F401
        from ..runs import warm_up_files

        torch.set_num_threads(1)
        # a few images per model only (feature maps, the signature): oneDNN would keep
        # ~1 MB of kernels per distinct layer shape for good
        torch.backends.mkldnn.enabled = False
        with tempfile.TemporaryDirectory(prefix="tunetrack-warm-up-") as tmp:
            warm_up_files(Path(tmp))
        from ..pictures import PlotDrawer

        self._drawer = PlotDrawer.start()  # after this process's own start-up work
        gc.freeze()  # what is imported stays: the collector need not walk it again
        gc.enable()  # the helper starts with it off (`__main__.serve`)

    def start_study(self, study: str, uri: str, experiment: str, study_name: str,
                    directions: str, remembered: str | None) -> str:
        """Create a new local store (`store.ensure_local_store`: here, off the study's path
        to its first epoch), get or create the experiment and the study's one parent run;
        return its id."""
        from ..store import ensure_local_store, get_or_create_experiment

        state = self._studies.setdefault(study, StudyState(uri, study_name, dict(
            study=study, uri=uri, experiment=experiment, study_name=study_name,
            directions=directions, remembered=remembered)))
        ensure_local_store(uri)
        client = client_for(uri)
        state.experiment_id = get_or_create_experiment(client, experiment, uri)
        parent = find_or_create(state, experiment, directions, remembered)
        if client.get_run(parent).info.status != "RUNNING":
            client.update_run(parent, status="RUNNING")  # a resumed study is live again
        state.parent_run_id = parent
        return parent

    def create_run(self, run: int, study: str, number: int, params: dict[str, str],
                   tags: dict[str, str], trial_yaml: str, system_metrics_s: float | None,
                   data: Any = None, resume: bool = False) -> str:
        """The trial's child run with its params, `trial.yaml` and, given `data` (the
        trial's `DataConfig`), its splits as dataset inputs (`datasets.py`); returns the
        run id. `resume`: sent again after a helper died (`runs/helper_link.py`), so the
        run the dead helper created for this trial, if any, is taken over instead."""
        from mlflow.entities import Param

        from ..runs import dataset_inputs

        state = self._studies[study]
        me = self._runs[run] = RunState(state, number, broken=True, data=data)  # until written
        self._answering(state.uri, new_run=True)
        if state.parent_run_id is None:  # creating it had failed: try again
            self.start_study(**state.start)
        client = client_for(state.uri)
        found = self._trial_run(state, number) if resume else None
        if found is not None:
            me.run_id, me.artifact_uri = found.info.run_id, found.info.artifact_uri
            me.broken = False
            return me.run_id
        info = client.create_run(state.experiment_id, run_name=f"trial-{number}", tags={
            T.PARENT_RUN_ID: state.parent_run_id, **tags}).info
        me.run_id, me.artifact_uri = info.run_id, info.artifact_uri
        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), MAX_PARAMS):
            client.log_batch(me.run_id, params=items[start:start + MAX_PARAMS],
                             synchronous=True)
        if data is not None:
            _log_inputs(client, me.run_id, dataset_inputs(data, tags.get(T.DATA_FINGERPRINT, "")))
        with tempfile.TemporaryDirectory(prefix="tunetrack-trial-") as tmp:
            (Path(tmp) / "trial.yaml").write_text(trial_yaml)
            self._upload(me, Path(tmp))
        if system_metrics_s:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            me.monitor = SystemMetricsMonitor(me.run_id, sampling_interval=system_metrics_s,
                                              tracking_uri=state.uri)
            me.monitor.start()
        me.broken = False
        return me.run_id

    def _trial_run(self, state: StudyState, number: int) -> Any:
        """The study's existing child run of trial `number`, or None."""
        runs = client_for(state.uri).search_runs([state.experiment_id], filter_string=(
            f"tags.`{T.PARENT_RUN_ID}` = '{state.parent_run_id}' and "
            f"tags.`{T.OPTUNA_TRIAL}` = '{number}'"), max_results=1)
        return runs[0] if runs else None

    def _live(self, run: int) -> RunState | None:
        me = self._runs.get(run)
        return None if me is None or me.broken or me.study.uri in self._full else me

    def _upload(self, run: RunState, folder: Path) -> None:
        """A folder's files straight to the run's artifact repository, in one call
        (`MlflowClient.log_artifacts` would re-read the whole run first). A copy cut off
        by a full disk leaves no half file behind: its room may be what ending the run
        needs."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        try:
            get_artifact_repository(run.artifact_uri, tracking_uri=run.study.uri
                                    ).log_artifacts(str(folder))
        except OSError as exc:
            half = Path(exc.filename2 or "")
            if full_path(exc, None) is not None and half.is_file() and folder not in half.parents:
                half.unlink()
            raise

    def metrics(self, run: int, rows: list[tuple[str, float, int, int]],
                tags: dict[str, str] | None = None, model_id: str | None = None) -> None:
        """One `log_batch` of (key, value, timestamp ms, step) rows (and tags)."""
        from mlflow.entities import Metric, RunTag

        me = self._live(run)
        if me is None:
            return
        metrics = [Metric(k, float(v), stamp, step, model_id=model_id)
                   for k, v, stamp, step in rows]
        run_tags = [RunTag(k, v) for k, v in (tags or {}).items()]
        for start in range(0, max(len(metrics), 1), MAX_METRICS):
            client_for(me.study.uri).log_batch(
                me.run_id, metrics=metrics[start:start + MAX_METRICS],
                tags=run_tags if start == 0 else [], synchronous=True)

    def completed(self, run: int, record: Any) -> None:
        """A completed trial's files, its final metrics and, when `record.log_model`, its
        model (`record` is a `run_contents.CompletedTrial`)."""
        from ..runs import write_trial_artifacts

        me = self._live(run)
        if me is None:
            return
        with tempfile.TemporaryDirectory(prefix="tunetrack-trial-") as tmp:
            write_trial_artifacts(Path(tmp), record)
            self._upload(me, Path(tmp))
        tags, model_id = {T.STOP_REASON: record.stop_reason}, None
        if record.log_model:
            from ..registry import FORMAT_TAG, log_pytorch_model, raw_scale

            model_id, fmt = log_pytorch_model(
                client_for(me.study.uri), run_id=me.run_id,
                experiment_id=me.study.experiment_id, model=record.model,
                example=record.images, metadata={
                    "classes": list(record.classes), "input_shape": list(record.input_shape),
                    "raw_scale": raw_scale(me.data),
                    "data_fingerprint": record.data_fingerprint, "study": me.study.name,
                    "trial": me.number, "run_id": me.run_id},
                tags={T.STUDY: me.study.name, T.TRIAL: str(me.number)})
            tags.update({T.MODEL_ID: model_id, FORMAT_TAG: fmt})
        stamp = int(time.time() * 1000)  # final metrics carry the model's id: they show
        self.metrics(run, [(k, v, stamp, 0) for k, v in record.values.items()],  # on its page
                     tags=tags, model_id=model_id)

    def end(self, run: int, state: str, reason: str) -> None:
        """Tag the Optuna state and reason, stop the system metrics, end the run."""
        me = self._runs.pop(run, None)
        self._slow_runs.discard(run)
        if me is None or me.run_id is None:
            return  # never created; that failure was reported
        if me.monitor is not None:
            try:
                me.monitor.finish()
            except Exception as exc:  # never keep the run from ending
                _log.warning("system metrics of run %s: %s", me.run_id, exc)
        if me.study.uri in self._full:  # FAILED: its record is incomplete
            why = "MLflow store full: the run's record is incomplete" + (
                f"; {reason}" if reason else "")
            self.end_failed(me.study, me.run_id, f"trial {me.number}",
                            {T.OPTUNA_STATE: state, T.OPTUNA_REASON: T.clip(why)})
            return
        self._answering(me.study.uri)
        end_run(client_for(me.study.uri), me.run_id, state, reason)

    def finish_study(self, study: str, trials: list, directions: list[str],
                     drawing: bool = False, status: str = "FINISHED") -> None:
        """Plots, trials.csv, best params and report.html on the parent run, which then
        ends `status` (FINISHED; KILLED for a study stopped by a signal) unless trials of
        the study still run (other workers): the last one to finish leaves the final
        picture. Runs left RUNNING by dead workers are ended first. Drawn here on the slow
        lane, after the last trial's own files."""
        from ..pictures import log_study_summary, study_copy, write_study_artifacts

        state = self._studies.get(study)
        if state is None or state.parent_run_id is None:
            return  # (an answer the drawer gives meanwhile is read by its next request)
        if state.uri in self._full:
            return  # its parent run was ended FAILED when the disk filled up
        copy = study_copy(state.name, trials, directions)
        folder = Path(tempfile.mkdtemp(prefix="tunetrack-study-"))
        client = client_for(state.uri)

        def meanwhile(drawn: Any) -> None:  # while the drawer process still draws
            self._answering(state.uri)
            end_orphans(client, state.experiment_id, state.parent_run_id, trials)
            _report_into(copy, folder, state.uri, drawn)

        drawn = write_study_artifacts(copy, folder, self._drawer, drawing=drawing,
                                      meanwhile=meanwhile)
        log_study_summary(client, state.parent_run_id, state.name, trials, directions,
                          folder, drawn.skipped, status=status)



def _log_inputs(client: Any, run_id: str, inputs: list) -> None:
    """`log_inputs`, once more after a lost race: MLflow's store looks a dataset up and then
    inserts it, so when two workers' first trials log the same dataset at once the slower
    insert fails on the datasets table's unique key; the dataset exists by then, and a
    second call links it. (Counted as a store failure, the race marked the store down and
    that worker's next trials ran without runs.)"""
    from mlflow.exceptions import MlflowException

    try:
        client.log_inputs(run_id, datasets=inputs)
    except MlflowException as exc:
        if "unique constraint" not in str(exc).lower():
            raise
        client.log_inputs(run_id, datasets=inputs)


def _report_into(study: Any, folder: Path, tracking_uri: str, drawn: Any) -> None:
    """`report.html` (what `tunetrack report` writes, with the plots just `drawn`) into
    `folder`, for the parent run; a report that cannot be made is logged and left out,
    never fails the study."""
    from ..reading import write_report

    try:
        write_report(study, folder / "report.html", tracking_uri=tracking_uri, drawn=drawn)
    except Exception as exc:
        _log.warning("report.html not logged to the parent run: %s", first_line(exc))


def end_orphans(client: Any, experiment_id: str, parent_run_id: str, trials: list
                ) -> list[str]:
    """End child runs still RUNNING although Optuna has finished their trial (a worker
    died between Optuna recording the trial's end and the run's end). Trials Optuna still
    runs are not touched. Returns the run ids ended."""
    runs = client.search_runs([experiment_id], filter_string=(
        f"tags.`{T.PARENT_RUN_ID}` = '{parent_run_id}' and attributes.status = 'RUNNING'"),
        max_results=5000)
    by_number = {t.number: t for t in trials}
    ended = []
    for run in runs:
        number = run.data.tags.get(T.OPTUNA_TRIAL, "")
        trial = by_number.get(int(number)) if number.isdigit() else None
        if trial is None or not trial.state.is_finished():
            continue
        state = trial.state.name if trial.state.name in T.RUN_STATUS else "FAIL"
        end_run(client, run.info.run_id, state, f"run left RUNNING by a worker that stopped; "
                                                f"Optuna state {trial.state.name}")
        ended.append(run.info.run_id)
    return ended

