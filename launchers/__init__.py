"""The cluster side: the Slurm launcher that submits a sweep's points (slurm.py), registered with
Hydra through hydra_plugins/zerosweep_launchers, and local-slurm.sh, a real Slurm on this machine.
A point's Slurm tasks run as ranks through pipeline/launch/slurm.py."""
