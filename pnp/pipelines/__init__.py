"""The diffusers pipelines (PnPPipeline, PnPXLPipeline) and where their weights come from: the loading
rules, single-file checkpoints, LoRA adapters, weight downloads and the random-weight test models."""
