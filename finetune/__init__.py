"""Fine-tuning: LoRA/QLoRA jobs, datasets, the job runner, distillation, edge export, and the
demo world (`finetune.demo`)."""
