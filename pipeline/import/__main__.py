"""`python -m pipeline.import ds_config.json --name X`: the JSON as conf/experiment/X.yaml, the same
recipe `deepspeed_config=ds_config.json` composes, so `python -m pipeline experiment=X` plans it alike
and the config lives on in the repository (git diff shows what changed in it)."""

import argparse
import re
import sys
from pathlib import Path

from pipeline.check import ds_json, ds_recipe
from pipeline.check.compose import CONF_DIR
from pipeline.errors import ConfigError


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.import", description=__doc__.splitlines()[0])
    ap.add_argument("json", type=Path, help="a DeepSpeed config file")
    ap.add_argument("--name", required=True, help="the recipe's name: experiment=NAME")
    ap.add_argument(
        "--dir", type=Path, default=CONF_DIR / "experiment", help="where recipes go (conf/experiment)"
    )
    ap.add_argument("--force", action="store_true", help="replace a recipe of that name")
    args = ap.parse_args(argv)
    path = args.dir / f"{args.name}.yaml"
    try:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", args.name):
            raise ConfigError(
                "--name", f"{args.name!r} is not an option name", "use letters, digits, _ and -"
            )
        if path.exists() and not args.force:
            raise ConfigError("--name", f"{path} exists", "choose another name, or --force to replace it")
        imported = ds_json.load(args.json)
        for note in ds_recipe.command_line_wins(imported, []):
            print(f"note: {note}", file=sys.stderr)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    header = f"{imported.source.name} as the config groups: python -m pipeline.import {args.json} --name X"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(imported.recipe(header))
    print(f"wrote {path}\ntrain it: python -m pipeline experiment={args.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
