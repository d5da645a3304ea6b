"""The guarantees kept for the user's own code: each trial's MLflow run records which code
it ran (import path, file, sha256, package, the folder it came from), `tunetrack
reproduce` rebuilds from that folder and refuses code that changed, went missing or had no
import path, and `validate` calls the user's dataset once and checks what it returns."""

from __future__ import annotations

import hashlib
import sys

import optuna
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from tunetrack.search.cli import app
from tunetrack.search.reproduce import REPRODUCES
from tunetrack.tracking import tags as T
from tunetrack.tracking.runs import code_records

from .own_code import own_study, write_own_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
runner = CliRunner()


def _trial_runs(uri: str, experiment: str):
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([found.experiment_id])
            if r.data.tags.get(T.ROLE) == T.ROLE_TRIAL]


def _artifacts(uri: str, run_id: str) -> set[str]:
    return {a.path for a in MlflowClient(uri).list_artifacts(run_id)}


def test_trial_run_records_the_user_code_and_reproduce_rebuilds_it(tmp_path, uri, monkeypatch):
    module = "acme_provenance"
    folder = tmp_path / "code"
    study = write_own_study(folder, module, tracking={"enabled": True, "log_models": "best"})
    source = folder / f"{module}.py"
    original = source.read_text()
    out = runner.invoke(app, ["run", str(study), "--no-progress", "--tracking-uri", uri,
                              "--storage", f"sqlite:///{tmp_path}/tunetrack.db"])
    assert out.exit_code == 0, out.output

    [run] = _trial_runs(uri, module)
    tags, params = run.data.tags, run.data.params
    assert {"model.init_args.hidden", "model.init_args.blocks", "train.lr"} <= set(params)
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    for role, name in (("model", "WideNet"), ("dataset", "scans"),
                       ("metric", "recall_at_top2")):
        assert tags[f"tunetrack.code.{role}"] == f"{module}.{name}"
        assert tags[f"tunetrack.code.{role}.file"] == str(source.resolve())
        assert tags[f"tunetrack.code.{role}.sha256"] == sha
        assert tags[f"tunetrack.code.{role}.folder"] == str(folder.resolve())
        assert f"tunetrack.code.{role}.package" not in tags  # a loose file, no package
    # the helper process read the completed trial (its model is of the user's class)
    assert {"confusion_matrix.csv", "curves.png"} <= _artifacts(uri, run.info.run_id)
    assert T.MODEL_ID in tags
    assert code_records(tags)["model"] == {
        "import_path": f"{module}.WideNet", "file": str(source.resolve()), "sha256": sha,
        "package": None, "version": None, "folder": str(folder.resolve())}

    # another process, elsewhere: the module is found only through the recorded folder
    monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(folder.resolve())])
    again = runner.invoke(app, ["reproduce", run.info.run_id, "--tracking-uri", uri])
    assert again.exit_code == 0, again.output
    assert (f"user code as recorded (sha256): model {module}.WideNet, dataset {module}.scans, "
            f"metric {module}.recall_at_top2") in again.output
    assert "validation history: bit-exact (3 epochs" in again.output
    assert str(folder.resolve()) not in sys.path  # put back only while reproducing

    # the same file elsewhere (another machine, a folder mounted at another path): found
    # on sys.path by its import path, and its content is the run's
    moved = tmp_path / "elsewhere"
    folder.rename(moved)
    monkeypatch.delitem(sys.modules, module)
    monkeypatch.syspath_prepend(str(moved))
    there = runner.invoke(app, ["reproduce", run.info.run_id, "--tracking-uri", uri,
                                "--no-log"])
    assert there.exit_code == 0, there.output
    assert sys.modules[module].__file__ == str(moved / f"{module}.py")
    (moved / f"{module}.py").write_text(original + "\n# tuned\n")
    monkeypatch.delitem(sys.modules, module)
    other = runner.invoke(app, ["reproduce", run.info.run_id, "--tracking-uri", uri])
    assert other.exit_code == 2 and other.output.count("\n") == 1, other.output
    assert f"{source.resolve()} (the code of {module}." in other.output  # the run's file
    assert "no longer exists" in other.output
    moved.rename(folder)
    source.write_text(original)

    source.write_text(source.read_text().replace("hidden=64", "hidden=65"))
    changed = runner.invoke(app, ["reproduce", run.info.run_id, "--tracking-uri", uri])
    assert changed.exit_code == 2
    assert changed.output.count("\n") == 1, changed.output  # one line, no traceback
    assert f"{source.resolve()} changed since the run (the code of {module}." \
        in changed.output

    source.unlink()
    gone = runner.invoke(app, ["reproduce", run.info.run_id, "--tracking-uri", uri])
    assert gone.exit_code == 2 and gone.output.count("\n") == 1
    assert f"{source.resolve()} (the code of {module}." in gone.output
    assert "no longer exists" in gone.output

    client = MlflowClient(uri)
    logged = client.search_runs([run.info.experiment_id],
                                f"tags.`{REPRODUCES}` = '{run.info.run_id}'")
    assert len(logged) == 1  # the refusals logged nothing


