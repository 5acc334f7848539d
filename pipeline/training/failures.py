"""Which failures of a Ray Train run are retried, and the one line a user is shown for one.

Ray Train restarts the whole worker group after any worker error, `checkpoint.max_failures`
times. That is right for faults that pass (a worker or node that died, storage that was away
for a while) and wrong for an error the same input makes again: a damaged shard, a config the
dataset contradicts, a checkpoint that does not fit the model, storage that refuses our
credentials. Each retry of those costs a worker-group start and prints the same traceback
again. `TorchTrainer` (a drop-in for Ray's) ends the run at the first such error, and
`root_cause` reduces Ray's `WorkerGroupError` (a traceback snippet per worker) to the worker's
own message, which names the input.

Ray Train V2 has no public hook for this: the failure policy is chosen by its controller from
`FailureConfig` alone, so `TorchTrainer` hands the controller a subclass of Ray's default
policy (`InputFailurePolicy`) through the one method that creates the controller.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.train import ControllerError, WorkerGroupError
from ray.train.torch import TorchTrainer as _RayTorchTrainer
from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy

from pipeline.training.errors import DETERMINISTIC

logger = logging.getLogger(__name__)


def worker_errors(error: BaseException) -> list[BaseException]:
    """The workers' own exceptions inside a Ray Train error (by rank), else `[error]`."""
    if isinstance(error, ControllerError):
        return [error.controller_failure]
    if isinstance(error, WorkerGroupError):
        found = [error.worker_failures[r] for r in sorted(error.worker_failures)]
        # Ray wraps a worker's exception with its traceback text (UserExceptionWithTraceback)
        return [getattr(e, "_base_exc", e) for e in found]
    return [error]


def deterministic(error: BaseException) -> BaseException | None:
    """The first worker error of `error` that retrying cannot fix, or None. One is enough: when
    one rank stops on bad input, the others fail as collateral (a collective cut short)."""
    return next((e for e in worker_errors(error) if isinstance(e, DETERMINISTIC)), None)


def root_cause(error: BaseException) -> str:
    """One line for a failed run: `Type: message` of the worker error that matters most (the
    deterministic one if any), the message cut at its first line."""
    cause = deterministic(error) or worker_errors(error)[0]
    first = (str(cause).strip().splitlines() or [""])[0]
    return f"{type(cause).__name__}: {first}"


class InputFailurePolicy(DefaultFailurePolicy):
    """Ray's default policy, except that a worker group failing on a `DETERMINISTIC` error is
    not retried, and that decision is logged as one line instead of a traceback."""

    def _is_retryable_error(self, training_failed_error: Any) -> bool:
        if deterministic(training_failed_error) is not None:
            return False
        return super()._is_retryable_error(training_failed_error)

    def _log_decision(self, decision: Any, training_failed_error: Any, *args: Any) -> None:
        if deterministic(training_failed_error) is None:
            return super()._log_decision(decision, training_failed_error, *args)
        logger.info(
            f"[FailurePolicy] {decision.value}, not retried (the same input fails the same "
            f"way): {root_cause(training_failed_error)}"
        )


class TorchTrainer(_RayTorchTrainer):
    """`ray.train.torch.TorchTrainer` whose controller uses `InputFailurePolicy`."""

    def _initialize_and_run_controller(self, **controller_init_kwargs: Any) -> Any:
        import ray.train

        failure_config = self.run_config.failure_config or ray.train.FailureConfig()
        controller_init_kwargs["failure_policy"] = InputFailurePolicy(failure_config)
        return super()._initialize_and_run_controller(**controller_init_kwargs)
