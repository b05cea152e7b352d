# P-Tuning v2 on OPT-350m: 32 virtual tokens of past keys/values in each of its 24 layers; the model is frozen.
#
#   python -m finetune.run recipes/opt_ptuning.py model.path=/models/opt-350m
#
# Assumes: facebook/opt-350m on disk. Trainable: 32 x 24 layers x 2 x 1024 = 1.6M params (no projection).
# Batch: 8 x 2 accumulation x ~60 tokens = ~960 tokens/step; 5 epochs over 360 examples = 225 steps at lr 2e-2
# (prefixes need a far higher rate than LoRA; ChatGLM2's official scripts use 2e-2).
from finetune import DataSpec, ModelSpec, PTuningSpec, Recipe, TrainingSpec

recipe = Recipe(
    name="opt_ptuning",
    model=ModelSpec(path="facebook/opt-350m", family="opt", max_length=256),
    data=DataSpec(train="data/unicode_names/train.jsonl", eval="data/unicode_names/eval.jsonl", format="alpaca",
                  template="alpaca"),
    method=PTuningSpec(pre_seq_len=32, prefix_projection=False, prefix_dropout=0.1),
    training=TrainingSpec(num_train_epochs=5, per_device_train_batch_size=8, gradient_accumulation_steps=2,
                          learning_rate=2e-2, logging_steps=10),
)