def test_an_object_without_import_path_cannot_be_reproduced(tmp_path, uri, monkeypatch):
    from tunetrack.search.runner import run_study

    module = "acme_local_dataset"
    write_own_study(tmp_path / "code", module)
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    from acme_local_dataset import WideNet  # written by the test

    class NotebookNet(WideNet):  # defined in a function: no import path reaches it
        pass

    spec = own_study(module, tracking={"enabled": True, "log_models": "none"})
    spec["model"] = {}  # the object passed below is the network, with its defaults
    study = run_study(spec, model=NotebookNet, tracking_uri=uri,
                      storage=f"sqlite:///{tmp_path}/tunetrack.db")
    run_id = study.trials[0].user_attrs[T.ATTR_RUN_ID]
    tags = MlflowClient(uri).get_run(run_id).data.tags
    assert tags["tunetrack.code.model"].startswith("<local>.")
    assert "tunetrack.code.model.file" not in tags

    out = runner.invoke(app, ["reproduce", run_id, "--tracking-uri", uri])
    assert out.exit_code == 2 and out.output.count("\n") == 1, out.output
    assert "passed to run_study as a Python object without an import path: it cannot be " \
           "rebuilt" in out.output


BAD_DATASETS = {
    "a number": ("def scans(n=600, seed=0):\n    return 42\n",
                 "dataset.class_path {m}.scans: returned a int, not a torch Dataset (with "
                 "__getitem__ and __len__) or a mapping {{train, val, test}} of them"),
    "two splits": ("import torch\n\ndef scans(n=600, seed=0):\n"
                   "    d = torch.utils.data.TensorDataset(torch.zeros(4, 1, 2, 2), "
                   "torch.zeros(4, dtype=torch.long))\n"
                   "    return {'train': d, 'val': d}\n",
                   "dataset.class_path {m}.scans: the mapping it returns must have exactly "
                   "the keys train, val, test but has ['train', 'val']"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATASETS))
def test_validate_calls_the_dataset_and_refuses_what_it_returns(workdir, case):
    module = f"acme_bad_dataset_{case.replace(' ', '_')}"
    body, message = BAD_DATASETS[case]
    study = write_own_study(workdir / "code", module)
    with (workdir / "code" / f"{module}.py").open("a") as handle:
        handle.write("\n\n" + body)  # the later `scans` replaces the good one
    out = runner.invoke(app, ["validate", str(study)])
    assert out.exit_code == 2
    assert out.output == f"{study}: {message.format(m=module)}\n"
    assert sorted(p.name for p in workdir.iterdir()) == ["code"]  # nothing written


def test_validate_passes_a_dataset_that_returns_a_dataset(workdir):
    study = write_own_study(workdir / "code", "acme_good_dataset")
    out = runner.invoke(app, ["validate", str(study), "-f", "json"])
    assert out.exit_code == 0, out.output
    assert '"parameter": "model.init_args.hidden"' in out.output


