"""Generation evaluation and verbalizer scoring on a tiny LoRA run trained once for the module."""
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from finetune import DataSpec, EvalSpec, LoraSpec, ModelSpec, PTuningSpec, Recipe, TrainingSpec
from finetune.data import Encoder
from finetune.evaluate import main
from finetune.evaluation.metrics import compute_scores
from finetune.evaluation.verbalizer import score_candidates, verbalizer_accuracy
from finetune.templates import get_template
from finetune.train import train

DEMO = Path(__file__).resolve().parents[1] / "data" / "unicode_names" / "train.jsonl"


def train_tiny_run(model_path, folder: Path, method=LoraSpec(r=4, alpha=8, dropout=0.0)) -> Path:
    """Four steps (LoRA by default) on 32 demo examples, 8 held out; samples.json holds 2 held-out generations."""
    data = folder / "train.jsonl"
    data.write_text("\n".join(DEMO.read_text(encoding="utf-8").splitlines()[:32]) + "\n", encoding="utf-8")
    recipe = Recipe(
        name="tiny", model=ModelSpec(path=str(model_path), max_length=96),
        data=DataSpec(train=str(data), format="alpaca", template="chatml", eval_split=0.25),
        method=method,
        training=TrainingSpec(output_dir=str(folder / "run"), max_steps=4, per_device_train_batch_size=4,
                              learning_rate=1e-2, logging_steps=1),
        eval=EvalSpec(samples=2, max_new_tokens=6),
    )
    return train(recipe).output_dir


