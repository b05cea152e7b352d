# P-Tuning v2 on the embedded SmolLM2-135M-Instruct (a Llama: 9 query heads over 3 kv heads). `make demo-ptuning`.
#
#   python -m finetune.run recipes/smollm2_ptuning.py
#
# Assumes: nothing but this repository; CPU is enough.
# Trainable: 16 virtual tokens x 30 layers x 2 (key, value) x 3 kv heads x 64 dims = 184K params, base frozen.
# Same data and template as recipes/smollm2_lora.py; 8 x ~35 tokens = ~280 tokens/step (+16 prefix positions per
# layer in attention), 360 / 8 = 45 steps/epoch x 3 epochs = 135 steps at lr 2e-2 (the official ChatGLM2 rate).
from finetune import DataSpec, EvalSpec, ModelSpec, PTuningSpec, Recipe, TrainingSpec

recipe = Recipe(
    name="smollm2_ptuning",
    model=ModelSpec(path="smollm2-135m-instruct", max_length=128),
    data=DataSpec(train="data/unicode_names/train.jsonl", eval="data/unicode_names/eval.jsonl", format="alpaca",
                  template="chatml", system=""),
    method=PTuningSpec(pre_seq_len=16, prefix_projection=False, prefix_dropout=0.0),
    training=TrainingSpec(num_train_epochs=3, per_device_train_batch_size=8, learning_rate=2e-2,
                          lr_scheduler_type="cosine", warmup_steps=0.05, logging_steps=5),
    eval=EvalSpec(samples=8, max_new_tokens=24),
)
