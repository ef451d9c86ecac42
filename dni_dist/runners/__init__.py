"""Runners: the debug runner (one process), torchrun (one worker per process) and Ray (actors)."""
