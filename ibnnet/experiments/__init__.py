"""Experiment files: grids of run configs with the paper's numbers, and finding their runs on disk."""
