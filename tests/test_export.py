"""GGUF export: a tiny random Llama read back by transformers' GGUF loader gives the merged model's logits, the
trained template survives as the file's chat template, the Modelfile states the trained format, refusals are
one line."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune import DataSpec, EvalSpec, FullSpec, LoraSpec, ModelSpec, PTuningSpec, Recipe, TrainingSpec
from finetune.conversation import user_text
from finetune.export import ExportRefused, PromptFormat, export_run, jinja_chat_template, modelfile_text
from finetune.export.vocab import bpe_pre_tokenizer
from finetune.merge import PROBE, merge_run
from finetune.runs import write_run_files
from finetune.templates import get_template, template_names
from finetune.train import train

DATA = Path(__file__).resolve().parents[1] / "data" / "unicode_names" / "train.jsonl"
# Each export is read back by several tests and loaders: parsed once (conftest.gguf_parsed_once).
pytestmark = pytest.mark.usefixtures("gguf_parsed_once")


def _recipe(model_path, tmp, method=None, **model):
    return Recipe(name="tiny", model=ModelSpec(path=str(model_path), max_length=96, dtype="float32", **model),
                  data=DataSpec(train=str(DATA), format="alpaca", template="chatml"),
                  method=method or LoraSpec(r=4, alpha=8, dropout=0.0),
                  training=TrainingSpec(output_dir=str(tmp / "run"), max_steps=3, per_device_train_batch_size=4,
                                        learning_rate=5e-2), eval=EvalSpec(samples=0))


def _trained(tmp, model_path, method=None):
    return train(_recipe(model_path, tmp, method)).output_dir


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_llama):
    """A 3-step LoRA run on the tiny Llama and its merged model (the reference the GGUF must reproduce)."""
    tmp = tmp_path_factory.mktemp("export")
    run_dir = _trained(tmp, tiny_llama)
    merge_run(run_dir, tmp / "merged")
    return Path(run_dir), tmp / "merged"


def _logits(model_dir, ids, **kwargs):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kwargs).eval()
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def exported(lora_run, tmp_path_factory):
    """The LoRA run exported once per type (reading a GGUF with SmolLM2's 49k-token vocabulary back costs ~10 s)."""
    folder, files = tmp_path_factory.mktemp("gguf"), {}

    def export(quant):
        path = folder / f"tiny-{quant}.gguf"
        if quant not in files:
            files[quant] = (path, export_run(lora_run[0], path, quant))
        return files[quant]
    return export


# Tolerances on the tiny model's logits (|logit| <= 0.75): measured max differences f16 3.2e-4, q8_0 1.4e-2,
# q4_0 9.8e-2 (weights rounded to 11 bits, 8 bits per block of 32, 4 bits per block of 32), with margin.
@pytest.mark.parametrize("quant, tolerance, top1", [("f16", 2e-3, 1.0), ("q8_0", 5e-2, 0.95), ("q4_0", 0.25, 0.75)])
def test_gguf_read_back_by_transformers_gives_the_merged_logits(quant, tolerance, top1, lora_run, exported):
    merged = lora_run[1]
    path, report = exported(quant)
    assert report["merge"]["max_abs_logit_diff"] < 1e-4
    assert report["tensor_types"].get(quant.upper(), 0) >= 14  # every block matrix in the asked type
    ids = AutoTokenizer.from_pretrained(merged)(PROBE, return_tensors="pt").input_ids
    reference, exported_logits = _logits(merged, ids), _logits(path.parent, ids, gguf_file=path.name)
    assert (reference - exported_logits).abs().max() < tolerance
    assert (reference.argmax(-1) == exported_logits.argmax(-1)).float().mean() >= top1


def test_gguf_tokenizer_and_chat_template_read_back(lora_run, exported):
    path, _ = exported("f16")
    tokenizer, read_back = AutoTokenizer.from_pretrained(lora_run[1]), AutoTokenizer.from_pretrained(
        path.parent, gguf_file=path.name)
    assert read_back(PROBE).input_ids == tokenizer(PROBE).input_ids
    # The file's chat template renders the run's ChatML exactly (no system prompt, as the run trained).
    conversation = [{"role": "user", "content": "Name Ī"}, {"role": "assistant", "content": "LATIN"},
                    {"role": "user", "content": "And Ā?"}]
    expected = "".join(t for t, _ in get_template("chatml").render(conversation, eos="<|im_end|>"))
    assert read_back.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True) == expected


