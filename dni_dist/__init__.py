"""dni_dist: synthetic gradients (Decoupled Neural Interfaces) for recurrent networks, from one
process to many.

References:
    Jaderberg et al. 2017, "Decoupled Neural Interfaces using Synthetic Gradients", arXiv 1608.05343.
"""
from .chunk import ChunkResult, chunk_step
from .diagnostics import alignment
from .model import SeqModel
from .synthesizer import Synthesizer

__version__ = "0.1.0"
__all__ = ["Synthesizer", "SeqModel", "chunk_step", "ChunkResult", "alignment", "__version__"]
