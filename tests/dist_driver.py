"""Run by ``torchrun`` from the distributed tests: train each recipe of a JSON list, in every process.

Each process also records which files it wrote (Python-level opens for writing under the runs' folders, through
an audit hook), so a test can check that only rank 0 writes; and its final step, so a test can check that every
rank stopped at the same one. Usage: ``torchrun --nproc_per_node 2 tests/dist_driver.py RECIPES.json OUT_DIR``.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(recipes_file: str, out_dir: str) -> int:
    from finetune.recipe import recipe_from_dict
    from finetune.runs.checkpoints import latest_checkpoint
    from finetune.train import train

    rank = int(os.environ.get("RANK", 0))
    if os.environ.get("FINETUNE_TEST_FORCE_FSDP") == "1":
        _force_fsdp_on_cpu()
    if os.environ.get("DS_ACCELERATOR") == "cpu":
        import importlib

        # Its shared-memory all-reduce is a speed-up compiled on first use (1-1.5 min on 2 cores, again whenever the
        # compiler flags change, as between make test and make test-avx2); gloo does the same. By module name:
        # ``deepspeed.comm.torch`` as an attribute is the torch package (deepspeed.comm star-imports it).
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    if os.environ.get("FINETUNE_TEST_SIGNAL"):
        _signal_one_rank(rank, *map(int, os.environ["FINETUNE_TEST_SIGNAL"].split(":")))
    recipes = [recipe_from_dict(r) for r in json.loads(Path(recipes_file).read_text())]
    roots = [str(Path(r.training.output_dir).resolve()) for r in recipes]
    written: set[str] = set()

    def audit(event, args):
        if event == "open" and isinstance(args[0], (str, Path)) and args[1] and set(str(args[1])) & set("wax+"):
            path = str(Path(args[0]).resolve())
            if any(path.startswith(root) for root in roots):
                written.add(path)

    sys.addaudithook(audit)
    report = {"rank": rank, "runs": {}}
    code = 0
    for recipe in recipes:
        # FINETUNE_TEST_RESUME=1: continue every run that has a checkpoint (--resume), start the others.
        resume = os.environ.get("FINETUNE_TEST_RESUME") == "1" and bool(latest_checkpoint(recipe.training.output_dir))
        result = train(recipe, resume=resume)
        sharded = any(type(p).__name__ == "DTensor" for p in result.model.parameters()) if result.model else None
        report["runs"][recipe.name] = {"interrupted": result.interrupted, "step": _steps[-1] if _steps else None,
                                       "fsdp_sharded": sharded}
        code = 130 if result.interrupted else code  # as python -m finetune.run exits
    report["written"] = sorted(written)
    Path(out_dir, f"rank-{rank}.json").write_text(json.dumps(report, indent=2))
    return code


_steps: list[int] = []


def _signal_one_rank(rank: int, target_rank: int, step: int) -> None:
    """SIGTERM to this process alone at the end of ``step`` when it is ``target_rank`` (a scheduler's signal that
    reaches one node first); every rank records the step it stopped at."""
    import signal
    import time

    import finetune.train

    class Recording(finetune.train.GracefulStop):
        def on_step_end(self, args, state, control, **kwargs):
            if rank == target_rank and state.global_step == step:
                os.kill(os.getpid(), signal.SIGTERM)
                while self.received is None:  # Python runs the handler at its next check, not inside os.kill
                    time.sleep(0.001)
            control = super().on_step_end(args, state, control, **kwargs)
            _steps.append(state.global_step)
            return control

    finetune.train.GracefulStop = Recording


def _force_fsdp_on_cpu() -> None:
    """accelerate turns FSDP on only for GPU-like devices (accelerate/state.py: MULTI_GPU, NPU, XPU, ...), never
    for MULTI_CPU, so on CPU it would silently train plain DDP. Set the plugin it would have built, so the FSDP2
    code paths (sharded parameters, gathered full state dict at save) really run here."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    from finetune.training.trainers import SFTTrainer

    original = SFTTrainer.create_accelerator_and_postprocess

    def create_accelerator_and_postprocess(self):
        original(self)
        state = self.accelerator.state
        if self.args.fsdp_plugin_args is not None and getattr(state, "fsdp_plugin", None) is None:
            state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
            state.distributed_type = DistributedType.FSDP
            # AcceleratorState() copies PartialState's type back in every time it is made (accelerate/state.py).
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.is_fsdp_enabled = True

    SFTTrainer.create_accelerator_and_postprocess = create_accelerator_and_postprocess


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
