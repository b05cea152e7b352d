"""bf16 end to end: every method trains in bf16 on tiny Llama, OPT and GLM models, close to fp32 on the same
batches, and reloads to the same answers; the precision policy; each kernel's bf16-vs-fp32 parity.

Two bf16 modes are tested against an fp32 run of the same recipe (same data order, same initialisation):
``bf16`` is the GPU default (weights in bf16 and the Trainer's bf16 autocast), ``autocast`` is bf16 autocast over
fp32 weights (``training.bf16=true`` alone). Tolerances: every logged training loss within 1 % of the fp32 run's
(measured: <= 0.4 % on these models), and the loss must fall.
"""
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from finetune import DataSpec, EvalSpec, FullSpec, LoraSpec, ModelSpec, PTuningSpec, Recipe, TrainingSpec
from finetune.evaluation.generation import generate, prompt_messages
from finetune.inference import load_run
from finetune.methods import apply_method
from finetune.methods.fused_lora import FusedLoraLinear
from finetune.methods.ptuning import apply_ptuning
from finetune.models import get_family, load_model
from finetune.precision import native_bf16, upcast_trainable
from finetune.recipe import QuantSpec
from finetune.train import train, training_arguments
from finetune.training.collators import PaddingCollator, PaddingFreeCollator
from finetune.training.loss import causal_lm_loss, chunked_linear_cross_entropy
from finetune.training.trainers import SFTTrainer

# bf16-sensitive (every test compares bf16 against fp32 or a reload): make test-avx2 reruns them without
# native bf16.
pytestmark = pytest.mark.bf16

LOSS_TOLERANCE = 0.01  # relative, per logged step
LORA = LoraSpec(r=4, alpha=8, dropout=0.0)
GLM_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")
PREFIX = PTuningSpec(pre_seq_len=4, prefix_projection=True, prefix_hidden_size=32, prefix_dropout=0.0)
METHODS = {  # name -> (method, extra ModelSpec fields, extra TrainingSpec fields)
    "lora": (LORA, {}, {}),
    "lora_peft_layer": (dataclasses.replace(LORA, fused=False), {}, {}),
    "dora": (dataclasses.replace(LORA, use_dora=True), {}, {}),
    "qlora": (LORA, {"quantization": QuantSpec()}, {}),
    "ptuning": (PREFIX, {}, {}),
    "ptuning_plain_checkpointed": (dataclasses.replace(PREFIX, prefix_projection=False), {},
                                   {"activation_checkpointing": True}),
    "full": (FullSpec(), {}, {}),
}
CASES = [("llama", m) for m in METHODS] + [("opt", m) for m in ("lora", "ptuning", "full")] + [
    ("glm", m) for m in ("lora", "ptuning_plain_checkpointed", "full")]
MODES = {  # mode -> (model.dtype, training.bf16, QLoRA compute dtype)
    "fp32": ("float32", False, "float32"),
    "bf16": ("bfloat16", None, "bfloat16"),  # None: on, because the compute dtype is bf16
    "autocast": ("float32", True, "float32"),
}


def _recipe(family, method, mode, path, data, out):
    spec, model_extra, training_extra = METHODS[method]
    dtype, bf16, compute = MODES[mode]
    if "quantization" in model_extra:
        model_extra = {"quantization": QuantSpec(compute_dtype=compute)}
    if family == "glm":  # a GLM body with SmolLM2's tokenizer: the llama family's tokenizer handling and template
        model_extra = {**model_extra, "family": "llama"}
        spec = dataclasses.replace(spec, target_modules=GLM_LINEAR) if isinstance(spec, LoraSpec) else spec
    return Recipe(
        name=f"{family}_{method}_{mode}", model=ModelSpec(path=str(path), max_length=96, dtype=dtype, **model_extra),
        data=DataSpec(train=str(data), format="alpaca", template="chatml", eval_split=0.25),
        method=spec, training=TrainingSpec(output_dir=str(out), max_steps=4, per_device_train_batch_size=4,
                                           learning_rate=1e-2, logging_steps=1, bf16=bf16, **training_extra),
        eval=EvalSpec(samples=2, max_new_tokens=6))


