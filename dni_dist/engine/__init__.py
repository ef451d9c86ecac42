"""The pipelined decoupled engine: a schedule (data), a worker (one replica's chunks), no transport code.

Only the schedule is gathered here: it imports nothing of dni_dist, so a check on a configuration
(``chunks divisible by workers``) can ask it without importing the worker. The worker is
``dni_dist.engine.worker.Worker``.
"""
from .schedule import Action, Schedule

__all__ = ["Action", "Schedule"]