def test_gguf_metadata(lora_run, exported):
    path, _ = exported("f16")
    fields = gguf.GGUFReader(path).fields

    def value(key):
        return fields[key].contents()

    config = json.loads((lora_run[1] / "config.json").read_text())
    assert value("general.architecture") == "llama" and value("llama.block_count") == 2
    assert value("llama.context_length") == config["max_position_embeddings"]
    assert value("llama.attention.head_count_kv") == 2 and value("llama.rope.dimension_count") == 16
    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == "smollm"
    assert value("tokenizer.ggml.eos_token_id") == 2 and value("tokenizer.ggml.add_bos_token") is False
    assert len(fields["tokenizer.ggml.merges"].data) > 40_000
    assert value("general.file_type") == gguf.LlamaFileType.MOSTLY_F16


CONVERSATIONS = [
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Name a colour. "},
     {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another?"},
     {"role": "assistant", "content": "Red."}, {"role": "user", "content": "One more?"}],
    [{"role": "user", "content": "Translate.", "input": "chat"}, {"role": "assistant", "content": "cat"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}],
]


@pytest.mark.parametrize("name", [n for n in template_names() if n != "tokenizer"])
def test_jinja_chat_template_renders_the_project_template_exactly(name, tokenizer):
    template = get_template(name)
    for system in (None, "Trained system."):
        jinja = jinja_chat_template(PromptFormat(template, bos="<s>", eos="</s>", system=system))
        for conversation in CONVERSATIONS:
            if system is not None and conversation[0]["role"] != "system":
                conversation = [{"role": "system", "content": system}] + conversation  # what the reader adds
            expected = "".join(t for t, _ in template.render(conversation, bos="<s>", eos="</s>"))
            rendered = tokenizer.apply_chat_template(conversation, chat_template=jinja, tokenize=False,
                                                     add_generation_prompt=True)
            assert rendered == expected, (name, system, conversation)


def test_modelfile_states_the_trained_template_stops_and_system():
    chatml = PromptFormat(get_template("chatml"), bos="", eos="<|im_end|>", system="")
    text = modelfile_text("demo.gguf", chatml)
    assert "FROM ./demo.gguf\n" in text and "SYSTEM" not in text
    assert '{{ "<|im_start|>user\\n" }}{{ .Content }}{{ "<|im_end|>\\n<|im_start|>assistant\\n" }}' in text
    assert text.splitlines()[-1] == 'PARAMETER stop "<|im_end|>"'
    llama2 = modelfile_text("x.gguf", PromptFormat(get_template("llama2"), bos="<s>", eos="</s>"))
    assert 'SYSTEM """You are a helpful, respectful' in llama2 and 'PARAMETER stop "</s>"' in llama2
    assert '{{ "<<SYS>>\\n" }}{{ $.System }}' in llama2
    dialogsum = modelfile_text("x.gguf", PromptFormat(get_template("dialogsum"), bos="", eos="</s>", system="S"))
    assert 'SYSTEM """S"""' in dialogsum
    assert 'PARAMETER stop "### End"\nPARAMETER stop "</s>"' in dialogsum
    with pytest.raises(ExportRefused, match="numbers rounds"):
        modelfile_text("x.gguf", PromptFormat(get_template("chatglm2"), bos="", eos="</s>"))


def test_export_writes_the_modelfile_beside_the_file(exported):
    path, report = exported("q8_0")
    assert report["modelfile"] == str(path.with_suffix(".Modelfile"))
    assert path.with_suffix(".Modelfile").read_text().startswith("# chatml prompt format")
    assert not list(path.parent.glob(".export-*"))  # the merged model was a temporary


