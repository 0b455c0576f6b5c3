"""The losses compute exactly the plain losses, on packed rows as on separate examples."""

import pytest
import torch
import torch.nn.functional as F

from tunelab.data.tokenize import IGNORE_INDEX, ClassifyExample, TokenizedExample
from tunelab.train.batching import ClassifyCollate, LMCollate, pack_rows
from tunelab.train.losses import classify_logits, classify_loss_sum, linear_cross_entropy_sum, lm_loss_sum


def _example(seed: int, length: int, vocab: int, prompt: int = 0) -> TokenizedExample:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (length,), generator=g).tolist()
    labels = [IGNORE_INDEX] * prompt + ids[prompt:]
    return TokenizedExample(ids, labels)


def _plain_loss_sum(model, example: TokenizedExample) -> torch.Tensor:
    """The reference: the model's full logits for one example alone, shifted by hand."""
    ids = torch.tensor([example.input_ids])
    logits = model(input_ids=ids).logits[0, :-1].float()
    targets = torch.tensor(example.labels[1:])
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


def test_pack_rows_fits_capacity_and_keeps_every_example():
    lengths = [5, 9, 3, 7, 2, 10, 1]
    rows = pack_rows(lengths, 10)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert len(rows) == 4  # 37 tokens need at least 4 rows of 10


