"""Start-up on a GPU, launch to the first optimizer step (issue 35): the pipeline (MLflow tracking on, as
users run it) against the hand-written reference, alternating who goes first; then a compiled pipeline
point twice from the same outputs_dir: the first compiles from a cold torch.compile cache, the second,
as a sweep's next point or a search's next trial does, from the cache the first left there.

usage: python benchmarks/startup.py --reference PATH --out DIR [--work /tmp/startup] [--repeat 2]

Each run's output is stamped with the seconds since launch (gpu_table.run_logged, stamped.log under
--out); the first logged loss marks the end of the first step on both sides. Writes DIR/table.md, row
by row, with the command that made it.
"""

import argparse
import os
import shutil
import sys
from pathlib import Path

from gpu_table import pipeline_cmd, rotated, run_logged

STEPS = 4


def first_step_s(log: Path) -> float | None:
    """Seconds from launch to the first logged loss (HF's log line, on both sides)."""
    for line in log.read_text().splitlines() if log.exists() else []:
        if "'loss'" in line:
            return float(line.split(maxsplit=1)[0])
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/startup"), help="outputs_dir (not sent back)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=150)
    a = ap.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    a.out.mkdir(parents=True, exist_ok=True)
    table = a.out / "table.md"
    lines = [
        f"`python benchmarks/startup.py {' '.join(sys.argv[1:])}`",
        "",
        "| run | who | launch to first step, s | wall, s |",
        "|---|---|---|---|",
    ]

    def timed(name: str, who: str, cmd: list[str], env: dict[str, str]) -> None:
        # A folder name the device's return takes: no spaces, commas or '#'.
        log = a.out / name.replace(", ", "_").replace(" ", "_").replace("#", "") / "stamped.log"
        output = run_logged(cmd, a.timeout, {**os.environ, **env}, log)
        wall = log.read_text().splitlines()[-1].split(maxsplit=1)[0] if output is not None else "failed"
        first = first_step_s(log)
        lines.append(f"| {name} | {who} | {first if first is not None else 'none'} | {wall} |")
        table.write_text("\n".join(lines) + "\n")
        print(lines[-1], flush=True)

    ref_env = {"BENCH_SIZE": "1b", "BENCH_STEPS": str(STEPS), "BENCH_WARM": "1"}
    for i in range(a.repeat):
        for who in rotated(["reference", "pipeline"], i):
            if who == "reference":
                ref = [str(a.reference.resolve()), "z2", str(a.work / "ref")]
                timed(f"z2 #{i + 1}", who, ["torchrun", "--nproc_per_node", "1", *ref], ref_env)
            else:
                out = a.work / f"z2_{i}"
                timed(f"z2 #{i + 1}", who, pipeline_cmd("z2", [], out, steps=STEPS, warm=1), {})
    # A sweep's points share outputs_dir, and with it the compile cache (cache/compile under it).
    shared = [f"outputs_dir={a.work / 'sweep'}", "perf=compile"]
    for name in ("compiled, cold cache", "compiled, warm cache"):
        out = a.work / name.replace(", ", "_").replace(" ", "_")
        timed(name, "pipeline", pipeline_cmd("z2", shared, out, steps=STEPS, warm=1), {})
    print(table.read_text())


if __name__ == "__main__":
    main()
