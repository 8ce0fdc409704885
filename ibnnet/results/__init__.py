"""Experiment tables and plots from run folders."""
