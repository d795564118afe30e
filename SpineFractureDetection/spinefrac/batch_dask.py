"""Batch cases on Dask (``pip install "spinefrac[cohort]"``): a local cluster of worker processes
(``spinefrac batch --workers N``) or an existing one (``--scheduler tcp://host:8786``, e.g. started by
dask-jobqueue on SLURM). One case per task, each a call of the batch's own per-case function, so every
case is written atomically exactly as in a batch on one process; the workers must see the input and output
folders at the same paths (a shared filesystem) and import the same spinefrac.

A task that raises (an internal error, out of memory, its worker died) is retried once on a worker
(Dask's ``retries=1``); a case refused for its input (SpineFracError) is deterministic and reported at once.
"""

from __future__ import annotations

import logging
import signal
import warnings
from collections.abc import Callable, Iterator

from spinefrac.errors import InputError

CONNECT_TIMEOUT_S = 5  # a scheduler that does not answer within this is refused, before anything is written
CASE_RETRIES = 1


def dask_missing_message(option: str) -> str:
    return (f"{option} runs the batch on Dask, which is not installed: pip install \"spinefrac[cohort]\" "
            "(or \"dask[distributed]\"), or leave the option out to run the cases one after another")


class DaskCases:
    """A Dask client, on a local cluster of ``workers`` processes or connected to ``scheduler``."""

    def __init__(self, workers: int | None = None, scheduler: str | None = None):
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise InputError(dask_missing_message("--scheduler" if scheduler else "--workers")) from None
        self.cluster = None
        if scheduler:
            try:
                self.client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError, ValueError) as error:
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise InputError(f"Dask scheduler {scheduler} does not answer within {CONNECT_TIMEOUT_S} s "
                                 f"({reason}); check the address (tcp://HOST:PORT) and that the cluster runs") from None
        else:
            # Ctrl-C reaches the whole process group: the workers, started ignoring SIGINT, leave it to this
            # process, which cancels their cases and closes the cluster (no traceback from every worker).
            ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)
            # A port taken by another program is Dask's business: it takes another, and says so on stderr,
            # where a batch's lines are read.
            warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
            try:
                self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                            dashboard_address=None, silence_logs=logging.CRITICAL)
            finally:
                signal.signal(signal.SIGINT, ignored)
            self.client = Client(self.cluster)

    def run(self, cases: list, task: Callable, failed: Callable) -> Iterator:
        """The outcome of ``task(case)`` for every case, in the order they finish; a task that raises twice
        gives ``failed(case, error)``. Stopped early (Ctrl-C), the cases not yet finished are cancelled."""
        from distributed import as_completed

        futures = {self.client.submit(task, case, key=f"spinefrac-case-{index}-{case.name}", retries=CASE_RETRIES,
                                      pure=False): case for index, case in enumerate(cases)}
        try:
            for future in as_completed(futures):
                case = futures[future]
                if future.status == "finished":
                    yield future.result()
                elif future.status == "cancelled":  # the scheduler dropped it (e.g. it restarted)
                    yield failed(case, RuntimeError("cancelled by the Dask scheduler"))
                else:
                    yield failed(case, future.exception())
        finally:
            self.client.cancel([f for f in futures if not f.done()])

    def close(self) -> None:
        """Disconnect; a local cluster's workers are ended (a case being written is left as a partial folder,
        which the next run into the output folder removes). Closing twice is harmless."""
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
