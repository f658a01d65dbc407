#!/usr/bin/env bash
# Create the project's virtual environment: make-venv.sh PYTHON DIR. Debian ships venv (and
# ensurepip) in a package of its own, python3-venv: installed here when root and it is missing.
set -euo pipefail
python=$1 dir=$2
if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c "import ensurepip" 2>/dev/null; then
  if [ "$(id -u)" != 0 ]; then echo "make-venv: $python has no venv module: install python3-venv (as root)" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv
fi
"$python" -m venv "$dir"
"$dir/bin/python" -m pip install -q --upgrade pip
