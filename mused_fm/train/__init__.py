"""The DeepSpeed trainer. `from mused_fm.train.loop import train` (imports deepspeed); the other
modules here (objective, distributed, run_log, data) do not, so evaluation and tests can use them
without it."""
