"""Data formats and data sources are registries: a toy format and a toy source, defined and registered in this file
alone, are read, tokenized, trained on and converted by the same code as the built-in ones, and are gone after."""
from __future__ import annotations

import json
from typing import Iterator

import pytest
from helpers import write_jsonl

from finetune import DataSpec, EvalSpec, LoraSpec, ModelSpec, Recipe, RecipeError, TrainingSpec
from finetune.data import DataError, build_datasets, read_examples
from finetune.data.formats import DataFormat, format_names, get_format, register_format
from finetune.data.sources import Chunk, Source, SourceKind, register_source, source_kinds
from finetune.data.tools import convert_file
from finetune.recipe import DATA_FORMATS
from finetune.templates import get_template
from finetune.train import train

COLOURS = [{"q": f"Name colour {i}.", "a": colour} for i, colour in enumerate(["Blue.", "Red.", "Green.", "Teal."] * 2)]


def read_qa(where: str, record: dict) -> list[dict]:
    """The toy layout: ``{"q": prompt, "a": answer}``."""
    if not isinstance(record.get("q"), str) or not isinstance(record.get("a"), str):
        raise DataError(f"{where}: a qa record needs string fields 'q' and 'a'.")
    return [{"role": "user", "content": record["q"]}, {"role": "assistant", "content": record["a"]}]


def write_qa(messages: list[dict], lose) -> dict:
    if len(messages) > 2:
        lose("all but the last turn")
    return {"q": messages[-2]["content"], "a": messages[-1]["content"]}


class InlineSource(Source):
    """The toy source: ``inline:NAME`` is the list ``NAMED[NAME]`` of records, in memory."""

    NAMED = {"colours": COLOURS}
    unit = "record"

    def __init__(self, location: str):
        self.name, self.records = location, self.NAMED[location.removeprefix("inline:")]

    def fingerprint(self) -> str:
        return json.dumps(self.records)

    def chunks(self, size: int) -> Iterator[Chunk]:
        for start in range(0, len(self.records), size):
            yield Chunk("record", range(start, start + size), self.records[start:start + size])


@pytest.fixture()
def toy_data(registries):
    register_format(DataFormat("qa", read_qa, text_fields=("q", "a"), write=write_qa, writes=("q", "a")))
    register_source(SourceKind("inline", lambda location: location.startswith("inline:"),
                               lambda location, **_: InlineSource(location)))


def test_a_format_and_a_source_registered_in_one_file_tokenize_and_train(toy_data, tokenizer, tiny_llama, tmp_path):
    spec = DataSpec(train="inline:colours", format="qa", template="chatml")
    example = build_datasets(spec, tokenizer, get_template("chatml"), max_length=64).train[0]
    supervised = [i for i, label in zip(example["input_ids"], example["labels"]) if label != -100]
    assert tokenizer.decode(supervised) == "Blue.<|im_end|>"  # the answer is trained, the prompt is not
    assert "<|im_start|>user\nName colour 0.<|im_end|>" in tokenizer.decode(example["input_ids"])

    result = train(Recipe(
        name="toy_format", model=ModelSpec(path=str(tiny_llama), max_length=64), data=spec,
        method=LoraSpec(r=4, alpha=8, dropout=0.0),
        training=TrainingSpec(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4,
                              logging_steps=1), eval=EvalSpec(samples=0)))
    assert json.loads((result.output_dir / "recipe.json").read_text())["data"]["format"] == "qa"
    assert (result.output_dir / "adapter_model.safetensors").exists()


def test_the_data_tools_convert_to_and_from_a_registered_format(toy_data, tmp_path):
    src = write_jsonl(tmp_path / "messages.jsonl", [{"messages": read_qa("", r), "id": n} for n, r in
                                                    enumerate(COLOURS)])
    assert convert_file(src, tmp_path / "qa.jsonl", "messages", "qa")["written"] == len(COLOURS)
    assert [json.loads(line) for line in (tmp_path / "qa.jsonl").read_text().splitlines()] == [
        {**r, "id": n} for n, r in enumerate(COLOURS)]  # fields the format does not use are carried over
    assert read_examples(tmp_path / "qa.jsonl", "qa").conversations == [read_qa("", r) for r in COLOURS]


def test_names_are_checked_against_the_registries(toy_data):
    with pytest.raises(RecipeError, match="data.format='qaa' is not one of .*did you mean qa"):
        DataSpec(train="x", format="qaa")
    with pytest.raises(DataError, match="Unknown data format 'nope'; known formats: alpaca, .*qa"):
        get_format("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_format(get_format("qa"))
    with pytest.raises(ValueError, match="already registered"):
        register_source(SourceKind("inline", bool, InlineSource))


def test_the_toy_format_and_source_are_gone_after_the_tests_that_registered_them():
    assert format_names() == list(DATA_FORMATS)  # the built-ins, as the recipe knows them before data loads
    assert source_kinds() == ["json", "csv", "parquet", "folder", "hub"]
    with pytest.raises(RecipeError, match="data.format='qa' is not one of"):
        DataSpec(train="x", format="qa")
