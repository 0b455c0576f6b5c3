"""Training on a shared prefix computed once per micro-batch equals training on the full prompts.

Checked token by token: the logits at every prompt's last position, the summed loss and the
gradient of every trainable parameter (LoRA and label head included), packed and unpacked, with
SDPA and eager attention.
"""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tunelab.data.tokenize import ClassifyExample, shared_prefix_length
from tunelab.models.heads import LabelHead
from tunelab.train.batching import ClassifyCollate
from tunelab.train.losses import classify_logits, classify_loss_sum


def _examples(vocab: int, prefix: list[int]) -> list[ClassifyExample]:
    g = torch.Generator().manual_seed(0)
    lengths = [3, 9, 5, 12, 1, 7]
    return [
        ClassifyExample(prefix + torch.randint(3, vocab, (n,), generator=g).tolist(), i % 3) for i, n in enumerate(lengths)
    ]


def _lora(model):
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=False)
    return get_peft_model(model, config)


def _grads(model, batch, label_ids, head):
    model.zero_grad(set_to_none=True)
    loss = classify_loss_sum(model, batch, label_ids, head)
    loss.backward()
    named = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), named


@pytest.mark.parametrize("packing", [True, False])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_prefix_reuse_gives_the_same_logits_loss_and_gradients(tiny_model, tiny_tokenizer, packing, attention):
    tiny_model.config._attn_implementation = attention
    vocab = len(tiny_tokenizer)
    prefix = torch.randint(3, vocab, (20,), generator=torch.Generator().manual_seed(1)).tolist()
    examples = _examples(vocab, prefix)
    assert shared_prefix_length([e.input_ids for e in examples]) >= len(prefix)
    label_ids = torch.tensor([40, 41, 42])
    model = _lora(tiny_model)
    head = LabelHead.initialise(model, label_ids.tolist(), None)
    with torch.no_grad():
        head.delta.normal_(0, 0.1)  # a trained head, not zeros: its gradient path is exercised too
    model.add_module("label_head", head)
    model.train()

    full = ClassifyCollate(pad_id=0, max_length=64, packing=packing)(examples)
    reuse = ClassifyCollate(pad_id=0, max_length=64, packing=packing, prefix_ids=tuple(prefix))(examples)
    assert reuse["input_ids"].numel() < full["input_ids"].numel()  # the prefix is not in the rows
    if packing:
        assert reuse["input_ids"].shape[0] < len(examples)  # several prompts share a row

    torch.testing.assert_close(
        classify_logits(model, reuse, label_ids, head), classify_logits(model, full, label_ids, head), rtol=1e-5, atol=1e-5
    )
    loss_full, grads_full = _grads(model, full, label_ids, head)
    loss_reuse, grads_reuse = _grads(model, reuse, label_ids, head)
    torch.testing.assert_close(loss_reuse, loss_full, rtol=1e-5, atol=1e-5)
    assert grads_full.keys() == grads_reuse.keys() and any("lora_A" in n for n in grads_full)
    for name, grad in grads_full.items():
        assert grad.abs().sum() > 0, name
        # Summation order differs (one prefix, its gradient summed over rows): float32 rounding, scaled to the gradient.
        torch.testing.assert_close(grads_reuse[name], grad, rtol=1e-4, atol=1e-5 * grad.abs().max().item(), msg=name)


def test_an_example_without_the_prefix_is_refused():
    collate = ClassifyCollate(pad_id=0, max_length=64, prefix_ids=(5, 6, 7))
    with pytest.raises(ValueError, match="shared prefix"):
        collate([ClassifyExample([5, 6, 7, 8], 0), ClassifyExample([5, 9, 7, 8], 1)])
