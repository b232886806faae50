"""Benchmarks run on CUDA when present; on the CPU they compare the reference path with torch baselines."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
