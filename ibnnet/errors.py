"""Errors the user can fix, told apart from bugs.

The command line prints a :class:`UserError` as one line (``ibnnet: error: ...``, exit code 2); any
other exception is a bug or an unexpected failure and is shown with its full traceback (and, when it
happened inside a run, the path of the run's ``train.log``).  Every user error derives from
:class:`UserError` and also from the built-in class code used to catch (``ValueError``,
``FileNotFoundError``, ``RuntimeError``), so existing ``except`` clauses keep working.

- :class:`ConfigError`: a config file, override, experiment file or command-line argument is wrong.
- ``WeightsError`` (:mod:`ibnnet.models.weights`): a weight file is unusable (hash, format, architecture).
- ``CheckpointError`` (:mod:`ibnnet.runs.folder`): no checkpoint of a run can be read.
- :class:`DataError` / :class:`DataNotFoundError`: a dataset folder is missing, incomplete or laid out wrongly
  (or another input file, such as the CycleGAN generator, is unusable).
- :class:`MissingPathError`: another file or folder named on the command line or in a config does not exist.
- :class:`DownloadError`: a download failed (network, server).
- ``CheckpointDiskFullError`` (:mod:`ibnnet.runs.callbacks`): no space or quota left for a checkpoint.
- ``SubmitError`` (:mod:`ibnnet.launchers.slurm`): ``sbatch`` refused a job (partition, account, limits).
"""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (configuration, paths, data, files); its message says what and where."""


class ConfigError(UserError, ValueError):
    """A configuration problem, with the file, key and value in the message."""


class MissingPathError(UserError, FileNotFoundError):
    """A file or folder named on the command line or in a config does not exist."""


class DownloadError(UserError, RuntimeError):
    """A download failed (no network, server error); the message says what to fetch by hand."""


class DataError(UserError, ValueError):
    """A dataset (or another input file) is laid out wrongly or has unusable content; the message says what to fix."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A dataset folder or file the layout needs is missing."""


__all__ = ["UserError", "ConfigError", "MissingPathError", "DownloadError", "DataError", "DataNotFoundError"]
