#!/usr/bin/env bash
# Debian packages the tests use: libaio-dev (DeepSpeed's async_io op, NVMe offload); a real
# Slurm for launchers/local-slurm.sh: munge, slurmctld, slurmd, slurm-client, and accounting
# (slurmdbd + mariadb-server: submitit polls sacct); chromium for the MLflow UI test; eatmydata,
# whose fsync that returns at once the tests' processes load (tests/conftest.py).
set -euo pipefail
pkgs=(libaio-dev munge slurmctld slurmd slurm-client slurmdbd mariadb-server chromium eatmydata)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then echo "system-deps: run as root, or install: ${missing[*]}" >&2; exit 1; fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
