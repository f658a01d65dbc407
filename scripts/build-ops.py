"""Build DeepSpeed's CPU ops that the tests use (JIT, into torch's extension cache: TORCH_EXTENSIONS_DIR,
default ~/.cache/torch_extensions), ~7 min of CPU on 2 cores: `build-ops.py` all of them (tests/conftest.py,
beside the tests), `build-ops.py --no-debian` those that need no Debian package (make test, while apt
installs the others'). A process loading an op that another is building waits on torch's build lock for
that build, then loads it."""

import signal
import sys

# In the order the suite first needs them: gloo's shared-memory allreduce (every training), CPU Adam
# (offload), and NVMe's (pinned memory, aio). Not FusedAdam: without a GPU the plan steps with torch's.
OPS = ("ShareMemCommBuilder", "CPUAdamBuilder", "PinMemoryBuilder", "AsyncIOBuilder")
NEEDS_DEBIAN = {"AsyncIOBuilder"}  # libaio-dev


def main(args: list[str]) -> None:
    # SIGTERM and SIGHUP stop a build as ctrl-C does: torch removes its build lock on the way out (a
    # lock left behind would make every later load of that op wait forever).
    for stop in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop, signal.default_int_handler)
    from deepspeed.accelerator import get_accelerator

    from pipeline.rank import cpu_probe

    cpu_probe.remember()  # the ranks' compiler flags, so that they load these builds
    for name in OPS:
        if name not in NEEDS_DEBIAN or "--no-debian" not in args:
            get_accelerator().create_op_builder(name).load(verbose=False)


if __name__ == "__main__":
    main(sys.argv[1:])