def _losses(run_dir) -> list[float]:
    logs = [json.loads(line) for line in (run_dir / "logs.jsonl").read_text().splitlines()]
    return [entry["loss"] for entry in logs if "loss" in entry]


@pytest.fixture(scope="module")
def fp32_runs(tmp_path_factory):
    """fp32 reference runs, one per (family, method), made on first use and shared by both bf16 modes."""
    cache = {}

    def run(family, method, path, data):
        if (family, method) not in cache:
            out = tmp_path_factory.mktemp(f"{family}_{method}_fp32")
            cache[family, method] = train(_recipe(family, method, "fp32", path, data, out / "run"))
        return cache[family, method]

    return run


@pytest.fixture(scope="module")
def sixteen_examples(tmp_path_factory):
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "data" / "unicode_names" / "train.jsonl"
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("\n".join(source.read_text(encoding="utf-8").splitlines()[:16]) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("mode", ["bf16", "autocast"])
@pytest.mark.parametrize("family, method", CASES)
def test_every_method_trains_in_bf16_close_to_fp32_and_reloads(family, method, mode, request, fp32_runs,
                                                               sixteen_examples, tmp_path):
    path = request.getfixturevalue(f"tiny_{family}")
    reference = fp32_runs(family, method, path, sixteen_examples)
    result = train(_recipe(family, method, mode, path, sixteen_examples, tmp_path / "run"))
    run = result.output_dir

    losses, expected = _losses(run), _losses(reference.output_dir)
    assert len(losses) == len(expected) == 4 and all(map(torch.isfinite, torch.tensor(losses)))
    for step, (loss, fp32) in enumerate(zip(losses, expected)):
        assert abs(loss - fp32) <= LOSS_TOLERANCE * fp32, (step, loss, fp32)
    assert result.eval_loss_after < result.eval_loss_before

    # What trained was kept in fp32, whatever the base's dtype (the saved weights are the trained parameters).
    weights = {"full": "model.safetensors"}.get(method, "prefix_encoder.safetensors" if "ptuning" in method
                                                else "adapter_model.safetensors")
    assert {t.dtype for t in load_file(run / weights).values()} == {torch.float32}

    # Reloaded as a user does (finetune.evaluate/chat: plain PEFT for adapters, transformers for full runs), the
    # run answers the held-out prompts exactly as the trained model did at the end of training.
    loaded = load_run(run)
    samples = json.loads((run / "samples.json").read_text())["samples"]
    prompts = [prompt_messages(s["messages"] + [{"role": "assistant", "content": ""}])[0] for s in samples]
    answers = generate(loaded.model, loaded.tokenizer, loaded.template, prompts, max_new_tokens=6, progress=False)
    assert answers == [s["after"] for s in samples]


def test_trainable_parameters_and_optimiser_state_are_fp32_over_a_bf16_base(tiny_llama, tokenizer, tmp_path):
    family, bf16_base = get_family("llama"), ModelSpec(path=str(tiny_llama), dtype="bfloat16")
    for spec in (LORA, PREFIX):
        model = upcast_trainable(apply_method(load_model(tiny_llama, family, bf16_base), spec, family))
        trainable = {p.dtype for p in model.parameters() if p.requires_grad}
        frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
        assert trainable == {torch.float32} and frozen == {torch.bfloat16}, spec
    ids = tokenizer("The capital of France is Paris.")["input_ids"]
    batch = [{"input_ids": ids, "labels": ids}] * 2
    args = training_arguments(TrainingSpec(max_steps=1, logging_steps=1), tmp_path, compute=torch.bfloat16)
    assert args.bf16
    trainer = SFTTrainer(model=model, args=args, train_dataset=batch, data_collator=PaddingFreeCollator())
    trainer.train()
    moments = [t for state in trainer.optimizer.state.values() for t in state.values() if torch.is_tensor(t)
               and t.dim() > 0]
    assert moments and {t.dtype for t in moments} == {torch.float32}


def _changed_fraction(before: dict, after: dict) -> float:
    changed = sum(int((after[k].float() != before[k].float()).sum()) for k in before)
    return changed / sum(v.numel() for v in before.values())


def test_full_fine_tuning_keeps_fp32_master_weights_so_small_updates_land(tiny_llama, alpaca_file, tmp_path):
    """One AdamW step at lr 1e-5 moves each weight by ~1e-5, below half a bf16 ulp of most weights."""
    recipe = Recipe(name="master", model=ModelSpec(path=str(tiny_llama), max_length=96, dtype="bfloat16"),
                    data=DataSpec(train=str(alpaca_file), format="alpaca", template="chatml"), method=FullSpec(),
                    training=TrainingSpec(output_dir=str(tmp_path / "run"), max_steps=1, learning_rate=1e-5,
                                          lr_scheduler_type="constant", max_grad_norm=0.0),
                    eval=EvalSpec(samples=0))
    result = train(recipe)
    original = load_file(tiny_llama / "model.safetensors")
    saved = load_file(result.output_dir / "model.safetensors")
    assert _changed_fraction(original, {k: saved[k] for k in original}) > 0.9

    # The same step with the weights themselves in bf16 (pure-bf16 AdamW) loses most updates: the test can fail.
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    model(input_ids=ids, labels=ids).loss.backward()
    torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0).step()
    assert _changed_fraction(before, model.state_dict()) < 0.5


