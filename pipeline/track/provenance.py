"""What made a run, so that a result can be traced back and repeated: the code (git commit, the
uncommitted diff, untracked files), the software (versions, the whole `pip freeze`), the machine
(GPUs, CPU, memory, host, Slurm job) and the command as it was typed.

Gathered by the process that opens a run (a sweep's parent, or a point's job: a Slurm job records
the node it ran on and the code it imported there), once, before any rank starts: git, package
metadata and /proc, nothing imported that is not already loaded, so no cost per step. Written as
MLflow's own source tags, a few tags to compare at a glance, `environment.json` and, where the tree
is dirty, `git_diff.patch`. Nothing is read from the environment but named Slurm variables, and every
text passes `secrets.masked`: no token or password leaves the machine."""

import getpass
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import sysconfig
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from mlflow.exceptions import MlflowException
from omegaconf import OmegaConf

from pipeline.errors import ConfigError
from pipeline.track.secrets import masked
from pipeline.track.store import RUN_ID_FILE, Store, sqlite_path, store_uri

# The checkout whose code runs (its conf/ is Hydra's config dir).
ROOT = Path(__file__).resolve().parents[2]
# Set by `python -m pipeline` (the command as typed) and by `python -m pipeline.rerun`: every process
# of the run (a Slurm job, a search trial) inherits them.
COMMAND_ENV = "ZEROSWEEP_COMMAND"
RERUN_OF_ENV = "ZEROSWEEP_RERUN_OF"
# The packages whose versions decide what a run computes: tagged, compared by `pipeline.rerun`.
MAIN_PACKAGES = ("torch", "deepspeed", "transformers", "accelerate", "mlflow", "hydra-core")
SLURM_VARIABLES = (
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_JOB_NODELIST",
    "SLURM_JOB_NUM_NODES",
    "SLURM_JOB_PARTITION",
)
ENVIRONMENT_FILE = "environment.json"
DIFF_FILE = "git_diff.patch"
# Tags (MLflow's own, which its UI shows and links, then ours).
GIT_COMMIT = "mlflow.source.git.commit"
DIRTY = "zerosweep.git_dirty"
CHANGES = "zerosweep.git_changes"  # a short hash of the uncommitted changes: equal trees, equal hash
RERUN_OF = "zerosweep.rerun_of"
COMMAND = "zerosweep.command"
GPU = "zerosweep.gpu"


@dataclass
class Code:
    commit: str | None  # None: not a git checkout (or git is missing)
    dirty: bool = False
    untracked: list[str] = field(default_factory=list)
    diff_sha1: str = ""  # of the diff: two runs' uncommitted changes compared without the patches
    diff: str = ""  # `git diff HEAD`: what the commit lacks of the tree that ran

    def describe(self) -> str:
        if self.commit is None:
            return "no git commit"
        return f"commit {self.commit[:10]}" + (" + uncommitted changes" if self.dirty else "")


@dataclass
class Provenance:
    code: Code
    versions: dict[str, str]  # Python, CUDA, NCCL, cuDNN and the main packages
    packages: dict[str, str]  # every installed distribution: pip freeze
    machine: dict[str, Any]
    slurm: dict[str, str]
    command: str
    overrides: list[str]
    rerun_of: str | None

    def tags(self) -> dict[str, str]:
        tags = {
            "mlflow.source.name": "pipeline",
            "mlflow.source.type": "JOB" if self.slurm else "LOCAL",
            "mlflow.user": self.machine["user"],
            DIRTY: str(self.code.dirty).lower(),
            COMMAND: self.command[:5000],
            **{f"zerosweep.{name}": version for name, version in self.versions.items()},
        }
        if self.code.commit:
            tags[GIT_COMMIT] = self.code.commit
        if self.code.dirty:
            tags[CHANGES] = self.code.diff_sha1[:10]
        if self.machine["gpus"]:
            gpus = self.machine["gpus"]
            tags[GPU] = f"{len(gpus)} x {gpus[0]['name']}"
        if self.rerun_of:
            tags[RERUN_OF] = self.rerun_of
        return tags

    def record(self) -> dict[str, Any]:
        """environment.json: all of it but the diff (its own file)."""
        record = asdict(self)
        record["code"].pop("diff")
        return record

    @classmethod
    def of_record(cls, record: dict[str, Any]) -> "Provenance":
        return cls(**{**record, "code": Code(**record["code"])})


def collect(overrides: list[str]) -> Provenance:
    """This process's code, software and machine, and the command that started it."""
    return Provenance(
        code=_code(),
        versions=_versions(),
        packages=_packages(),
        machine=_machine(),
        slurm={name: os.environ[name] for name in SLURM_VARIABLES if name in os.environ},
        command=masked(os.environ.get(COMMAND_ENV) or command_line()),
        overrides=[masked(o) for o in overrides],
        rerun_of=os.environ.get(RERUN_OF_ENV),
    )


