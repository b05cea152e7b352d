# LoRA on Qwen3-0.6B for tool calling with reasoning: think, call the tool, read its result, answer.
#
#   python data/tool_calls/make.py          # (already committed) rebuilds the 120 + 16 conversations
#   python -m finetune.run recipes/qwen3_tools_lora.py
#   python -m finetune.check template recipes/qwen3_tools_lora.py
#
# Assumes: Qwen3-0.6B in the local Hugging Face cache (or model.path=DIR); one GPU with >= 8 GB.
# Data: OpenAI-style messages with `tools` (one JSON schema per record), assistant `tool_calls` and
#       `reasoning_content`, `tool` results, and a follow-up with its reasoning inline as <think>...</think>.
# Training: the text Qwen3's template renders for the whole conversation. Tool calls and answers train; tool
#           results and user turns are context. The template keeps the reasoning of the turns after the last
#           user question and drops the earlier ones, so only those train (data.thinking=auto keeps it).
# Batch: 4 conversations x 4 accumulation = 16/step, 261-298 tokens each with Qwen3's tokenizer (mean 275; the
#        tool schema in the system prompt is a third of it) -> ~4,400 tokens/step; 120 / 16 = 7.5 steps/epoch
#        x 4 epochs = 30 steps.
from finetune import DataSpec, EvalSpec, LoraSpec, ModelSpec, Recipe, TrainingSpec

recipe = Recipe(
    name="qwen3_tools_lora",
    model=ModelSpec(path="Qwen/Qwen3-0.6B", max_length=1024),
    data=DataSpec(train="data/tool_calls/train.jsonl", eval="data/tool_calls/eval.jsonl", format="messages",
                  thinking="auto"),
    method=LoraSpec(r=16, alpha=32, dropout=0.05),
    training=TrainingSpec(num_train_epochs=4, per_device_train_batch_size=4, gradient_accumulation_steps=4,
                          learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0.1, logging_steps=2,
                          eval_strategy="epoch"),
    eval=EvalSpec(samples=4, max_new_tokens=96),
)
