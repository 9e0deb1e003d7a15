"""The cause of a failed run in one line: Ray's own exceptions, as Ray raises them, classified."""

from __future__ import annotations

from ray.data._internal.util import _annotate_exception_with_retry_context
from ray.data.exceptions import SystemException
from ray.exceptions import ActorDiedError, NodeDiedError, OutOfMemoryError, WorkerCrashedError

from jobs.errors import failure_cause, root_cause


def _raised_from_marker(exc: BaseException) -> BaseException:
    """As Ray Data raises an internal error: ``raise e from SystemException()``."""
    try:
        raise exc from SystemException()
    except BaseException as caught:  # noqa: BLE001
        return caught


def test_ray_datas_empty_marker_is_never_the_cause():
    exc = _raised_from_marker(OSError(28, "No space left on device"))
    assert root_cause(exc) == "OSError: [Errno 28] No space left on device"
    assert failure_cause(exc).startswith("the disk is full (OSError: [Errno 28] No space left on device)")


def test_workers_killed_for_memory_say_what_to_change():
    oom = OutOfMemoryError("Task was killed due to the node running low on memory.\nMemory on the node was 23 GB")
    line = failure_cause(_raised_from_marker(oom), deaths={"memory": 2})
    assert line.startswith("Ray killed 2 workers for lack of memory: lower --concurrency or --batch-size")
    assert "give the node more memory" in line
    # Without the count (the state API did not answer), the message still names the cause.
    assert failure_cause(oom).startswith("Ray killed workers for lack of memory")


def test_a_lost_node_and_a_killed_worker_are_named():
    assert failure_cause(NodeDiedError("The node with node id abc has been marked dead")).startswith(
        "a Ray node died or was removed")
    assert failure_cause(WorkerCrashedError()).startswith("a Ray worker was killed during the run")


def test_an_actor_that_failed_in_its_constructor_names_the_workers_error():
    died = ActorDiedError()
    died.error_msg = ("The actor died because of an error raised in its creation task, ray::MapWorker.__init__()\n"
                      "Traceback (most recent call last):\n  File \"stages.py\", line 90, in __init__\n"
                      "ImportError: cannot import name 'faces_table'\n")  # fmt: skip
    assert root_cause(died) == "ImportError: cannot import name 'faces_table'"


def test_ray_retry_hints_stay_out_of_the_line():
    exc = _annotate_exception_with_retry_context(
        PermissionError("Access Denied"), description="run the task", attempts=1, max_attempts=1,
        total_backoff_s=0.0, exception_str="Access Denied",
    )  # fmt: skip
    assert failure_cause(exc) == "PermissionError: Access Denied"
