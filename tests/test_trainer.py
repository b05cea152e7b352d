"""SFTTrainer on tiny random models: what trains, what is saved, and that the loss is normalised correctly."""
import dataclasses
import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from finetune import DataSpec, EvalSpec, FullSpec, LoraSpec, ModelSpec, Recipe, TrainingSpec
from finetune.data import build_datasets
from finetune.models import get_family, load_tokenizer
from finetune.templates import get_template
from finetune.train import train, training_arguments
from finetune.training.collators import PaddingCollator
from finetune.training.trainers import SFTTrainer


def tiny_recipe(model_path, train_file, tmp_path, **training):
    return Recipe(
        name="tiny", model=ModelSpec(path=str(model_path), max_length=96),
        data=DataSpec(train=str(train_file), format="alpaca", template="chatml", eval_split=0.25),
        method=LoraSpec(r=4, alpha=8, dropout=0.0),
        training=TrainingSpec(output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=4,
                              learning_rate=1e-2, logging_steps=1, **training),
        eval=EvalSpec(samples=2, max_new_tokens=4),
    )


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_lora_run_trains_only_adapters_and_saves_exactly_the_adapter(tiny_llama, alpaca_file, tmp_path):
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    result = train(tiny_recipe(tiny_llama, alpaca_file, tmp_path))
    run = result.output_dir
    files = {p.name for p in run.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "audit.json", "logs.jsonl", "recipe.json",
            "report.html", "samples.json", "template.json", "tokenizer.json", "tokenizer_config.json"} <= files
    assert not {"model.safetensors", "pytorch_model.bin"} & files  # the frozen base is not saved again
    with safe_open(run / "adapter_model.safetensors", "pt") as saved:  # A and B of every adapted layer, nothing else
        assert set(saved.keys()) == {f"base_model.model.{name}.lora_{matrix}.weight" for name, _ in base.named_modules()
                                     if name.rsplit(".", 1)[-1] in get_family("llama").lora_targets for matrix in "AB"}
    assert json.loads((run / "template.json").read_text())["name"] == "chatml"
    assert json.loads((run / "recipe.json").read_text())["method"]["name"] == "lora"

    trained = PeftModel.from_pretrained(base, run)
    before = AutoModelForCausalLM.from_pretrained(tiny_llama)
    merged_keys = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                   for k, v in trained.state_dict().items() if "lora_" not in k}
    for name, value in before.state_dict().items():  # frozen base weights are untouched
        assert torch.equal(merged_keys[name], value), name
    lora = {k: v for k, v in trained.state_dict().items() if "lora_B" in k}
    assert lora and all(v.abs().sum() > 0 for v in lora.values())  # B starts at zero: non-zero means it trained

    ids = torch.tensor([[1, 2, 3, 4, 5]])
    assert not torch.allclose(trained(ids).logits, before(ids).logits)
    assert result.eval_loss_after < result.eval_loss_before


def test_reloaded_adapter_reproduces_the_trained_model(tiny_llama, alpaca_file, tmp_path):
    """The run folder, loaded as ``finetune.evaluate``/``chat`` load it (the recipe's dtype and attention, the
    adapter through plain PEFT), gives the logits of the model that was trained (still in memory), not the base's."""
    from finetune.inference import load_run

    recipe = tiny_recipe(tiny_llama, alpaca_file, tmp_path)
    recipe = dataclasses.replace(recipe, eval=EvalSpec(samples=0))
    result = train(recipe)
    samples = json.loads((result.output_dir / "samples.json").read_text())
    assert samples["eval_loss_after"] < samples["eval_loss_before"]
    reloaded = load_run(result.output_dir)
    ids = torch.tensor([[7, 8, 9, 10]])
    with torch.no_grad():
        expected, actual = result.model.eval()(ids).logits, reloaded.model(ids).logits
        with reloaded.model.disable_adapter():
            base_logits = reloaded.model(ids).logits
    assert torch.equal(actual, expected)
    assert (actual - base_logits).abs().max() > 1e-2


