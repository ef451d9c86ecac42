"""Import the standard library's ``copy`` before anything else does.

``examples/copy.py`` (the copy-task benchmark) shares its name with the standard-library module
that torch imports; a script run from this folder has the folder first on ``sys.path``, so
without this line torch would import the benchmark instead. Every example imports this first.
"""
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
_saved = list(sys.path)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
import copy  # noqa: E402,F401  (the standard library's)

sys.path[:] = _saved