@pytest.mark.parametrize("method", [FullSpec(), LoraSpec(r=4, alpha=8, dropout=0.0, use_dora=True)],
                         ids=["full", "dora"])
def test_full_and_dora_runs_export(method, tiny_llama, tmp_path):
    run_dir = _trained(tmp_path, tiny_llama, method)
    export_run(run_dir, tmp_path / "x.gguf")
    reference = tmp_path / "ref"
    if method.name == "full":
        reference = Path(run_dir)
    else:
        merge_run(run_dir, reference)
    ids = AutoTokenizer.from_pretrained(reference)(PROBE, return_tensors="pt").input_ids
    assert (_logits(reference, ids) - _logits(tmp_path, ids, gguf_file="x.gguf")).abs().max() < 2e-3


def _fake_run(tmp_path, recipe):
    """A run folder with only its records: refusals must come before any weights are read."""
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True)
    write_run_files(run_dir, get_template("chatml"), recipe)
    return run_dir


def test_refusals_name_the_reason(tiny_llama, tiny_opt, tiny_glm, tmp_path):
    cases = [(_recipe(tiny_opt, tmp_path), "the opt family"), (_recipe(tiny_glm, tmp_path), "the chatglm2 family"),
             (_recipe(tiny_llama, tmp_path, PTuningSpec(pre_seq_len=4)), "no GGUF runtime"),
             (_recipe(tiny_llama, tmp_path, rope_scaling="dynamic", rope_factor=2.0), "no llama.cpp equivalent")]
    for i, (recipe, reason) in enumerate(cases):
        with pytest.raises(ExportRefused, match=reason):
            export_run(_fake_run(tmp_path / str(i), recipe), tmp_path / "x.gguf")
    with pytest.raises(ExportRefused, match="no quantiser for Q4_K_M"):
        export_run(tmp_path / "0" / "run", tmp_path / "x.gguf", "q4_k_m")
    with pytest.raises(ExportRefused, match="unknown type"):
        export_run(tmp_path / "0" / "run", tmp_path / "x.gguf", "q3")
    assert not (tmp_path / "x.gguf").exists()


