"""The serving gateway: the OpenAI HTTP API over vLLM servers and the in-process engine."""
