"""Pretraining and fine-tuning: the loop, optimizer and schedules, checkpoints, parallelism."""
