"""Where runs execute: local worker processes sharing a grid, or SLURM job arrays."""
