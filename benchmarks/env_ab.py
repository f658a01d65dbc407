"""What in the ranks' environment costs time: one variant's pipeline runs under several
environments, between two runs of the reference, in one call (the 2-GPU study of issue 13).

usage: python benchmarks/env_ab.py --reference PATH --out DIR [--variant z2] [--gpus 2]
           --env '' --env OMP_NUM_THREADS=1 [--env A=1,B=2 ...]
Each --env is a comma-separated KEY=VALUE list ('' for none): upper-case keys are added to the
pipeline's environment, the others are pipeline overrides (trainer.dataloader_num_workers=0).
Writes DIR/table.md after every run.
"""

import argparse
import re
from pathlib import Path

import gpu_table


def parse(spec: str) -> tuple[dict[str, str], list[str]]:
    """(environment, overrides) of one --env."""
    items = [item for item in spec.split(",") if item]
    env = dict(item.split("=", 1) for item in items if re.fullmatch(r"[A-Z_][A-Z0-9_]*", item.split("=")[0]))
    return env, [item for item in items if item.split("=")[0] not in env]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--variant", default="z2", choices=list(gpu_table.SAME))
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--timeout", type=int, default=200)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"{a.gpus} GPU(s), variant {a.variant}, pipeline tracking on",
        "",
        "| run | environment | s/step | tokens/s | model TFLOP/s | MFU | peak GiB | plan GiB | last loss "
        "| pipe/ref |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def add(name: str, who: str, r: dict | None, base: dict | None) -> None:
        lines.append(gpu_table.row(name, who, r, base))
        print(lines[-1], flush=True)
        (a.out / "table.md").write_text("\n".join(lines) + "\n")

    first = gpu_table.run_reference(a.reference, a.variant, a.out / "ref_1", a.timeout, gpus=a.gpus)
    add("reference 1", "torchrun", first, None)
    for i, spec in enumerate(a.env):
        env, overrides = parse(spec)
        r = gpu_table.run_pipeline(a.variant, overrides, a.out / f"pipe_{i}", a.timeout, env=env, gpus=a.gpus)
        add(f"pipeline {i + 1}", spec or "as is", r, first)
    last = gpu_table.run_reference(a.reference, a.variant, a.out / "ref_2", a.timeout, gpus=a.gpus)
    add("reference 2", "torchrun", last, None)


if __name__ == "__main__":
    main()
