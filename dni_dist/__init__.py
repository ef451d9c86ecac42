"""dni_dist: synthetic gradients (Decoupled Neural Interfaces) for recurrent networks, from one
process to many.

References:
    Jaderberg et al. 2017, "Decoupled Neural Interfaces using Synthetic Gradients", arXiv 1608.05343.
"""
from .chunk import ChunkResult, chunk_step
from .config import Config, ConfigError
from .diagnostics import alignment
from .fit import ConfigWarning, Result, fit
from .model import SeqModel
from .spec import Spec, load_spec
from .synthesizer import SynthOptions, Synthesizer

__version__ = "0.2.0"
__all__ = ["Synthesizer", "SynthOptions", "Spec", "Config", "ConfigError", "ConfigWarning", "fit", "Result", "load_spec", "SeqModel", "chunk_step",
           "ChunkResult", "alignment", "__version__"]