# ---------------------------------------------------------------- kernel parity, bf16 against fp32


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max() / b.detach().float().abs().max())


@pytest.mark.parametrize("case", ["bf16_head_fp32_hidden", "bf16_both", "fp32_head_bf16_compute"])
def test_chunked_loss_in_bf16(case, monkeypatch):
    """Loss within 1e-2 and gradients within 3e-2 (relative to their largest entry) of fp32; and equal (1e-5) to
    the plain loss over the same bf16 logits, with log-sum-exp in fp32 in both."""
    import finetune.training.loss

    monkeypatch.setattr(finetune.training.loss, "CHUNK_ELEMENTS", 5 * 512)  # several chunks and a ragged one
    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 64)
    weight = torch.randn(512, 64) * 0.1
    targets = torch.randint(0, 512, (3, 7))
    targets[0, :2] = -100

    def run(h, w, dtype):
        h = h.clone().requires_grad_()
        head = torch.nn.Linear(64, 512, bias=False)
        head.weight = torch.nn.Parameter(w.clone())
        loss = chunked_linear_cross_entropy(h, head, targets, dtype=dtype)
        loss.backward()
        return loss, h.grad, head.weight.grad

    reference = run(hidden, weight, None)
    h, w, dtype = {"bf16_head_fp32_hidden": (hidden, weight.bfloat16(), None),  # accelerate's fp32 outputs
                   "bf16_both": (hidden.bfloat16(), weight.bfloat16(), None),
                   "fp32_head_bf16_compute": (hidden, weight, torch.bfloat16)}[case]  # full FT under autocast
    loss, grad_hidden, grad_weight = run(h, w, dtype)
    assert loss.dtype == torch.float32 and grad_hidden.dtype == h.dtype and grad_weight.dtype == w.dtype
    assert _relative(loss, reference[0]) < 1e-2
    assert _relative(grad_hidden, reference[1]) < 3e-2 and _relative(grad_weight, reference[2]) < 3e-2
    plain = causal_lm_loss(F.linear(h.bfloat16(), w.bfloat16()), targets)
    assert abs(loss.item() - plain.item()) < 1e-5


def _lora_model(path, fused, dtype):
    torch.manual_seed(0)
    model = apply_method(AutoModelForCausalLM.from_pretrained(path, dtype=dtype),
                         dataclasses.replace(LORA, fused=fused), get_family("llama"))
    model = upcast_trainable(model)
    torch.manual_seed(1)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero, which would leave half the arithmetic untested
            torch.nn.init.normal_(parameter, std=0.02)
    return model.train()


