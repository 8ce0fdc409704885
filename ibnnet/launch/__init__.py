"""Running experiments: run folders, the runner, local and SLURM launchers, status."""