@pytest.fixture(scope="module")
def run_dir(tiny_llama, tmp_path_factory):
    return train_tiny_run(tiny_llama, tmp_path_factory.mktemp("evaluate"))


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_evaluate_writes_predictions_and_metrics_that_compute_scores_reproduces(run_dir, tmp_path, capsys):
    assert main([str(run_dir), "--out", str(tmp_path), "--max-new-tokens", "6", "--batch-size", "4"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "predictions.jsonl"]
    rows = read_jsonl(tmp_path / "predictions.jsonl")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(rows) == metrics["examples"] == 8  # the 25% held out of 32, rebuilt as training split it
    assert set(rows[0]) == {"prompt", "reference", "prediction"}
    expected = compute_scores([r["prediction"] for r in rows], [r["reference"] for r in rows])
    assert metrics["scores"] == {**expected, "language": "en"}
    assert "rouge-l" in capsys.readouterr().out


def test_saved_run_reproduces_the_generations_training_wrote(run_dir, tmp_path):
    # Same prompts in the same batch (training generated its 2 samples in one batch), greedy: identical text.
    # LoRA's B starts at zero, so "before" is the base model's answer and --baseline must reproduce it too.
    written = json.loads((run_dir / "samples.json").read_text())
    samples = written["samples"]
    assert main([str(run_dir), "--out", str(tmp_path), "--limit", "2", "--max-new-tokens", "6", "--baseline"]) == 0
    rows = read_jsonl(tmp_path / "predictions.jsonl")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["scores"] == {**written["scores"]["scores"], "language": metrics["scores"]["language"]}
    assert metrics["baseline"] == {**written["scores"]["baseline"], "language": metrics["baseline"]["language"]}
    assert [r["prompt"] for r in rows] == [s["prompt"] for s in samples]
    assert [r["reference"] for r in rows] == [s["reference"] for s in samples]
    assert [r["prediction"] for r in rows] == [s["after"] for s in samples]
    assert [r["baseline"] for r in rows] == [s["before"] for s in samples]
    assert any(s["after"] != s["before"] for s in samples)  # otherwise the comparison above proves little


def test_ptuning_run_reproduces_its_samples_too(tiny_llama, tmp_path):
    ptuning = PTuningSpec(pre_seq_len=4, prefix_projection=True, prefix_hidden_size=32, prefix_dropout=0.0)
    run = train_tiny_run(tiny_llama, tmp_path, ptuning)
    samples = json.loads((run / "samples.json").read_text())["samples"]
    assert main([str(run), "--limit", "2", "--max-new-tokens", "6"]) == 0
    assert [r["prediction"] for r in read_jsonl(run / "eval" / "predictions.jsonl")] == [s["after"] for s in samples]


def test_baseline_prints_both_columns_and_their_difference(run_dir, tmp_path, capsys):
    assert main([str(run_dir), "--out", str(tmp_path), "--limit", "3", "--max-new-tokens", "4", "--baseline"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()[1:]
    assert header.split() == ["metric", "run", "base", "diff"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for line in lines:
        name, run, base, diff = line.split()
        assert float(run) == pytest.approx(metrics["scores"][name], abs=0.005)
        assert float(base) == pytest.approx(metrics["baseline"][name], abs=0.005)
        assert metrics["difference"][name] == pytest.approx(metrics["scores"][name] - metrics["baseline"][name])
    assert {"rouge-1", "rouge-2", "rouge-l", "exact-match", "bleu-4"} == {line.split()[0] for line in lines}


def test_missing_eval_data_is_a_clear_error(run_dir, tmp_path, capsys):
    assert main([str(run_dir), "--data", str(tmp_path / "nope.jsonl")]) == 2
    assert "data file not found" in capsys.readouterr().err


def by_hand(model, prompt_ids, word_ids):
    """Sum of log p(word token | prompt, earlier word tokens), one unpadded forward per candidate."""
    ids = torch.tensor([prompt_ids + word_ids])
    with torch.no_grad():
        logprobs = model(ids).logits[0].log_softmax(-1)
    return sum(float(logprobs[len(prompt_ids) - 1 + i, t]) for i, t in enumerate(word_ids))


def test_verbalizer_picks_the_likeliest_word_by_hand(tiny_llama, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    template = get_template("chatml")
    verbalizer = {"positive": "great", "negative": "rather terrible"}  # different token counts on purpose
    words = {label: tokenizer(w, add_special_tokens=False)["input_ids"] for label, w in verbalizer.items()}
    assert len(words["negative"]) > len(words["positive"]) >= 1
    prompts = [[{"role": "user", "content": text}] for text in ("The film was", "I did not like the food")]
    encoder = Encoder(tokenizer, template, 10**9)
    hand = [{label: by_hand(model, encoder.encode_prompt(p), ids) for label, ids in words.items()} for p in prompts]
    choices = [max(h, key=h.get) for h in hand]
    # Gold: the first example agrees with the model's choice, the second does not -> 50% accuracy.
    gold = [choices[0], next(label for label in verbalizer if label != choices[1])]
    examples = [p + [{"role": "assistant", "content": g}] for p, g in zip(prompts, gold)]
    result = verbalizer_accuracy(model, tokenizer, template, examples, verbalizer, progress=False)
    assert [p["prediction"] for p in result["predictions"]] == choices
    for predicted, expected in zip(result["predictions"], hand):
        assert predicted["scores"] == pytest.approx(expected, abs=1e-4)
    assert result["accuracy"] == 50.0 and result["correct"] == 1 and result["examples"] == 2
    assert sum(v["gold"] for v in result["per_label"].values()) == 2
    # Length normalisation divides each score by its token count; answers may be given as words too.
    prompt = encoder.encode_prompt(prompts[0])
    normalised = score_candidates(model, prompt, list(words.values()), normalize=True)
    assert normalised == pytest.approx([hand[0][label] / len(ids) for label, ids in words.items()], abs=1e-4)
    as_words = [p + [{"role": "assistant", "content": verbalizer[g]}] for p, g in zip(prompts, gold)]
    assert verbalizer_accuracy(model, tokenizer, template, as_words, verbalizer, progress=False)["accuracy"] == 50.0


def test_verbalizer_option_of_the_cli(run_dir, tmp_path, capsys):
    data = tmp_path / "labels.jsonl"
    records = [{"instruction": "Is this good? " + t, "output": label}
               for t, label in [("Lovely", "yes"), ("Awful", "no"), ("Fine", "yes")]]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "verbalizer.json").write_text(json.dumps({"yes": "Yes", "no": "No"}))
    out = tmp_path / "out"
    assert main([str(run_dir), "--data", str(data), "--verbalizer", str(tmp_path / "verbalizer.json"),
                 "--out", str(out), "--baseline"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    rows = read_jsonl(out / "predictions.jsonl")
    assert metrics["examples"] == 3 and {r["prediction"] for r in rows} <= {"yes", "no"}
    assert metrics["scores"]["accuracy"] == pytest.approx(100 * sum(r["prediction"] == r["reference"]
                                                                    for r in rows) / 3)
    assert "accuracy" in capsys.readouterr().out and "accuracy" in metrics["difference"]


def test_the_recipes_column_mapping_reads_its_eval_file(run_dir, tmp_path):
    """A run trained on renamed columns (``data.columns``) is evaluated on its own eval file without ``--data``."""
    import shutil

    renamed = tmp_path / "eval.jsonl"
    rows = [json.loads(line) for line in DEMO.read_text(encoding="utf-8").splitlines()[:3]]
    renamed.write_text("".join(json.dumps({"question": r["instruction"], "context": r["input"],
                                           "answer": r["output"]}) + "\n" for r in rows), encoding="utf-8")
    run = shutil.copytree(run_dir, tmp_path / "run")
    recipe = json.loads((run / "recipe.json").read_text())
    recipe["data"].update(eval=str(renamed), columns={"instruction": "question", "input": "context",
                                                      "output": "answer"})
    (run / "recipe.json").write_text(json.dumps(recipe))
    assert main([str(run), "--out", str(tmp_path / "out"), "--max-new-tokens", "2"]) == 0
    predictions = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    assert [p["reference"] for p in predictions] == [r["output"] for r in rows]