def test_packed_rows_give_each_example_its_own_loss(tiny_model, tiny_tokenizer):
    vocab = len(tiny_tokenizer)
    examples = [_example(i, n, vocab, prompt=p) for i, (n, p) in enumerate([(12, 3), (7, 0), (20, 5), (5, 1), (9, 0)])]
    collate = LMCollate(pad_id=tiny_tokenizer.pad_token_id, max_length=32, packing=True)
    batch = collate(examples)
    assert batch["input_ids"].shape[0] < len(examples)  # really packed: several examples share a row
    with torch.no_grad():
        packed = lm_loss_sum(tiny_model, batch)
        separate = sum(_plain_loss_sum(tiny_model, e) for e in examples)
        # And example by example, through the same collate with one example per call.
        one_by_one = sum(lm_loss_sum(tiny_model, collate([e])) for e in examples)
    torch.testing.assert_close(packed, separate, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(one_by_one, separate, rtol=1e-5, atol=1e-5)


def test_unpacked_padded_batch_equals_separate(tiny_model, tiny_tokenizer):
    vocab = len(tiny_tokenizer)
    examples = [_example(i, n, vocab) for i, n in enumerate([12, 4, 9])]
    batch = LMCollate(pad_id=tiny_tokenizer.pad_token_id, max_length=32, packing=False)(examples)
    assert batch["input_ids"].shape == (3, 12)
    with torch.no_grad():
        torch.testing.assert_close(
            lm_loss_sum(tiny_model, batch), sum(_plain_loss_sum(tiny_model, e) for e in examples), rtol=1e-5, atol=1e-5
        )


def test_masked_label_tokens_do_not_change_the_loss(tiny_model, tiny_tokenizer):
    example = _example(0, 16, len(tiny_tokenizer), prompt=6)
    collate = LMCollate(pad_id=0, max_length=32)
    changed_labels = list(example.labels)
    changed_ids = list(example.input_ids)
    # Changing a token that is only input and never a target changes the loss; changing the label of
    # a masked position (no target) must not.
    changed_labels[3] = IGNORE_INDEX
    with torch.no_grad():
        base = lm_loss_sum(tiny_model, collate([example]))
        same = lm_loss_sum(tiny_model, collate([TokenizedExample(changed_ids, changed_labels)]))
        changed_labels[10] = (changed_labels[10] + 1) % len(tiny_tokenizer)
        different = lm_loss_sum(tiny_model, collate([TokenizedExample(changed_ids, changed_labels)]))
    assert torch.equal(base, same)
    assert not torch.allclose(base, different)


@pytest.mark.parametrize("weight_grad", [False, True])
@pytest.mark.parametrize("autocast", [False, True])
def test_chunked_loss_and_gradients_equal_plain(weight_grad, autocast):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    head.weight.requires_grad_(weight_grad)
    hidden = torch.randn(37, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        chunked = linear_cross_entropy_sum(hidden, head, targets, chunk=8)
    chunked.backward()
    grads = (hidden.grad.clone(), head.weight.grad.clone() if weight_grad else None)
    hidden.grad = None
    head.weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        plain = F.cross_entropy(head(hidden).float(), targets, reduction="sum")
    plain.backward()
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if autocast else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(chunked, plain, **tolerance)
    torch.testing.assert_close(grads[0], hidden.grad, **tolerance)
    if weight_grad:
        torch.testing.assert_close(grads[1], head.weight.grad, **tolerance)


def test_classify_loss_uses_label_columns_of_full_logits(tiny_model, tiny_tokenizer):
    vocab = len(tiny_tokenizer)
    label_ids = torch.tensor([40, 41, 42])
    examples = [ClassifyExample(_example(i, n, vocab).input_ids, i % 3) for i, n in enumerate([10, 6, 14, 3])]
    batch = ClassifyCollate(pad_id=0, max_length=32)(examples)
    with torch.no_grad():
        logits = classify_logits(tiny_model, batch, label_ids)
        loss = classify_loss_sum(tiny_model, batch, label_ids)
        # Reference: full-vocabulary logits of each prompt alone, at its last position, label columns.
        reference = torch.stack(
            [tiny_model(input_ids=torch.tensor([e.input_ids])).logits[0, -1, label_ids] for e in examples]
        )
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
    expected = F.cross_entropy(reference, torch.tensor([e.label for e in examples]), reduction="sum")
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_label_smoothing_shapes_the_training_loss_only(tiny_model, tiny_tokenizer):
    """classify.label_smoothing: (1 - e) x cross-entropy + e x the mean over labels of -log p, by hand;
    without gradients (validation) the plain cross-entropy the loop selects checkpoints by."""
    vocab = len(tiny_tokenizer)
    label_ids = torch.tensor([40, 41, 42, 43])
    examples = [ClassifyExample(_example(i, n, vocab).input_ids, i % 4) for i, n in enumerate([10, 6, 14, 3, 8])]
    batch = ClassifyCollate(pad_id=0, max_length=32)(examples)
    targets = torch.tensor([e.label for e in examples])
    with torch.no_grad():
        log_p = torch.log_softmax(classify_logits(tiny_model, batch, label_ids).float(), dim=-1)
        plain = classify_loss_sum(tiny_model, batch, label_ids, label_smoothing=0.2)
    nll = -log_p[torch.arange(len(examples)), targets]
    torch.testing.assert_close(plain, nll.sum(), rtol=1e-5, atol=1e-5)
    smoothed = classify_loss_sum(tiny_model, batch, label_ids, label_smoothing=0.2)
    assert smoothed.requires_grad
    by_hand = (0.8 * nll + 0.2 * -log_p.mean(dim=-1)).sum()
    torch.testing.assert_close(smoothed.detach(), by_hand, rtol=1e-5, atol=1e-5)


def test_class_weights_scale_each_training_example_by_its_label_weight_only_while_training(tiny_model, tiny_tokenizer):
    """classify.class_weights: each example's (smoothed) loss times its label's weight, summed, by hand; without
    gradients (validation) the plain, unweighted cross-entropy."""
    vocab = len(tiny_tokenizer)
    label_ids = torch.tensor([40, 41, 42])
    pairs = [(10, 0), (6, 0), (14, 1), (3, 2)]  # (length, label)
    examples = [ClassifyExample(_example(i, n, vocab).input_ids, label) for i, (n, label) in enumerate(pairs)]
    batch = ClassifyCollate(pad_id=0, max_length=32)(examples)
    targets = torch.tensor([e.label for e in examples])
    weights = torch.tensor([0.5, 2.0, 3.0])
    with torch.no_grad():
        log_p = torch.log_softmax(classify_logits(tiny_model, batch, label_ids).float(), dim=-1)
        validation = classify_loss_sum(tiny_model, batch, label_ids, label_smoothing=0.1, class_weights=weights)
    nll = -log_p[torch.arange(len(examples)), targets]
    torch.testing.assert_close(validation, nll.sum(), rtol=1e-5, atol=1e-5)
    weighted = classify_loss_sum(tiny_model, batch, label_ids, label_smoothing=0.1, class_weights=weights)
    by_hand = (weights[targets] * (0.9 * nll + 0.1 * -log_p.mean(dim=-1))).sum()
    torch.testing.assert_close(weighted.detach(), by_hand, rtol=1e-5, atol=1e-5)


def test_rows_longer_than_max_length_pack_more_and_keep_each_example_isolated(tiny_model, tiny_tokenizer):
    """train.pack_tokens: one row may hold several max_length examples; logits stay per example."""
    vocab = len(tiny_tokenizer)
    label_ids = torch.tensor([40, 41, 42])
    examples = [ClassifyExample(_example(i, n, vocab).input_ids, i % 3) for i, n in enumerate([10, 12, 14, 9, 11])]
    short = ClassifyCollate(pad_id=0, max_length=16)(examples)
    long = ClassifyCollate(pad_id=0, max_length=16, row_tokens=64)(examples)
    assert short["input_ids"].shape[0] == 5  # no two examples fit in 16 tokens
    assert long["input_ids"].shape[0] == 1 and long["input_ids"].shape[1] == 56  # all five in one row
    with torch.no_grad():
        torch.testing.assert_close(
            classify_logits(tiny_model, long, label_ids), classify_logits(tiny_model, short, label_ids), rtol=1e-5, atol=1e-5
        )
    lm = [_example(i, n, vocab, prompt=2) for i, n in enumerate([10, 12, 14])]
    packed = LMCollate(pad_id=tiny_tokenizer.pad_token_id, max_length=16, row_tokens=48)(lm)
    assert packed["input_ids"].shape[0] == 1
    with torch.no_grad():
        torch.testing.assert_close(
            lm_loss_sum(tiny_model, packed), sum(_plain_loss_sum(tiny_model, e) for e in lm), rtol=1e-5, atol=1e-5
        )


def test_compile_blocks_compiles_each_block_and_keeps_parameter_names(tiny_model):
    from tunelab.models.fused import compile_blocks

    names = list(tiny_model.state_dict())
    assert compile_blocks(tiny_model) == len(tiny_model.model.layers)
    assert list(tiny_model.state_dict()) == names  # checkpoints and adapters are saved under the same keys
