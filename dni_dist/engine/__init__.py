"""The pipelined decoupled engine: a schedule (data), a worker (one replica's chunks), no transport code."""
from .schedule import Action, Schedule
from .worker import Worker

__all__ = ["Action", "Schedule", "Worker"]
