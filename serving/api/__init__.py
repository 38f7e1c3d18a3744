"""The gateway's own routers: the OpenAI API, API keys, and health and metrics."""
