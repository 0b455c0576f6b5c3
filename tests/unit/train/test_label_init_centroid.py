"""classify.label_init: centroid: label rows start at the centred class means of the base model's last hidden states."""

import torch

from tunelab.data.tokenize import ClassifyExample
from tunelab.models.heads import LabelHead, causal_lm_of, label_logits
from tunelab.tasks.classify import class_centroids


def test_centroid_rows_are_the_centred_class_means_rescaled_to_each_rows_norm(tiny_model):
    examples = [ClassifyExample([3, 4, 5 + i % 3, 9], i % 2) for i in range(6)]
    centroids = class_centroids(tiny_model, examples, 2)
    decoder = causal_lm_of(tiny_model).get_decoder()
    with torch.inference_mode():
        last = torch.stack([decoder(input_ids=torch.tensor([e.input_ids])).last_hidden_state[0, -1] for e in examples]).float()
    means = torch.stack([last[[i for i, e in enumerate(examples) if e.label == k]].mean(0) for k in (0, 1)])
    torch.testing.assert_close(centroids, means - means.mean(0), rtol=1e-4, atol=1e-5)

    token_ids = [7, 11]
    head = LabelHead.at_rows(tiny_model, token_ids, centroids)
    rows = tiny_model.get_output_embeddings().weight.detach()[torch.tensor(token_ids)].float() + head.delta
    torch.testing.assert_close(rows.norm(dim=-1), tiny_model.get_output_embeddings().weight.detach()[torch.tensor(token_ids)].float().norm(dim=-1))
    cosine = torch.nn.functional.cosine_similarity(rows, centroids, dim=-1)
    torch.testing.assert_close(cosine, torch.ones(2), rtol=1e-4, atol=1e-4)
    # Before any step the head scores each prompt by its closeness to each centred class mean.
    logits = label_logits(tiny_model, last, torch.tensor(token_ids), head)
    expected = last @ (centroids / centroids.norm(dim=-1, keepdim=True) * rows.norm(dim=-1, keepdim=True)).T
    torch.testing.assert_close(logits, expected, rtol=1e-3, atol=1e-3)
