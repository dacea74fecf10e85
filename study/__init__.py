"""Orchestration of the study: CLI, config, data, training, the Tune driver and the analysis."""

__version__ = "0.1.0"
