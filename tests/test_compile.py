"""Speed switches made for GPUs. ``training.torch_compile``: compiled by region with dynamic shapes, every method
trains padding-free through the fused LoRA layer, ``sdpa_packed``, the chunked loss and the prefix encoder with no
graph break and no recompilation per batch length, at the eager losses within bf16 tolerance.
``training.use_liger_kernel``: refused with its reason where it cannot run, and never with Liger's losses, which
would bypass the chunked loss."""
from __future__ import annotations

import pytest
import torch
from helpers import built_trainer
from torch._dynamo.utils import counters
from transformers import TrainerCallback

from finetune import DataSpec, EvalSpec, FullSpec, LoraSpec, ModelSpec, PTuningSpec, Recipe, TrainingSpec
from finetune.build import LIGER_KERNELS, training_arguments
from finetune.recipe import RecipeError

METHODS = {"lora": LoraSpec(r=4, alpha=8, dropout=0.0), "ptuning": PTuningSpec(pre_seq_len=4, prefix_dropout=0.0),
           "full": FullSpec()}


class Graphs(TrainerCallback):
    """How many graphs dynamo has compiled, at the end of every step."""

    def __init__(self):
        self.graphs = []

    def on_step_end(self, args, state, control, **kwargs):
        self.graphs.append(counters["stats"]["unique_graphs"])


def _train(model_path, data, out, method, compile_):
    recipe = Recipe(
        name="compiled", model=ModelSpec(path=str(model_path), max_length=96),
        data=DataSpec(train=str(data), format="alpaca", template="chatml"), method=METHODS[method],
        training=TrainingSpec(output_dir=str(out), max_steps=6, per_device_train_batch_size=3, learning_rate=1e-2,
                              logging_steps=1, save_strategy="no", report_to="none",
                              extra={"torch_compile": compile_}),
        eval=EvalSpec(samples=0))
    graphs = Graphs()
    trainer, _ = built_trainer(recipe, [graphs])
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return trainer, losses, graphs.graphs


# LoRA in the fast suite; P-Tuning v2 and full fine-tuning compile ~40 s each more, in the slow one.
@pytest.mark.parametrize("method", ["lora", pytest.param("ptuning", marks=pytest.mark.slow),
                                    pytest.param("full", marks=pytest.mark.slow)])
def test_compiled_training_gives_the_eager_losses_without_graph_breaks_or_recompiles(method, tiny_llama,
                                                                                     alpaca_file, tmp_path):
    eager, eager_losses, _ = _train(tiny_llama, alpaca_file, tmp_path / "eager", method, False)
    torch._dynamo.reset()
    counters.clear()
    compiled, losses, graphs = _train(tiny_llama, alpaca_file, tmp_path / "compiled", method, True)
    assert eager.args.bf16 == compiled.args.bf16 and compiled.args.torch_compile
    # Regional: each decoder block is a compiled module (and accelerate compiles the few modules around them one
    # by one); the model as a whole is not one graph.
    compiled_modules = [m._orig_mod for m in compiled.model_wrapped.modules()
                        if isinstance(m, torch._dynamo.eval_frame.OptimizedModule)]
    blocks = [m for m in compiled_modules if type(m).__name__.endswith("DecoderLayer")]
    assert len(blocks) == compiled.model.config.num_hidden_layers
    assert not isinstance(compiled.model_wrapped, torch._dynamo.eval_frame.OptimizedModule)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    # Six batches of different lengths: whatever compiled in the first two steps serves every later one.
    assert graphs[1] == graphs[-1] > 0, graphs
    assert losses == pytest.approx(eager_losses, rel=2e-2), (losses, eager_losses)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusal; make gpu-check trains with Liger on a GPU")
def test_liger_kernel_is_refused_off_a_gpu_with_the_reason(tmp_path):
    with pytest.raises(RecipeError, match="needs a CUDA GPU: Liger's kernels are written in Triton"):
        training_arguments(TrainingSpec(extra={"use_liger_kernel": True}), tmp_path)
    assert training_arguments(TrainingSpec(), tmp_path).use_liger_kernel is False
    assert not LIGER_KERNELS["fused_linear_cross_entropy"] and not LIGER_KERNELS["cross_entropy"]
