"""Everything that runs inside a training rank (a process of its own, the job's process for one
local rank, or a Slurm task): the model, the data, the Trainer and its callbacks, checkpoints.
Imports nothing from the driver's side (check, plan, launch, sweep, report: tests/test_layout.py),
so what a rank unpickles and runs is this folder, the config and the tracking door."""
