"""2-process DDP on CPU (gloo) gives the single-process update at the same global batch, in fp32 and in bf16."""
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

RECIPE = """
from finetune import DataSpec, EvalSpec, LoraSpec, ModelSpec, Recipe, TrainingSpec
recipe = Recipe(
    name="ddp", model=ModelSpec(path={model!r}, max_length=96, dtype={dtype!r}),
    data=DataSpec(train={data!r}, format="alpaca", template="chatml", eval={eval!r}),
    method=LoraSpec(r=4, alpha=8, dropout=0.0),
    training=TrainingSpec(max_steps=1, optim="sgd", learning_rate=1.0, max_grad_norm=0.0,
                          lr_scheduler_type="constant"),
    eval=EvalSpec(samples=0))
"""


# bf16: weights and autocast (the GPU default); 2 x 2 examples and 1 x 4 round differently in bf16 matmuls.
# With held-out data every run evaluates the untrained model before training: under DDP that evaluation once left
# the model unwrapped, so each process trained alone (finetune.trainers.SFTTrainer.evaluate).
@pytest.mark.parametrize("dtype, atol, held_out", [("float32", 1e-5, False), ("bfloat16", 2e-3, False),
                                                   ("float32", 1e-5, True)])
def test_two_process_ddp_matches_one_process(dtype, atol, held_out, tiny_llama, tmp_path):
    from helpers import write_jsonl

    # Four examples with different numbers of supervised tokens: one global batch of 4 either way.
    data = write_jsonl(tmp_path / "four.jsonl", [
        {"instruction": "Name it.", "input": c, "output": name} for c, name in
        [("þ", "LATIN SMALL LETTER THORN"), ("Ω", "GREEK CAPITAL LETTER OMEGA"), ("ß", "LATIN SMALL LETTER SHARP S"),
         ("ā", "LATIN SMALL LETTER A WITH MACRON AND A LONGER TAIL OF WORDS")]])
    recipe = tmp_path / "ddp.py"
    recipe.write_text(RECIPE.format(model=str(tiny_llama), data=str(data), dtype=dtype,
                                    eval=str(data) if held_out else ""))
    env_cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "finetune.run", str(recipe), f"training.output_dir={tmp_path / 'ddp'}",
               "training.per_device_train_batch_size=2"]
    subprocess.run(env_cmd, check=True, capture_output=True, timeout=600)
    subprocess.run([sys.executable, "-m", "finetune.run", str(recipe), f"training.output_dir={tmp_path / 'single'}",
                    "training.per_device_train_batch_size=4"], check=True, capture_output=True, timeout=600)
    ddp = load_file(tmp_path / "ddp" / "adapter_model.safetensors")
    single = load_file(tmp_path / "single" / "adapter_model.safetensors")
    assert ddp.keys() == single.keys()
    changed = 0
    for name, value in single.items():
        assert torch.allclose(value, ddp[name], atol=atol), name
        changed += "lora_B" in name and bool(value.abs().sum() > 0)
    assert changed  # the step did something
