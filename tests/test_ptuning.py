"""P-Tuning v2 on tiny Llama (kv heads < heads) and OPT: what trains, what is saved, checkpointing, official layout."""
import dataclasses
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from finetune import DataSpec, EvalSpec, ModelSpec, PTuningSpec, Recipe, TrainingSpec
from finetune.methods.ptuning import PrefixEncoder, apply_ptuning, load_prefix_model
from finetune.methods.ptuning_io import export_official, read_prefix
from finetune.train import train

SPEC = PTuningSpec(pre_seq_len=4, prefix_projection=True, prefix_hidden_size=32, prefix_dropout=0.0)


def prefix_model(path, spec=SPEC, seed=0):
    torch.manual_seed(seed)
    model = apply_ptuning(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), spec, None)
    torch.nn.init.normal_(model.prefix_encoder.embedding.weight, std=1.0)  # a prefix that visibly matters
    return model


def batch():
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    return ids, mask, labels


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_opt"])
def test_only_prefix_parameters_train_and_the_prefix_changes_the_output(fixture, request):
    path = request.getfixturevalue(fixture)
    model = prefix_model(path)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prefix_encoder.embedding.weight", "prefix_encoder.trans.0.weight",
                         "prefix_encoder.trans.0.bias", "prefix_encoder.trans.2.weight", "prefix_encoder.trans.2.bias"}
    ids, mask, _ = batch()
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert not torch.allclose(model(input_ids=ids, attention_mask=mask).logits,
                              base(input_ids=ids, attention_mask=mask).logits)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_opt"])
def test_real_tokens_start_at_position_zero_with_left_padding(fixture, request):
    """A left-padded row gives the same logits as the same tokens unpadded: positions start at 0 after padding."""
    model = prefix_model(request.getfixturevalue(fixture)).eval()
    ids, mask, _ = batch()
    padded = model(input_ids=ids, attention_mask=mask).logits[0, 2:]
    alone = model(input_ids=ids[:1, 2:], attention_mask=mask[:1, 2:]).logits[0]
    assert torch.allclose(padded, alone, atol=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_opt"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(fixture, request):
    path = request.getfixturevalue(fixture)
    results = []
    for checkpointing in (False, True):
        model = prefix_model(path).train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        ids, mask, labels = batch()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads))
    (loss_off, grads_off), (loss_on, grads_on) = results
    assert torch.allclose(loss_off, loss_on, atol=1e-6)
    for name in grads_off:
        assert grads_off[name].abs().sum() > 0, name
        assert torch.allclose(grads_off[name], grads_on[name], atol=1e-6), name


def test_generation_matches_step_by_step_forward(tiny_llama):
    """The custom decode loop (cache pre-filled with the prefix) agrees with full forwards."""
    model = prefix_model(tiny_llama).eval()
    ids, mask, _ = batch()
    out = model.generate(ids, mask, max_new_tokens=3)
    seq, seq_mask = ids.clone(), mask.clone()
    for _ in range(3):
        nxt = model(input_ids=seq, attention_mask=seq_mask).logits[:, -1].argmax(-1, keepdim=True)
        seq, seq_mask = torch.cat([seq, nxt], 1), torch.cat([seq_mask, torch.ones_like(nxt)], 1)
    assert torch.equal(out, seq)


def test_generation_stops_at_any_of_several_end_tokens(tiny_llama):
    """Templates that end answers with their own token (Gemma's <end_of_turn>) stop on it or on EOS."""
    model = prefix_model(tiny_llama).eval()
    ids, mask, _ = batch()
    first = model.generate(ids, mask, max_new_tokens=1)[:, -1].tolist()
    never = next(i for i in range(1, 100) if i not in first)
    out = model.generate(ids, mask, max_new_tokens=5, eos_token_id=[first[0], never, first[1]])
    assert out.shape[1] == ids.shape[1] + 1  # every row ended on its first token, each on a different stop id


def test_ptuning_run_saves_only_the_prefix_and_reloads_identically(tiny_llama, alpaca_file, tmp_path):
    recipe = Recipe(
        name="tiny_ptuning", model=ModelSpec(path=str(tiny_llama), max_length=96),
        data=DataSpec(train=str(alpaca_file), format="alpaca", template="chatml", eval_split=0.25),
        method=dataclasses.replace(SPEC, pre_seq_len=8),
        training=TrainingSpec(output_dir=str(tmp_path / "run"), max_steps=6, per_device_train_batch_size=4,
                              learning_rate=2e-2, logging_steps=1, activation_checkpointing=True),
        eval=EvalSpec(samples=2, max_new_tokens=4))
    result = train(recipe)
    run = result.output_dir
    files = {p.name for p in run.iterdir()}
    assert {"prefix_config.json", "prefix_encoder.safetensors", "recipe.json", "template.json", "tokenizer.json",
            "samples.json"} <= files
    assert not {"model.safetensors", "adapter_model.safetensors"} & files  # the prefix alone is saved
    config, state = read_prefix(run)
    assert config["pre_seq_len"] == 8 and config["kv_heads"] == 2 and set(state) == {
        "embedding.weight", "trans.0.weight", "trans.0.bias", "trans.2.weight", "trans.2.bias"}
    assert result.eval_loss_after < result.eval_loss_before

    trained = result.model.eval()  # the model as it finished training, still in memory
    dtype = trained.get_input_embeddings().weight.dtype
    reloaded = load_prefix_model(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=dtype), run)
    ids, mask, _ = batch()
    with torch.no_grad():
        expected = trained(input_ids=ids, attention_mask=mask).logits
        actual = reloaded(input_ids=ids, attention_mask=mask).logits
        with reloaded.disable_prefix():
            base = reloaded(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(actual, expected)
    assert (actual - base).abs().max() > 1e-2
    assert json.loads((run / "recipe.json").read_text())["method"]["name"] == "ptuning"


def test_official_chatglm2_layout_round_trips(tiny_llama, tmp_path):
    model = prefix_model(tiny_llama).eval()
    path = export_official(model, tmp_path / "official")
    keys = set(torch.load(path, weights_only=True))
    assert keys == {"transformer.prefix_encoder.embedding.weight", "transformer.prefix_encoder.trans.0.weight",
                    "transformer.prefix_encoder.trans.0.bias", "transformer.prefix_encoder.trans.2.weight",
                    "transformer.prefix_encoder.trans.2.bias"}
    reloaded = load_prefix_model(AutoModelForCausalLM.from_pretrained(tiny_llama), tmp_path / "official")
    ids, mask, _ = batch()
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits,
                       reloaded(input_ids=ids, attention_mask=mask).logits)


def test_official_prefix_of_the_wrong_width_is_rejected(tiny_llama, tmp_path):
    wrong = PrefixEncoder(4, num_layers=3, kv_heads=2, head_dim=16)
    (tmp_path / "bad").mkdir()
    torch.save({"transformer.prefix_encoder." + k: v for k, v in wrong.state_dict().items()},
               tmp_path / "bad" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="does not match the base model"):
        load_prefix_model(AutoModelForCausalLM.from_pretrained(tiny_llama), tmp_path / "bad")


def test_disable_prefix_answers_as_the_untrained_base(tiny_llama):
    model = prefix_model(tiny_llama).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    ids, mask, _ = batch()
    with model.disable_prefix():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits,
                           base(input_ids=ids, attention_mask=mask).logits)
        assert torch.equal(model.generate(ids, mask, max_new_tokens=3, pad_token_id=0),
                           base.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False,
                                         pad_token_id=0))
    assert not torch.equal(model(input_ids=ids, attention_mask=mask).logits,
                           base(input_ids=ids, attention_mask=mask).logits)
