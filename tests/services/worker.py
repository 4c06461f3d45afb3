"""`cxp worker` as a real subprocess (pipeline.local.worker), for tests."""
from pipeline.local.worker import WorkerProcess, worker_env

__all__ = ["WorkerProcess", "worker_env"]