def _host_without(workdir, module: str, *, source: str | None):
    """A study file as a worker host sees it: its module missing (`source` None) or
    importing a package this host lacks."""
    study = write_own_study(workdir / "code", module,
                            tracking={"enabled": True, "log_models": "none"})
    if source is None:
        (workdir / "code" / f"{module}.py").unlink()
    else:
        (workdir / "code" / f"{module}.py").write_text(source)
    return study


@pytest.mark.parametrize(("command", "source", "message"), [
    (["worker"], None, "model.class_path: cannot import '{m}.WideNet': "
                       "ModuleNotFoundError: No module named '{m}'"),
    (["run", "--workers", "2"], None, "model.class_path: cannot import '{m}.WideNet': "
                                      "ModuleNotFoundError: No module named '{m}'"),
    (["worker"], "import acme_gpu_kernels\n",
     "model.class_path: cannot import '{m}.WideNet': ModuleNotFoundError: No module named "
     "'acme_gpu_kernels'"),
])
def test_workers_check_the_user_code_before_anything_is_written(workdir, command, source,
                                                                  message):
    module = f"acme_absent_{len(command)}_{source is None}"
    study = _host_without(workdir, module, source=source)
    out = runner.invoke(app, [*command, str(study)])
    assert out.exit_code == 2
    assert out.output.count("\n") == 1, out.output  # one line, every problem on it
    assert out.output.startswith(f"error: {study}: ")
    assert message.format(m=module) in out.output
    assert sorted(p.name for p in workdir.iterdir()) == ["code"]  # no study, no MLflow run


@pytest.mark.slow  # two worker processes, each importing torch and MLflow
def test_every_worker_imports_the_code_beside_the_study_file_and_records_it(workdir):
    module = "acme_two_workers"
    study = write_own_study(workdir / "code", module, n_trials=2,
                            tracking={"enabled": True, "log_models": "none"})
    uri = f"sqlite:///{workdir}/mlflow.db"
    out = runner.invoke(app, ["run", str(study), "--workers", "2", "--no-progress",
                              "--tracking-uri", uri])
    assert out.exit_code == 0, out.output
    runs = _trial_runs(uri, module)
    assert len(runs) == 2
    assert all("confusion_matrix.csv" in _artifacts(uri, r.info.run_id) for r in runs)
    source = str((workdir / "code" / f"{module}.py").resolve())
    assert {r.data.tags["tunetrack.code.model.file"] for r in runs} == {source}
    assert {r.data.tags["tunetrack.code.model.folder"] for r in runs} == {
        str((workdir / "code").resolve())}


def test_a_module_is_hashed_as_first_imported_and_an_installed_one_names_its_package(
        tmp_path, monkeypatch):
    import importlib

    from tunetrack.tracking.runs import code_folders, code_tags

    module = "acme_hashed_once"
    write_own_study(tmp_path, module)
    monkeypatch.syspath_prepend(str(tmp_path))
    source = tmp_path / f"{module}.py"
    importlib.import_module(module)
    first = code_tags({"model": f"{module}.WideNet"})
    assert first["tunetrack.code.model.sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()

    source.write_text(source.read_text() + "\n# edited while the study runs\n")
    assert code_tags({"model": f"{module}.WideNet"}) == first  # what runs is the first import
    monkeypatch.delitem(sys.modules, module)
    importlib.import_module(module)  # imported anew: hashed anew
    again = code_tags({"model": f"{module}.WideNet"})
    assert again["tunetrack.code.model.sha256"] == \
        hashlib.sha256(source.read_bytes()).hexdigest() != first["tunetrack.code.model.sha256"]

    installed = code_tags({"metric": "optuna.samplers.TPESampler"})
    assert installed["tunetrack.code.metric.package"] == "optuna"
    assert installed["tunetrack.code.metric.version"] == optuna.__version__
    records = code_records({**again, **installed})
    assert code_folders(records) == [str(tmp_path.resolve())]  # site-packages stays put
