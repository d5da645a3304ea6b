"""The background writer: merging, ordering, errors, timeouts and fork-safety."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest
from mlflow.entities import Metric, Param, RunTag

from tunetrack.tracking.background import BatchQueue


class FakeClient:
    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.calls: list[tuple] = []
        self.delay, self.fail = delay, fail
        self.lock = threading.Lock()

    def log_batch(self, run_id, metrics=(), params=(), tags=(), synchronous=True):
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("store is down")
        with self.lock:
            self.calls.append(("batch", run_id, list(metrics), list(params), list(tags)))

    def set_terminated(self, run_id, status):
        with self.lock:
            self.calls.append(("end", run_id, status))


def metric(step: int) -> Metric:
    return Metric("val_loss", 1.0 / (step + 1), 0, step)


def test_batches_are_merged_and_the_run_ends_after_its_data():
    queue, client = BatchQueue(), FakeClient(delay=0.05)
    for step in range(20):
        queue.submit(client, "r1", metrics=[metric(step)])
    queue.submit(client, "r1", params=[Param("lr", "0.1")], tags=[RunTag("a", "1")],
                 terminate="FINISHED")
    queue.flush("r1", timeout=10)
    batches = [c for c in client.calls if c[0] == "batch"]
    assert len(batches) < 20  # merged while the first write was in flight
    assert sorted(m.step for b in batches for m in b[2]) == list(range(20))
    assert client.calls[-1] == ("end", "r1", "FINISHED")


def test_write_errors_surface_on_flush_and_the_run_still_ends():
    queue, client = BatchQueue(), FakeClient(fail=True)
    queue.submit(client, "r2", metrics=[metric(0)], terminate="FAILED")
    with pytest.raises(RuntimeError, match="store is down"):
        queue.flush("r2", timeout=10)
    assert client.calls == [("end", "r2", "FAILED")]


def test_flush_times_out_instead_of_hanging():
    queue, client = BatchQueue(), FakeClient(delay=2.0)
    queue.submit(client, "r3", metrics=[metric(0)])
    with pytest.raises(TimeoutError):
        queue.flush("r3", timeout=0.2)
    queue.flush("r3", timeout=10)


def _child(queue: BatchQueue, result) -> None:
    client = FakeClient()
    queue.submit(client, "child", metrics=[metric(1)])
    queue.flush("child", timeout=5)
    result.value = len(client.calls)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_a_forked_child_gets_a_working_queue():
    queue, client = BatchQueue(), FakeClient()
    queue.submit(client, "parent", metrics=[metric(0)])  # parent's worker thread is running
    queue.flush("parent", timeout=5)
    ctx = multiprocessing.get_context("fork")
    result = ctx.Value("i", -1)
    child = ctx.Process(target=_child, args=(queue, result))
    child.start()
    child.join(30)
    assert child.exitcode == 0 and result.value == 1
