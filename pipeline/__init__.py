"""ZeroSweep: Hydra-composed DeepSpeed experiments, launched locally or on Slurm, tracked in MLflow."""
