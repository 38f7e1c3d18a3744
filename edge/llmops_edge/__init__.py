"""The edge side of the llmops stack: `llm-edge run` answers with a bundle (an ONNX model, its
generation config, tokenizer and chat template, on ONNX Runtime GenAI), and `llm-edge sync`
keeps a device on the bundle an alias of the gateway points at, verified and switched
atomically, with the previous bundle kept for `llm-edge rollback`."""
