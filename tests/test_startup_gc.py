"""`tunetrack` starts with the cyclic garbage collector off and turns it back on."""

from __future__ import annotations

import gc

import pytest

from tunetrack.search import startup_gc


@pytest.fixture()
def collector():
    was = gc.isenabled()
    yield
    startup_gc._paused = False
    gc.unfreeze()
    (gc.enable if was else gc.disable)()


def test_pause_then_resume_turns_the_collector_back_on_and_freezes(collector):
    gc.enable()
    startup_gc.pause()
    assert not gc.isenabled()
    startup_gc.resume()
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0
    startup_gc.resume()  # twice: nothing more
    assert gc.isenabled()


def test_a_collector_the_user_switched_off_stays_off(collector):
    gc.disable()
    startup_gc.pause()
    startup_gc.resume()
    assert not gc.isenabled()


def test_a_study_trains_with_the_collector_back_on(collector, tmp_path, monkeypatch):
    from tests.studyfiles import write_study
    from tunetrack.models import Trainer
    from tunetrack.search import run_study

    gc.enable()
    startup_gc.pause()
    states = []
    spec = write_study(tmp_path, n_trials=2, max_epochs=1)
    real_fit = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self: states.append(gc.isenabled())
                        or real_fit(self))
    run_study(spec, storage=f"sqlite:///{tmp_path}/s.db")
    assert states == [True, True]  # on from the first trial's first epoch
