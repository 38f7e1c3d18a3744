"""The production backend: supervised vLLM OpenAI servers, reached over HTTP."""
