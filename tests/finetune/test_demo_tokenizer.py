import pytest
from jinja2 import TemplateError

from finetune.demo.skills import SKILLS, generate_splits
from finetune.demo.tokenizer import ASSISTANT, BOS, END, SPECIAL_TOKENS, USER, train_demo_tokenizer

CHAT = [{"role": "user", "content": "What is 12 + 30?"}, {"role": "assistant", "content": "42"}]


@pytest.fixture(scope="module")
def tokenizer():
    texts = []
    for skill in SKILLS.values():
        train, _ = generate_splits(skill, seed=0, num_train=200, num_eval=0)
        texts += [m["content"] for row in train for m in row["messages"]]
    return train_demo_tokenizer(texts, vocab_size=320)


def test_vocab_size_and_special_tokens(tokenizer):
    assert len(tokenizer) == 320
    for token in SPECIAL_TOKENS:
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id
    assert tokenizer.eos_token == END
    assert tokenizer.bos_token == BOS
    assert tokenizer.pad_token_id is not None


@pytest.mark.parametrize(
    "text", ["What is 12 + 30?", "Reverse this word: qzxw", "  two  spaces\nand é ü 日本", ""]
)
def test_round_trip(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_digits_are_single_tokens(tokenizer):
    tokens = tokenizer.tokenize("1234")
    assert tokens == ["1", "2", "3", "4"]


def test_chat_template_renders_messages(tokenizer):
    text = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert text == f"{BOS}{USER}What is 12 + 30?{END}{ASSISTANT}42{END}"
    prompt = tokenizer.apply_chat_template(CHAT[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == f"{BOS}{USER}What is 12 + 30?{END}{ASSISTANT}"


def test_system_messages_are_rendered(tokenizer):
    chat = [{"role": "system", "content": "Be brief."}, *CHAT[:1]]
    assert tokenizer.apply_chat_template(chat, tokenize=False).startswith(
        f"{BOS}<|system|>Be brief.{END}{USER}"
    )


def test_unknown_role_is_refused(tokenizer):
    with pytest.raises(TemplateError, match="unknown role ipython"):
        tokenizer.apply_chat_template([{"role": "ipython", "content": "x"}], tokenize=False)


def test_tools_calls_and_results_are_rendered(tokenizer):
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 1}}}
    messages = [
        {"role": "user", "content": "1 + 1?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "2"},
    ]
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    assert text.startswith(f'{tokenizer.bos_token}<|system|>Tools:\nadd {{"type": "object"}}')
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>' in text
    assert text.endswith("<|user|><tool_response>2</tool_response><|end|>")


def test_assistant_mask_covers_the_reply_and_its_end(tokenizer):
    encoded = tokenizer.apply_chat_template(
        CHAT, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    masked = [t for t, m in zip(ids, mask, strict=True) if m]
    assert tokenizer.decode(masked) == f"42{END}"
