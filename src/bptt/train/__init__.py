"""Floor 5: optimizers, clipping, schedules, tasks, the trainer, run folders and checkpoints."""
