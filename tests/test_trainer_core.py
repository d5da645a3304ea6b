"""`EpochBook`, the between-epochs rules every trial follows, fused or not: improvement by
the monitor, patience and its restart after an LR drop, the non-finite stop, callbacks
before patience, the epoch budget, and which epoch's weights are kept."""

from __future__ import annotations

import math

import pytest

from tunetrack.models import EarlyStoppingConfig, TrainConfig
from tunetrack.models.trainer_core import EpochBook, EpochResult


def _run(book: EpochBook, epochs: list[tuple[float, float, float]]) -> list[int]:
    """Feed (lr, val_loss, val_accuracy) epochs until the book is done; the epochs whose
    weights were kept."""
    kept = []
    for epoch, (lr, val_loss, val_accuracy) in enumerate(epochs):
        book.begin_epoch(lr)
        res = EpochResult(epoch, train_loss=1.0, train_accuracy=0.5, val_loss=val_loss,
                          val_accuracy=val_accuracy, lr=lr, epoch_seconds=0.1)
        book.observe(res, lambda epoch=epoch: kept.append(epoch) or {"epoch": epoch})
        if book.done:
            break
        book.decide(res)
        if book.done:
            break
    return kept


def _book(patience=None, min_delta=0.0, monitor="val_loss", max_epochs=20, callbacks=()):
    stopping = EarlyStoppingConfig(patience=patience, min_delta=min_delta, monitor=monitor)
    return EpochBook(TrainConfig(max_epochs=max_epochs, early_stopping=stopping), callbacks)


def test_patience_counts_epochs_without_an_improvement_beyond_min_delta():
    book = _book(patience=2, min_delta=0.05)
    kept = _run(book, [(0.1, 1.0, 0), (0.1, 0.97, 0), (0.1, 0.90, 0), (0.1, 0.88, 0),
                       (0.1, 0.87, 0), (0.1, 0.1, 0)])
    assert kept == [0, 2]  # 0.97 and 0.88 are within min_delta of the best
    assert book.fit.stop_reason == "early_stopping" and book.fit.epochs_run == 5
    assert book.fit.best_epoch == 2 and book.best_state == {"epoch": 2}
    assert book.fit.message == "no val_loss improvement > 0.05 for 2 epochs"


def test_val_accuracy_is_better_when_higher():
    book = _book(patience=1, monitor="val_accuracy")
    _run(book, [(0.1, 0.5, 0.8), (0.1, 0.1, 0.7), (0.1, 0.1, 0.9)])
    assert book.fit.best_epoch == 0 and book.fit.stop_reason == "early_stopping"


@pytest.mark.parametrize(("next_lr", "restarted"), [(0.05, True), (0.051, False)])
def test_an_lr_drop_to_half_or_less_restarts_patience(next_lr, restarted):
    """Whatever scheduler made it (StepLR, ReduceLROnPlateau): the book reads only the
    epoch's LR."""
    book = _book(patience=2)
    _run(book, [(0.1, 1.0, 0), (0.1, 1.1, 0), (next_lr, 1.2, 0), (next_lr, 1.3, 0),
                (next_lr, 1.4, 0)])
    assert book.fit.epochs_run == (4 if restarted else 3)


def test_a_non_finite_loss_ends_the_trial_before_its_callbacks():
    calls = []

    class Spy:
        def on_epoch_end(self, result):
            calls.append(result.epoch)
            return False

    book = _book(callbacks=[Spy()])
    kept = _run(book, [(0.1, 1.0, 0), (0.1, math.nan, 0), (0.1, 0.5, 0)])
    assert book.fit.stop_reason == "non_finite" and book.fit.epochs_run == 2
    assert "non-finite loss at epoch 1" in book.fit.message and "lr=0.1" in book.fit.message
    assert calls == [0] and kept == [0]


def test_every_callback_runs_and_any_stops_it_before_patience_is_asked():
    class Say:
        def __init__(self, stop):
            self.stop, self.seen = stop, 0

        def on_epoch_end(self, result):
            self.seen += 1
            return self.stop

    first, second = Say(True), Say(False)
    book = _book(patience=1, callbacks=[first, second])
    _run(book, [(0.1, 1.0, 0), (0.1, 2.0, 0)])
    assert (first.seen, second.seen) == (1, 1)
    assert book.fit.stop_reason == "callback" and book.fit.epochs_run == 1


def test_the_epoch_budget_ends_it_as_max_epochs():
    book = _book(max_epochs=3)
    _run(book, [(0.1, 1.0 - i / 10, 0) for i in range(10)])
    assert book.fit.epochs_run == 3 and book.fit.stop_reason == "max_epochs"
    assert book.done and book.fit.best_epoch == 2
