"""`cxp worker` as a real subprocess (runtime.local.worker), for tests."""
from runtime.local.worker import WorkerProcess, worker_env

__all__ = ["WorkerProcess", "worker_env"]
