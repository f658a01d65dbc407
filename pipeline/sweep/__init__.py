"""Many points as one sweep, in the driver: Hydra's multirun as an MLflow parent run (callback.py,
sweep.json in info.py, the job's own view of it in point.py), and search=fastest (search/), which
walks the points Optuna picks; both open and close their parent run through one core (core.py)."""
