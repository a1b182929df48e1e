"""The configs shipped inside the package (``glimpseprune/configs``, the repository's ``configs/`` folder): training
recipes, the mini-model recipes and accelerate launch files. ``glimpseprune configs`` lists them, prints one, or
copies them into a folder to edit; ``glimpseprune train --config NAME`` accepts a shipped name such as
``train/tiny_offline.json`` when no such file exists on disk."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"


def shipped_configs() -> list[str]:
    """Relative names (``train/tiny_offline.json``) of every shipped config, sorted."""
    return sorted(p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*") if p.is_file())


def resolve(name: str | Path) -> Path:
    """``name`` itself when it exists on disk, else the shipped config of that relative name (``configs/`` prefix
    optional); a name that is neither raises FileNotFoundError listing the shipped ones."""
    path = Path(name)
    if path.exists():
        return path
    relative = path.as_posix().removeprefix("configs/")
    if relative in shipped_configs():
        return CONFIG_DIR / relative
    raise FileNotFoundError(f"no config file {str(name)!r} and no shipped config of that name "
                            f"(shipped: {', '.join(shipped_configs())})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="print this shipped config (e.g. train/tiny_offline.json)")
    parser.add_argument("--copy", metavar="DIR", help="copy every shipped config into DIR (to edit them)")


def run(args: argparse.Namespace) -> int:
    if args.copy:
        target = Path(args.copy)
        for name in shipped_configs():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(CONFIG_DIR / name, target / name)
        print(f"copied {len(shipped_configs())} configs into {target}")
        return 0
    if args.name:
        sys.stdout.write(resolve(args.name).read_text())
        return 0
    print(f"shipped configs ({CONFIG_DIR}); print one with `glimpseprune configs NAME`, "
          "train with `glimpseprune train --config NAME`:")
    for name in shipped_configs():
        print(f"  {name}")
    return 0
