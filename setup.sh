#!/usr/bin/env bash
# Fresh machine -> ready: CPU PyTorch (pinned; a plain `torch` may pull a multi-GB CUDA build),
# then this package with its test, Ray, data, plot and TensorBoard extras.
set -euo pipefail
python3 -m pip install -q "torch==2.13.0"
python3 -m pip install -q -e ".[test,ray,data,plots,tensorboard]"
