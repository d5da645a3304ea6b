"""Cost per trial: the meter, the recorded metrics, cost as an objective, cost to target."""

from __future__ import annotations

import sys
import time

import optuna
import pytest
import torch
from typer.testing import CliRunner

from tunetrack.models import TunetrackError
from tunetrack.models.cost import CostMeter
from tunetrack.search import run_study
from tunetrack.search.cli import app
from tunetrack.search.study_file import parse_study
from tunetrack.tracking import write_report
from tunetrack.tracking.reading import cost_per_trial, cost_to_target

from .studyfiles import tiny_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
COST_KEYS = {"cost_wall_seconds", "cost_device_seconds", "cost_cpu_seconds",
             "cost_peak_memory_mb"}


def test_meter_counts_device_blocks_cpu_and_this_trials_peak():
    meter = CostMeter(torch.device("cpu")).start()
    with meter.on_device():
        time.sleep(0.05)  # device time, no CPU time
    with meter.on_device():
        block = torch.ones(50 * 1024 * 1024 // 4)  # 50 MB touched
        block += 1
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # CPU time, not device time
        pass
    cost = meter.stop()
    assert cost.device_seconds >= 0.05
    assert cost.wall_seconds >= cost.device_seconds + 0.04
    assert cost.cpu_seconds >= 0.05
    assert meter.stop() is cost  # stop is idempotent
    metrics = cost.metrics()
    assert set(metrics) == COST_KEYS  # on CPU: no device memory, no energy (absent, not 0)
    if sys.platform.startswith("linux"):
        del block
        later = CostMeter(torch.device("cpu")).start().stop()
        # the peak window restarts per meter: the 50 MB block belongs to the first only
        assert cost.peak_memory_mb - later.peak_memory_mb >= 40, (cost, later)


def test_cost_to_target_hand_computed():
    study = optuna.create_study(direction="maximize")
    for value, device_s, state in [(0.50, 2.0, "COMPLETE"), (0.30, 1.0, "PRUNED"),
                                   (0.90, 4.0, "COMPLETE"), (0.95, 3.0, "COMPLETE"),
                                   (0.99, 5.0, "COMPLETE"), (1.00, 6.0, "COMPLETE")]:
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState[state],
            value=value if state == "COMPLETE" else None,
            intermediate_values={0: value} if state == "PRUNED" else {},
            user_attrs={"cost_device_seconds": device_s}))
    frame = cost_to_target(study)
    # best 1.00: 90 % reached by trial 2 (0.90) after 2 + 1 + 4 = 7 s; 95 % by trial 3
    # (10 s), 99 % by trial 4 (15 s), 100 % by trial 5 (21 s, all of it)
    assert frame["trial"].tolist() == [2, 3, 4, 5]
    assert frame["trials_finished"].tolist() == [3, 4, 5, 6]
    assert frame["device_seconds"].tolist() == [7.0, 10.0, 15.0, 21.0]
    assert frame["share_of_total"].tolist() == pytest.approx([7 / 21, 10 / 21, 15 / 21, 1])
    assert frame["target_value"].tolist() == pytest.approx([0.9, 0.95, 0.99, 1.0])

    lower = optuna.create_study(direction="minimize")  # val_loss: within best / f
    for value in (0.4, 0.105, 0.1):
        lower.add_trial(optuna.trial.create_trial(
            value=value, user_attrs={"cost_device_seconds": 1.0}))
    assert cost_to_target(lower)["trial"].tolist() == [1, 1, 2, 2]  # 0.105 <= 0.1/0.95
    assert cost_to_target(optuna.create_study()).empty


