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
# Evaluation as the official evaluate.sh scores ADGEN (jieba ROUGE-1/2/L + character BLEU-4 of answers sampled with
#   top_p 0.7, temperature 0.95, up to 128 new tokens), at every checkpoint (1,000 steps) instead of only at the
#   end, on the first 200 dev examples to bound the cost (the full dev set is 1,070; `eval.generate_limit=0` for
#   all); the checkpoint with the best eval_rouge-l is kept as the run.
from finetune import DataSpec, EvalSpec, ModelSpec, PTuningSpec, Recipe, TrainingSpec

recipe = Recipe(
    name="chatglm2_ptuning",
    model=ModelSpec(path="THUDM/chatglm2-6b", family="chatglm2", max_length=192),
    data=DataSpec(train="data/adgen_sample/train.jsonl", eval="data/adgen_sample/dev.jsonl", format="adgen",
                  prompt_column="content", response_column="summary", template="chatglm2"),
    method=PTuningSpec(pre_seq_len=128, prefix_projection=False, prefix_dropout=0.1),
    training=TrainingSpec(max_steps=3000, per_device_train_batch_size=1, gradient_accumulation_steps=16,
                          learning_rate=2e-2, lr_scheduler_type="linear", logging_steps=10, save_strategy="steps",
                          save_steps=1000, eval_strategy="steps", eval_steps=1000, per_device_eval_batch_size=16,
                          activation_checkpointing=True,
                          extra={"metric_for_best_model": "eval_rouge-l", "load_best_model_at_end": True}),
    eval=EvalSpec(samples=4, max_new_tokens=128, generate=True, generate_limit=200, do_sample=True, top_p=0.7,
                  temperature=0.95),
)
