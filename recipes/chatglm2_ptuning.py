# P-Tuning v2 of ChatGLM2-6B on ADGEN (content -> summary) with the official scripts' settings.
#
#   python -m finetune.run recipes/chatglm2_ptuning.py model.path=/models/chatglm2-6b data.train=AdvertiseGen/train.json
#
# Assumes: the original THUDM/chatglm2-6b folder (config.json, tokenizer.model, weights) on disk; it is converted
# on load to transformers' GlmForCausalLM (no trust_remote_code). One GPU with >= 16 GB (bf16; 4-bit with
# model.quantization.quant_type=nf4 fits in ~8 GB). The bundled data/adgen_sample is a small stand-in.
# Official ptuning/train.sh: PRE_SEQ_LEN=128, LR=2e-2, max_source_length=64, max_target_length=128,
#   per_device_train_batch_size=1, gradient_accumulation_steps=16, max_steps=3000, save_steps=1000.
# Batch: 1 x 16 accumulation x <= 192 tokens (64 + 128) = <= 3,072 tokens/step; 3,000 steps = 48,000 examples.
# Trainable: 128 x 28 layers x 2 x 2 groups x 128 dims = 1.8M params (no projection); base frozen.
from finetune import DataSpec, ModelSpec, PTuningSpec, Recipe, TrainingSpec

recipe = Recipe(
    name="chatglm2_ptuning",
    model=ModelSpec(path="THUDM/chatglm2-6b", family="chatglm2", max_length=192),
    data=DataSpec(train="data/adgen_sample/train.jsonl", eval="data/adgen_sample/dev.jsonl", format="adgen",
                  prompt_column="content", response_column="summary", template="chatglm2"),
    method=PTuningSpec(pre_seq_len=128, prefix_projection=False, prefix_dropout=0.1),
    training=TrainingSpec(max_steps=3000, per_device_train_batch_size=1, gradient_accumulation_steps=16,
                          learning_rate=2e-2, lr_scheduler_type="linear", logging_steps=10, save_strategy="steps",
                          save_steps=1000, activation_checkpointing=True),
)