def _loss_and_grads(model, ids, autocast: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach().float(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("weights", [torch.bfloat16, torch.float32])
def test_fused_lora_layer_runs_under_autocast_close_to_fp32(weights, tiny_llama, tokenizer):
    """Under bf16 autocast the fused layer runs (bf16 base or fp32 base) and gives peft's layer's loss (1e-3) and
    gradients (3e-2), both within 1e-2 / 5e-2 of fp32; adapter gradients come back in fp32."""
    ids = torch.tensor([tokenizer("The capital of France is Paris. " * 3)["input_ids"]] * 2)
    fused, peft_layer = _lora_model(tiny_llama, True, weights), _lora_model(tiny_llama, False, weights)
    layers = [m for m in fused.modules() if isinstance(m, FusedLoraLinear)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layers and all(m._plain_adapter(ids.float()) == "default" for m in layers)
    fp32_loss, fp32_grads = _loss_and_grads(_lora_model(tiny_llama, False, torch.float32), ids, autocast=False)
    (fused_loss, fused_grads), (peft_loss, peft_grads) = (_loss_and_grads(m, ids, True) for m in (fused, peft_layer))
    assert abs(fused_loss - peft_loss) < 1e-3 * peft_loss and abs(fused_loss - fp32_loss) < 1e-2 * fp32_loss
    for name, grad in fused_grads.items():
        assert grad.dtype == torch.float32, name
        assert _relative(grad, peft_grads[name]) < 3e-2 and _relative(grad, fp32_grads[name]) < 5e-2, name


def _packed_features(tokenizer):
    texts = ("The capital of France is Paris.", "Hello there, how are you today?", "A b c d e f g")
    return [{"input_ids": tokenizer(t)["input_ids"], "labels": tokenizer(t)["input_ids"]} for t in texts]


@pytest.mark.parametrize("family", ["llama", "glm"])
def test_sdpa_packed_in_bf16_close_to_fp32_and_to_padded_sdpa(family, request, tokenizer):
    """A packed bf16 batch through sdpa_packed: loss within 1e-2 of fp32 and 5e-3 of the padded bf16 batch through
    transformers' sdpa; gradients of every weight within 5e-2 of fp32 (relative to their largest entry)."""
    path = request.getfixturevalue(f"tiny_{family}")
    features = _packed_features(tokenizer)
    packed, padded = PaddingFreeCollator()(features), PaddingCollator(tokenizer.pad_token_id)(features)

    def run(dtype, batch, attention):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attention).train()
        loss = SFTTrainer(model=model, args=training_arguments(TrainingSpec(), "unused")).compute_loss(
            model, dict(batch))
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    fp32_loss, fp32_grads = run(torch.float32, packed, "sdpa_packed")
    bf16_loss, bf16_grads = run(torch.bfloat16, packed, "sdpa_packed")
    dense_loss, _ = run(torch.bfloat16, padded, "sdpa")
    assert abs(bf16_loss - fp32_loss) < 1e-2 * fp32_loss and abs(bf16_loss - dense_loss) < 5e-3 * dense_loss
    assert fp32_grads.keys() == bf16_grads.keys()
    for name, grad in bf16_grads.items():
        assert grad.dtype == torch.bfloat16 and _relative(grad, fp32_grads[name]) < 5e-2, name


@pytest.mark.parametrize("projection", [True, False])
def test_prefix_encoder_over_a_bf16_base_close_to_fp32(projection, tiny_llama, tokenizer):
    """P-Tuning v2 over a bf16 base (and under autocast): loss within 1e-2 and prefix gradients within 5e-2 of the
    fp32 model's; the encoder and its gradients stay fp32."""
    ids = torch.tensor([tokenizer("The capital of France is Paris. " * 2)["input_ids"]] * 2)
    spec = dataclasses.replace(PREFIX, prefix_projection=projection)

    def run(dtype, autocast):
        torch.manual_seed(0)
        model = apply_ptuning(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=dtype), spec, None).train()
        torch.nn.init.normal_(model.prefix_encoder.embedding.weight, std=1.0)
        return _loss_and_grads(model, ids, autocast)

    fp32_loss, fp32_grads = run(torch.float32, False)
    for dtype, autocast in ((torch.bfloat16, False), (torch.bfloat16, True), (torch.float32, True)):
        loss, grads = run(dtype, autocast)
        assert abs(loss - fp32_loss) < 1e-2 * fp32_loss, (dtype, autocast)
        for name, grad in grads.items():
            assert grad.dtype == torch.float32 and _relative(grad, fp32_grads[name]) < 5e-2, (dtype, autocast, name)


# ---------------------------------------------------------------- QLoRA placement and dtypes, flash-attention kwargs


def test_the_4bit_load_device_is_this_ranks_gpu(monkeypatch):
    """Where ``load_model`` builds a 4-bit model (``quantized_device``), read from LOCAL_RANK; no model is loaded."""
    from finetune.models.loading import quantized_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert quantized_device() == "cuda:3"
    monkeypatch.delenv("LOCAL_RANK")
    assert quantized_device() == "cuda:0"  # a single process started without torchrun
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert quantized_device() == "cpu"


@pytest.mark.parametrize("compute", ["bfloat16", "float32"])
def test_qlora_head_and_unquantised_weights_follow_compute_dtype(compute, tiny_llama):
    import bitsandbytes as bnb

    family = get_family("llama")
    spec = ModelSpec(path=str(tiny_llama), quantization=QuantSpec(compute_dtype=compute))
    model = upcast_trainable(apply_method(load_model(tiny_llama, family, spec), LORA, family))
    dtype = getattr(torch, compute)
    assert model.get_output_embeddings().weight.dtype == dtype
    frozen = {p.dtype for n, p in model.named_parameters() if not p.requires_grad and "weight" in n
              and type(p).__name__ != "Params4bit"}
    assert frozen == {dtype}
    assert all(m.compute_dtype == dtype for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}


def test_padding_free_collator_gives_flash_attention_its_varlen_arguments():
    """The same boundaries as transformers' own DataCollatorWithFlattening(return_flash_attn_kwargs=True)."""
    from transformers import DataCollatorWithFlattening

    features = [{"input_ids": list(range(1, n + 1)), "labels": list(range(1, n + 1))} for n in (5, 2, 9, 1)]
    ours = PaddingFreeCollator(flash_attn_kwargs=True)(features)
    theirs = DataCollatorWithFlattening(return_flash_attn_kwargs=True)(features)
    for key in ("cu_seq_lens_q", "cu_seq_lens_k"):
        assert ours[key].dtype == torch.int32 and ours[key].tolist() == theirs[key].tolist() == [0, 5, 7, 16, 17]
    assert ours["max_length_q"] == ours["max_length_k"] == theirs["max_length_q"] == 9
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert "cu_seq_lens_q" not in PaddingFreeCollator()(features)  # sdpa_packed reads the position ids instead


_AVX2_PROBE = """
import json, torch
from finetune.precision import machine_kind, native_bf16, resolve_dtype
torch.manual_seed(0)
a, b = torch.randn(256, 256).bfloat16(), torch.randn(256, 256).bfloat16()
print(json.dumps({"native": native_bf16(), "auto": str(resolve_dtype("auto")), "kind": machine_kind(),
                  "capability": torch.backends.cpu.get_cpu_capability(), "bits": (a @ b).view(torch.int16).tolist()}))
"""


@pytest.mark.skipif(not native_bf16("cpu"), reason="this CPU has no native bf16: make test is already the AVX2 run")
def test_the_avx2_stand_in_really_runs_other_bf16_kernels():
    """``make test-avx2`` is worth running only if its variables change what computes: the same bf16 matmul must
    give other bits, ``auto`` must pick fp32 and the machine must be reported as one without native bf16."""
    import os
    import subprocess
    import sys

    def probe(**env):
        base = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
        out = subprocess.run([sys.executable, "-c", _AVX2_PROBE], capture_output=True, text=True, check=True,
                             env={**base, **env}).stdout
        return json.loads(out.strip().splitlines()[-1])

    native = probe()
    stand_in = probe(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    assert native["native"] and native["auto"] == "torch.bfloat16" and "native bf16" in native["kind"]
    assert not stand_in["native"] and stand_in["auto"] == "torch.float32" and stand_in["capability"] == "AVX2"
    assert "without native bf16" in stand_in["kind"]
    assert native["bits"] != stand_in["bits"]
