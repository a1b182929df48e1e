"""Data-parallel evaluation: under ``accelerate launch`` every process evaluates one shard of each run unit.

The runner (:func:`glimpseprune.eval.runner.run_evaluation`) asks a :class:`Shard` four things per run unit:

* which records are this process's (``records[rank::world]``: fixed by the record order alone, so it never depends
  on what another process has written yet);
* which ids are already done: the union of the unit's predictions file and every per-rank file next to it, so a
  resumed run skips an item whichever process (or world size) evaluated it before;
* where to append: ``<unit>.jsonl`` in a single process, ``<unit>.rank<r>-of-<w>.jsonl`` under a launcher, so no two
  processes ever append to one file and each resumes on its own;
* after a barrier, the merged rows: the main process rewrites ``<unit>.jsonl`` with every row in record order
  (write to a temporary file, then rename) and removes the per-rank files; every process then summarises the same
  rows, which is exactly the summary a single process gives (the run hash does not include the world size).

Launch (see docs/scaling.md): ``accelerate launch --multi_gpu --num_processes N -m glimpseprune.cli eval ...``
(or ``--config_file configs/accelerate/cpu_2proc.yaml``). On a machine without CUDA the processes join a gloo group
(``PartialState(cpu=True)``). ``accelerate launch --cpu --num_processes N`` starts ONE process: accelerate's CPU
launcher fans out only through ``mpirun`` (``--mpirun_hostfile``); that case is detected and reported.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Shard:
    """This process's place in a data-parallel evaluation. In a group, ``barrier`` waits for every process and
    ``all_gather`` returns one value from each process in rank order (accelerate's ``PartialState`` provides both
    under a launcher); a single process needs neither."""

    rank: int = 0
    world: int = 1
    barrier: Callable[[], None] | None = None
    all_gather: Callable[[object], list] | None = None
    device: str | None = None  # the accelerator this process owns (cuda:<local rank>); None: the caller's default

    def __post_init__(self):
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"bad shard: rank {self.rank} of {self.world}")
        if self.world > 1 and (self.barrier is None or self.all_gather is None):
            raise ValueError("a shard of a group of processes needs barrier and all_gather")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def select(self, records: list) -> list:
        return list(records) if self.world == 1 else list(records[self.rank :: self.world])

    def output_path(self, path: Path) -> Path:
        if self.world == 1:
            return path
        return path.with_name(f"{path.stem}.rank{self.rank}-of-{self.world}{path.suffix}")

    @staticmethod
    def rank_files(path: Path) -> list[Path]:
        """Per-rank files of a unit left by any world size, in a fixed order."""
        return sorted(path.parent.glob(f"{path.stem}.rank*-of-*{path.suffix}"))

    def read_done(self, path: Path, reader: Callable[[Path], dict]) -> dict[str, dict]:
        """Rows already evaluated for this unit, by id, from the unit file and all per-rank files."""
        done: dict[str, dict] = {}
        for file in [path, *self.rank_files(path)]:
            for key, row in reader(file).items():
                done.setdefault(key, row)
        return done

    def wait(self) -> None:
        if self.barrier is not None:
            self.barrier()

    def gather(self, value) -> list:
        """``value`` from every process, in rank order (a one-element list in a single process)."""
        return [value] if self.all_gather is None else list(self.all_gather(value))

    def merge(self, path: Path, ids: list[str], reader: Callable[[Path], dict]) -> dict[str, dict]:
        """After :meth:`wait`: every row of the unit by id. The main process first folds the per-rank files into
        ``path`` (rows in ``ids`` order, then any other ids the files held) and deletes them; the others wait for
        that and read ``path``."""
        if self.is_main:
            parts = self.rank_files(path)
            done = self.read_done(path, reader)
            if parts:
                order = list(dict.fromkeys([*ids, *done]))
                tmp = path.with_name(path.name + ".merging")
                with tmp.open("w", encoding="utf-8") as fh:
                    for key in order:
                        if key in done:
                            fh.write(_json_line(done[key]))
                os.replace(tmp, path)
                for part in parts:
                    part.unlink()
        self.wait()
        return done if self.is_main else self.read_done(path, reader)


def _json_line(row: dict) -> str:
    import json

    return json.dumps(row) + "\n"


CPU_LAUNCH_WARNING = (
    "warning: `accelerate launch --cpu --num_processes N` starts a single process (accelerate's CPU launcher fans "
    "out only through mpirun); evaluating everything in this one process. For N CPU processes use "
    "`accelerate launch --multi_gpu --num_processes N` or --config_file configs/accelerate/cpu_2proc.yaml"
)


def single_process_launch_warning(environ) -> str | None:
    """The warning for a run that asked accelerate for several CPU processes and got one, else None.

    accelerate's simple launcher (``--cpu`` without ``--mpirun_hostfile``) sets MASTER_ADDR only when asked for more
    than one process, then starts one process without RANK / WORLD_SIZE.
    """
    asked_cpu = str(environ.get("ACCELERATE_USE_CPU", "")).lower() in ("1", "true")
    if asked_cpu and environ.get("MASTER_ADDR") and "RANK" not in environ and "WORLD_SIZE" not in environ:
        return CPU_LAUNCH_WARNING
    return None


_CURRENT: Shard | None = None


def current_shard() -> Shard:
    """The shard of this process: rank and world size from the launcher's environment (``WORLD_SIZE``, set by
    ``accelerate launch`` and ``torchrun``), a single process otherwise. Joins the process group once."""
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        warning = single_process_launch_warning(os.environ)
        if warning:
            print(warning, file=sys.stderr)
        _CURRENT = Shard()
        return _CURRENT
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object

    # cpu=True without CUDA: the processes then form a gloo group instead of each believing it is alone
    # (PartialState() there reports DistributedType.NO and rank 0 of 1 in every process).
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes != world:
        raise RuntimeError(f"WORLD_SIZE={world} but the process group has {state.num_processes} processes")
    device = str(state.device) if state.device.type != "cpu" else None
    _CURRENT = Shard(state.process_index, state.num_processes, barrier=state.wait_for_everyone,
                     all_gather=lambda value: gather_object([value]), device=device)
    return _CURRENT
