"""Implementations of the CLI commands (parsing lives in ibnnet.cli)."""