def command_line() -> str:
    """How this process was started, as a user would type it again."""
    import shlex

    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    head = ["python", "-m", spec.name.removesuffix(".__main__")] if spec else ["python", sys.argv[0]]
    return shlex.join([*head, *sys.argv[1:]])


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _code() -> Code:
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return Code(None)
    # This checkout's files only: it may sit inside a larger repository (a monorepo; a copy).
    diff = masked(_git("diff", "HEAD", "--no-color", "--", ".") or "")
    untracked = (_git("ls-files", "--others", "--exclude-standard", "--", ".") or "").split()
    changed = "\n".join([diff, *untracked])
    return Code(
        commit.strip(), bool(diff or untracked), untracked, hashlib.sha1(changed.encode()).hexdigest(), diff
    )


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in MAIN_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    torch = sys.modules.get("torch")  # the job process has it; a sweep's driver may not need it
    if torch is not None and torch.cuda.is_available():
        versions["cuda"] = str(torch.version.cuda)
        versions["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        versions["cudnn"] = str(torch.backends.cudnn.version())
    return versions


def _packages() -> dict[str, str]:
    """What is installed in this Python's environment (not the copies vendored by setuptools, which
    it puts on sys.path once imported: `pip freeze` does not list them either)."""
    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions(path=paths):
        found.setdefault(dist.metadata["Name"], dist.version)
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


def _machine() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "user": getpass.getuser(),
        "os": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": _gpus(),
        "gpu_driver": _gpu_driver(),
    }


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor()


def _gpus() -> list[dict[str, Any]]:
    """The GPUs this process sees (CUDA_VISIBLE_DEVICES applied), where torch is loaded."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        gpus.append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    return gpus


def _gpu_driver() -> str | None:
    try:
        first = Path("/proc/driver/nvidia/version").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    words = first.split()
    return next((w for w in words if w[:1].isdigit() and "." in w), first)


def write(store: Store, run_id: str, provenance: Provenance) -> None:
    """The tags on the run, environment.json and (a dirty tree) git_diff.patch as its artifacts."""
    store.tag(run_id, provenance.tags())
    store.log_text(run_id, json.dumps(provenance.record(), indent=1) + "\n", ENVIRONMENT_FILE)
    if provenance.code.diff:
        store.log_text(run_id, provenance.code.diff, DIFF_FILE)


def load(store: Store, run_id: str, into: Path) -> Provenance | None:
    """What made a run, as it recorded it (None: a run from before provenance was recorded)."""
    try:
        return Provenance.of_record(json.loads(store.download(run_id, ENVIRONMENT_FILE, into).read_text()))
    except (OSError, ValueError, TypeError, MlflowException):
        return None


def changes(then: Provenance, now: Provenance) -> list[str]:
    """How the code and the main packages of now differ from then's, one phrase each."""
    found = []
    if then.code.commit != now.code.commit:
        found.append(f"code: {then.code.describe()} then, {now.code.describe()} now")
    elif then.code.diff_sha1 != now.code.diff_sha1:
        found.append(f"code: {then.code.describe()}, with other uncommitted changes now")
    for name in ("python", *MAIN_PACKAGES, "cuda"):
        was, is_ = then.versions.get(name), now.versions.get(name)
        if was != is_ and (was or is_):
            found.append(f"{name} {was or '-'} -> {is_ or '-'}")
    return found


def find_run(target: str, uri: str) -> tuple[Store, str]:
    """A run dir (it holds the run's id file; its Hydra config names its store), a sweep dir (its
    sweep.json: the parent run), or a run id in the store at uri -> (store, run id). ConfigError in
    one line naming what was looked up where; a store that is not there is not made."""
    folder = Path(target)
    if (folder / RUN_ID_FILE).is_file() and (folder / ".hydra" / "config.yaml").is_file():
        composed = OmegaConf.load(folder / ".hydra" / "config.yaml")
        uri = store_uri(composed.outputs_dir, composed.tracking.uri)
        target = (folder / RUN_ID_FILE).read_text().strip()
    elif (folder / "sweep.json").is_file():
        saved = json.loads((folder / "sweep.json").read_text())
        uri, target = saved["tracking_uri"], saved["parent_run_id"]
    store = Store.existing(uri)
    if store is None or store.find(target) is None:
        missing = f"no MLflow store at {sqlite_path(uri)}"
        where = missing if store is None else f"the store {masked(uri)} has no run {target}"
        raise ConfigError(
            "run",
            f"{target} is not a run dir (with {RUN_ID_FILE}) nor a sweep dir, and {where}",
            "give a run's dir, a sweep's dir, or a run id (--outputs-dir or --tracking-uri: its store)",
        )
    return store, target


def code_of(tags: dict[str, str]) -> str:
    """A run's code as its tags say, in one phrase ('unknown' for a run that recorded none)."""
    commit = tags.get(GIT_COMMIT)
    if commit is None:
        return "unknown"
    return f"commit {commit[:10]}" + (f" + changes {tags[CHANGES]}" if CHANGES in tags else "")


def summary(parent_tags: dict[str, str], points: dict[str, dict[str, str]]) -> str:
    """A sweep's code and versions, said once, and the points (name: tags) that ran on other code."""
    versions = ", ".join(
        f"{name} {parent_tags[f'zerosweep.{name}']}"
        for name in ("python", *MAIN_PACKAGES, "cuda")
        if f"zerosweep.{name}" in parent_tags
    )
    code = code_of(parent_tags)
    line = f"code: {code}; {versions}"
    other = {name: code_of(tags) for name, tags in points.items() if code_of(tags) not in (code, "unknown")}
    if other:
        line += "\nran on other code: " + "; ".join(f"{name} ({phrase})" for name, phrase in other.items())
    return line
