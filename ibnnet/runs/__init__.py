"""One run: its folder (config, state, checkpoints, metrics), the training runner, claims, preemption and resumption,
loggers and what is recorded about the environment."""