def test_every_trial_records_cost_and_cost_can_be_an_objective(tmp_path):
    raw = tiny_study("cost-pareto", n_trials=4, max_epochs=2, search={
        "objectives": [{"metric": "val_accuracy"}, {"metric": "cost_device_seconds"}],
        "sampler": "nsga2", "n_trials": 4})
    spec = parse_study(raw)
    assert [o.resolved_direction for o in spec.search.objective_list] == ["maximize",
                                                                          "minimize"]
    study = run_study(spec, storage=f"sqlite:///{tmp_path}/o.db", device="cpu")
    assert type(study.sampler).__name__ == "NSGAIISampler"
    assert len(study.trials) == 4
    for trial in study.trials:
        assert trial.state.name == "COMPLETE"
        assert set(trial.user_attrs) >= COST_KEYS
        assert "cost_energy_joules" not in trial.user_attrs  # CPU: absent, not 0
        # the objective is the recorded device time: training + test evaluation
        assert trial.values[1] == trial.user_attrs["cost_device_seconds"] > 0
        assert trial.user_attrs["cost_wall_seconds"] >= trial.values[1]
    per_trial = cost_per_trial(study)
    assert per_trial["cumulative_device_seconds"].iloc[-1] == pytest.approx(
        sum(t.values[1] for t in study.trials))


def test_cost_only_objective_is_refused():
    with pytest.raises(TunetrackError,
                       match=r"search\.metric must be .* but got 'cost_device_seconds'"):
        parse_study(tiny_study("c", search={"metric": "cost_device_seconds"}))


def test_report_and_compare_show_cost_to_target(tmp_path):
    storage = f"sqlite:///{tmp_path}/o.db"
    study = run_study(parse_study(tiny_study("cost-report", n_trials=4, max_epochs=2)),
                      storage=storage, device="cpu")
    summary = write_report(study, tmp_path / "report.html")
    page = summary.path.read_text()
    assert 'id="cost"' in page and "Cost to target" in page
    assert 'class="dataframe cost-to-target"' in page and "90% of best" in page
    cost = page.split('id="cost"')[1].split("</section>")[0]
    expected = cost_to_target(study)
    assert len(expected) == 4
    assert 'id="plot-cost"' in cost and "Plotly.newPlot" in cost  # an interactive plot
    first = expected.iloc[0]  # each target is a dashed line named in the plot
    assert f"{first['target']}: {first['device_seconds']:.1f} s" in cost
    assert f"{expected['device_seconds'].iloc[0]:.4g}" in page

    out = CliRunner().invoke(app, ["compare", "cost-report", "--storage", storage],
                             env={"COLUMNS": "250"})
    assert out.exit_code == 0, out.output
    top = out.output.split("cost to target")[0]
    assert "device s" in top  # the trials' cost_device_seconds, a column of the top table
    assert "cost to target" in out.output and "99% of best" in out.output
    assert f"{expected['device_seconds'].iloc[-1]:.2f}" in out.output


class _FakeNvml:
    """Stands in for pynvml: an energy counter in mJ that advances per read."""

    class NVMLError(Exception):
        pass

    def __init__(self, readings, fail=False):
        self.readings, self.fail = list(readings), fail

    def nvmlInit(self):
        if self.fail:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return self.readings.pop(0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("fake", "energy"), [
    (_FakeNvml([1_000, 4_500]), 3.5),  # mJ counter -> J over the trial
    (_FakeNvml([], fail=True), None),  # no NVML: absent, not 0
])
def test_cuda_cost_has_this_trials_device_memory_and_nvml_energy(monkeypatch, fake, energy):
    """On a real GPU (only NVML's energy counter is a fake, with known readings): the peak
    device memory is this trial's own, and kernels still queued when a block's Python code
    returns count as its device time."""
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    device = torch.device("cuda", 0)
    mib = 2**20
    earlier = torch.ones(64 * mib, dtype=torch.uint8, device=device)  # a trial before
    del earlier
    before = torch.cuda.memory_allocated(device)
    meter = CostMeter(device).start()
    with meter.on_device():
        block = torch.ones(32 * mib, dtype=torch.uint8, device=device)
        torch.cuda._sleep(100_000_000)  # 1e8 GPU cycles: >= 0.04 s at any clock <= 2.5 GHz
    cost = meter.stop()
    assert block.nbytes == 32 * mib
    assert cost.peak_device_memory_mb == (before + 32 * mib) / mib  # not the earlier 64 MiB
    assert cost.device_seconds >= 100_000_000 / 2.5e9
    assert cost.wall_seconds >= cost.device_seconds
    assert cost.energy_joules == energy
    assert ("cost_energy_joules" in cost.metrics()) == (energy is not None)
    assert cost.metrics()["cost_peak_device_memory_mb"] == cost.peak_device_memory_mb