def test_cli_refusal_is_one_line_without_traceback(tiny_opt, tmp_path):
    run_dir = _fake_run(tmp_path, _recipe(tiny_opt, tmp_path))
    done = subprocess.run([sys.executable, "-m", "finetune.export", str(run_dir), str(tmp_path / "x.gguf")],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "cannot export" in done.stderr and "Traceback" not in done.stderr


def test_unknown_bpe_pre_tokenizer_is_refused(tokenizer):
    assert bpe_pre_tokenizer(tokenizer) == "smollm"
    other = dataclasses.make_dataclass("Other", [])()
    other.encode = lambda text: [1, 2, 3]
    with pytest.raises(ExportRefused, match="pre-tokenizer"):
        bpe_pre_tokenizer(other)


def test_linear_rope_scaling_from_the_recipe_is_written(tiny_llama, tmp_path):
    recipe = _recipe(tiny_llama, tmp_path, rope_scaling="linear", rope_factor=2.0)
    run_dir = train(recipe).output_dir
    export_run(run_dir, tmp_path / "x.gguf")
    fields = gguf.GGUFReader(tmp_path / "x.gguf").fields
    assert fields["llama.rope.scaling.type"].contents() == "linear"
    assert fields["llama.rope.scaling.factor"].contents() == 2.0


@pytest.fixture(scope="module")
def tiny_sentencepiece_llama(tmp_path_factory):
    """A tiny random Llama with a 320-piece SentencePiece BPE tokenizer (byte fallback, as Llama 2 / Mistral) trained
    here on the demo data: no Llama 2 tokenizer is available offline."""
    import sentencepiece
    from transformers import LlamaConfig, LlamaTokenizer

    folder = tmp_path_factory.mktemp("sp_llama")
    records = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(f"{r['instruction']} {r['output']}" for r in records),  # others: byte fallback
        model_prefix=str(folder / "tokenizer"), vocab_size=320, model_type="bpe", byte_fallback=True,
        character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    tokenizer = LlamaTokenizer.from_pretrained(folder)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_sentencepiece_tokenizer_round_trip(tiny_sentencepiece_llama, tmp_path):
    run_dir = _trained(tmp_path, tiny_sentencepiece_llama)
    assert not (Path(run_dir) / "tokenizer.model").exists()  # the scores come from the base model's folder
    export_run(run_dir, tmp_path / "sp.gguf", "q8_0")
    fields = gguf.GGUFReader(tmp_path / "sp.gguf").fields
    assert fields["tokenizer.ggml.model"].contents() == "llama"
    assert len(set(fields["tokenizer.ggml.scores"].contents())) > 50  # the pieces' merge scores, not placeholders
    merge_run(run_dir, tmp_path / "merged")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    read_back = AutoTokenizer.from_pretrained(tmp_path, gguf_file="sp.gguf")
    text = "Give the official Unicode name of this character.\n\nĪ LATIN CAPITAL LETTER I WITH MACRON"
    assert read_back(text).input_ids == tokenizer(text).input_ids
    ids = tokenizer(text, return_tensors="pt").input_ids
    reference, exported = _logits(tmp_path / "merged", ids), _logits(tmp_path, ids, gguf_file="sp.gguf")
    assert (reference - exported).abs().max() < 5e-2


GO_RENDER = """package main

import ("encoding/json"; "os"; "text/template")

type Message struct { Role string; Content string }
type Data struct { System string; Messages []Message }

func main() {
    var in struct { Template string; Data Data }
    if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil { panic(err) }
    t := template.Must(template.New("ollama").Parse(in.Template))
    if err := t.Execute(os.Stdout, in.Data); err != nil { panic(err) }
}
"""


@pytest.fixture(scope="module")
def go_render(tmp_path_factory):
    """Go's text/template (the engine Ollama runs TEMPLATE with), built once; skipped where Go is missing."""
    import shutil

    if shutil.which("go") is None:
        pytest.skip("Go is not installed (apt-get install golang-go): Ollama templates not executed")
    folder = tmp_path_factory.mktemp("go")
    (folder / "render.go").write_text(GO_RENDER)
    env = {"GOCACHE": str(folder / "cache"), "HOME": str(folder), "PATH": shutil.os.environ["PATH"]}
    subprocess.run(["go", "build", "-o", str(folder / "render"), str(folder / "render.go")], check=True, env=env)

    def render(template, system, messages):
        data = {"Template": template, "Data": {"System": system, "Messages": [
            {"Role": m["role"], "Content": m["content"]} for m in messages]}}
        done = subprocess.run([str(folder / "render")], input=json.dumps(data), capture_output=True, text=True,
                              check=True)
        return done.stdout
    return render


@pytest.mark.parametrize("name", [n for n in template_names() if n not in ("tokenizer", "chatglm2")])
def test_ollama_template_renders_the_project_template_in_go(name, go_render):
    from finetune.export import ollama_template
    from finetune.export.chat_template import trained_system

    template = get_template(name)
    for system in (None, "Trained system."):
        fmt = PromptFormat(template, bos="<s>", eos="</s>", system=system)
        for conversation in CONVERSATIONS:
            # Ollama sends what the user typed: no separate Alpaca input, no surrounding spaces to strip.
            conversation = [{"role": m["role"], "content": _typed(m)} for m in conversation]
            given = conversation[0]["content"] if conversation[0]["role"] == "system" else None
            if given is None and system is not None:
                conversation = [{"role": "system", "content": system}] + conversation
            expected = "".join(t for t, _ in template.render(conversation, bos="<s>", eos="</s>"))
            # The runtime prepends BOS itself (add_bos_token), so the Go template leaves the first one out.
            expected = expected.removeprefix("<s>")
            ollama_system = given if given is not None else trained_system(fmt)  # SYSTEM fills .System
            assert go_render(ollama_template(fmt), ollama_system, conversation) == expected, (name, conversation)


def _typed(message):
    return user_text(message).strip()
