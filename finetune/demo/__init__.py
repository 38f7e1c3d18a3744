"""The demo world: skills tasks with exact answers and a small base model trained on some of them.

- `finetune.demo.skills`: the skills, their chat JSONL splits and `exact_match`
- `finetune.demo.tokenizer`: the byte-level BPE tokenizer and its chat template
- `finetune.demo.spec`: `DemoSpec` and its presets `FULL` and `TINY`
- `finetune.demo.training`, `finetune.demo.evaluation`: the training loop and exact-match scoring
- `finetune.demo.build`: `build_demo_model` and `register_demo_model`
- `finetune.demo.embedding`: `register_embedding_model` (all-MiniLM-L6-v2, shipped offline)
"""
