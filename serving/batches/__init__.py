"""OpenAI's Batch API: JSONL files of requests run at a lower priority than live traffic."""
