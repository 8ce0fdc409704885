"""Training and evaluation transforms (`pipeline`) and the photometric appearance changes they use."""
