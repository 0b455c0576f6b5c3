"""The classify recipe's auxiliary loss (``classify.prompt_lm_weight``): the prompts' own next-token cross-entropy,
checked against each prompt scored alone with the plain causal LM, packed and unpacked, with and without the
shared prefix computed once per micro-batch."""

import pytest
import torch
import torch.nn.functional as F

from tunelab.data.tokenize import ClassifyExample
from tunelab.train.batching import ClassifyCollate
from tunelab.train.losses import classify_loss_sum, prompt_lm_loss_mean


def _examples(vocab: int, prefix: list[int]) -> list[ClassifyExample]:
    g = torch.Generator().manual_seed(0)
    return [ClassifyExample(prefix + torch.randint(3, vocab, (n,), generator=g).tolist(), i % 3) for i, n in enumerate([3, 9, 5, 12, 1, 7])]


def _independent(model, examples, prefix_length: int) -> torch.Tensor:
    """Mean CE of every prompt token after the prefix predicting the next one, the last token excluded (each prompt alone)."""
    losses = []
    for example in examples:
        ids = torch.tensor([example.input_ids])
        logits = model(input_ids=ids).logits[0].float()
        # With the prefix run apart, the prefix's own last token does not predict the first example token.
        start = prefix_length
        for i in range(start, len(example.input_ids) - 1):
            losses.append(F.cross_entropy(logits[i], ids[0, i + 1]))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("packing", [True, False])
@pytest.mark.parametrize("reuse", [True, False])
def test_the_prompt_lm_loss_is_each_prompts_own_next_token_loss(tiny_model, tiny_tokenizer, packing, reuse):
    vocab = len(tiny_tokenizer)
    prefix = torch.randint(3, vocab, (8,), generator=torch.Generator().manual_seed(1)).tolist()
    examples = _examples(vocab, prefix)
    tiny_model.eval()
    collate = ClassifyCollate(pad_id=0, max_length=64, packing=packing, prefix_ids=tuple(prefix) if reuse else None)
    batch = collate(examples)
    with torch.no_grad():
        from tunelab.train.losses import _classify_states

        got = prompt_lm_loss_mean(tiny_model, batch, _classify_states(tiny_model, batch))
        expected = _independent(tiny_model, examples, len(prefix) if reuse else 0)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_the_weight_adds_the_prompt_loss_to_training_steps_only(tiny_model, tiny_tokenizer):
    vocab = len(tiny_tokenizer)
    examples = _examples(vocab, [])
    batch = ClassifyCollate(pad_id=0, max_length=64)(examples)
    labels = torch.tensor([40, 41, 42])
    plain = classify_loss_sum(tiny_model, batch, labels)
    with_lm = classify_loss_sum(tiny_model, batch, labels, prompt_lm_weight=0.5)
    from tunelab.train.losses import _classify_states

    with torch.no_grad():
        prompt = prompt_lm_loss_mean(tiny_model, batch, _classify_states(tiny_model, batch))
    torch.testing.assert_close(with_lm, plain + 0.5 * len(examples) * prompt, rtol=1e-5, atol=1e-4)
    with torch.no_grad():  # validation: the plain label loss, whatever the weight
        torch.testing.assert_close(classify_loss_sum(tiny_model, batch, labels, prompt_lm_weight=0.5), classify_loss_sum(tiny_model, batch, labels))