def test_full_fine_tuning_updates_every_weight_and_saves_a_plain_model(tiny_opt, alpaca_file, tmp_path):
    recipe = dataclasses.replace(tiny_recipe(tiny_opt, alpaca_file, tmp_path, optim="sgd"), method=FullSpec())
    result = train(recipe)
    saved = AutoModelForCausalLM.from_pretrained(result.output_dir)
    original = AutoModelForCausalLM.from_pretrained(tiny_opt)
    changed = [k for k, v in saved.state_dict().items() if not torch.equal(v, original.state_dict()[k])]
    assert "model.decoder.layers.0.self_attn.q_proj.weight" in changed
    assert (result.output_dir / "model.safetensors").exists() and (result.output_dir / "template.json").exists()


def _one_step(tiny_llama, train_file, tmp_path, batch, accumulation, smoothing=0.0):
    """Parameters after one SGD step (lr 1, no clipping) on the same 4 examples, and the logged loss."""
    recipe = tiny_recipe(tiny_llama, train_file, tmp_path)
    family = get_family("llama")
    tokenizer = load_tokenizer(tiny_llama, family)
    data = build_datasets(dataclasses.replace(recipe.data, eval_split=0.0), tokenizer, get_template("chatml"), 96)
    torch.manual_seed(0)
    from finetune.methods import apply_method

    model = apply_method(AutoModelForCausalLM.from_pretrained(tiny_llama), recipe.method, family)
    spec = dataclasses.replace(recipe.training, max_steps=1, per_device_train_batch_size=batch,
                               gradient_accumulation_steps=accumulation, optim="sgd", learning_rate=1.0,
                               max_grad_norm=0.0, lr_scheduler_type="constant", label_smoothing_factor=smoothing)
    trainer = SFTTrainer(model=model, args=training_arguments(spec, tmp_path / f"run{batch}"),
                         train_dataset=data.train.select(range(4)), data_collator=PaddingCollator(0))
    trainer.train()
    return state(model), trainer.state.log_history[0]["loss"]


def test_bs1_with_accumulation_4_equals_bs4(tiny_llama, alpaca_file, tmp_path):
    # The 4 examples have different numbers of supervised tokens, so averaging per micro-batch would differ.
    big, loss_big = _one_step(tiny_llama, alpaca_file, tmp_path, batch=4, accumulation=1)
    small, loss_small = _one_step(tiny_llama, alpaca_file, tmp_path, batch=1, accumulation=4)
    assert abs(loss_big - loss_small) <= 1e-5
    for name in big:
        assert torch.allclose(big[name], small[name], atol=1e-5, rtol=0), name


def test_label_smoothing_equals_a_hand_computation(tiny_llama, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    labels = torch.tensor([[-100, -100, 11, 12, 13, -100], [-100, 21, 22, -100, -100, -100]])
    batch = {"input_ids": torch.tensor([[1, 2, 11, 12, 13, 0], [3, 21, 22, 0, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]]), "labels": labels}
    epsilon = 0.1
    args = training_arguments(TrainingSpec(label_smoothing_factor=epsilon), "unused")
    trainer = SFTTrainer(model=model, args=args)
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        logprobs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
    terms = []
    for row in range(2):
        for t in range(1, 6):
            if labels[row, t] != -100:
                lp = logprobs[row, t - 1]
                terms.append((1 - epsilon) * -lp[labels[row, t]] + epsilon * -lp.mean())
    assert len(terms) == 5
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-6)


def test_dry_run_stops_before_training(tiny_llama, alpaca_file, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="finetune")
    result = train(tiny_recipe(tiny_llama, alpaca_file, tmp_path), dry_run=True)
    assert result.output_dir is None and not (tmp_path / "run").exists()
    text = caplog.text
    assert "Label audit (train): 24 examples" in text and "trainable parameters" in text


@pytest.mark.parametrize("bad", ["/no/such/model", "meta-llama/Llama-2-7b-hf-not-here"])
def test_missing_model_says_how_to_get_it(bad, alpaca_file, tmp_path):
    from finetune.models import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="is not on this machine.*model.path="):
        train(tiny_recipe(bad, alpaca_file, tmp_path))
