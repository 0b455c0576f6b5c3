import torch

from tunelab.models.heads import causal_lm_of, label_logits


def _full_last_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits[:, -1]


def test_label_logits_equal_full_logits_restricted(tiny_model):
    ids = torch.tensor([[5, 9, 12, 40, 7], [3, 3, 8, 21, 30]])
    labels = torch.tensor([11, 4, 200])
    with torch.no_grad():
        hidden = causal_lm_of(tiny_model).get_decoder()(input_ids=ids).last_hidden_state[:, -1]
        scored = label_logits(tiny_model, hidden, labels)
    torch.testing.assert_close(scored, _full_last_logits(tiny_model, ids)[:, labels])
    # Soft-capping (Gemma 2 style) is applied exactly as the model's own head would.
    tiny_model.config.final_logit_softcapping = 2.0
    with torch.no_grad():
        capped = label_logits(tiny_model, hidden, labels)
    torch.testing.assert_close(capped, torch.tanh(scored / 2.0) * 2.0)
    assert not torch.allclose(capped, scored)


def test_wrapped_head_through_peft(tiny_model):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["lm_head", "q_proj"], init_lora_weights=False))
    ids = torch.tensor([[5, 9, 12, 40, 7]])
    labels = torch.tensor([11, 4])
    with torch.no_grad():
        hidden = causal_lm_of(model).get_decoder()(input_ids=ids).last_hidden_state[:, -1]
        scored = label_logits(model, hidden, labels)
    torch.testing.assert_close(scored, _full_last_logits(model, ids)[:, labels])
