"""A preference prompt given as messages is refused as an sft prompt is when it ends with an assistant turn or has no
user turn: the chosen and rejected answers would follow the assistant's own turn (two assistant turns in a row), and
the model was taught to prefer one continuation of its own answer without a word saying so."""

from __future__ import annotations

import pytest

from tunelab.data.read import Fields, row_to_record


@pytest.mark.parametrize(
    ("prompt", "reason"),
    [
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "assistant turn"),
        ([{"role": "system", "content": "Be brief."}], "user turn"),
    ],
)
def test_a_prompt_ending_with_the_assistant_or_without_a_user_is_refused(prompt, reason):
    with pytest.raises(ValueError, match=reason):
        row_to_record({"prompt": prompt, "chosen": "yes", "rejected": "no"}, "pairs.jsonl:1", "preference", Fields())


def test_a_dialogue_prompt_ending_with_the_user_is_read():
    prompt = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"}]
    record = row_to_record({"prompt": prompt, "chosen": "yes", "rejected": "no"}, "pairs.jsonl:1", "preference", Fields())
    assert [m["role"] for m in record.prompt] == ["user", "assistant", "user"]
