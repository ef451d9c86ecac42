"""Testing aids: fault injection for the reliability tests (never used by a normal run)."""
from .faults import Faults, WorkerFailure

__all__ = ["Faults", "WorkerFailure"]
