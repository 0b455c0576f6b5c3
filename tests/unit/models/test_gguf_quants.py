"""The K-quant encoders, decoded by the ``gguf`` package's own decoders (what llama.cpp and transformers read)."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize, quantize

from tunelab.models.gguf_quants import QK_K, quantize_k, tensor_type, use_more_bits


def _relative_rmse(original: np.ndarray, restored: np.ndarray) -> float:
    return float(np.sqrt(np.mean((original - restored) ** 2)) / np.sqrt(np.mean(original**2)))


@pytest.fixture(scope="module")
def weights() -> np.ndarray:
    rng = np.random.default_rng(0)
    data = rng.standard_normal((64, 2 * QK_K)).astype(np.float32) * 0.02
    data[3] *= 40  # rows of very different scales,
    data[5, 17] = 1.5  # an outlier,
    data[7] = 0.0  # an empty row,
    data[9] = 0.25  # and a constant one
    data[11] = np.abs(data[11])  # all positive (the minimum is then 0)
    return data


@pytest.mark.parametrize(("name", "bound", "plain"), [("Q4_K", 0.095, "Q4_0"), ("Q5_K", 0.048, "Q5_0"), ("Q6_K", 0.022, None)])
def test_k_quants_decode_close_with_the_gguf_decoder(weights, name, bound, plain):
    qtype = GGMLQuantizationType[name]
    packed = quantize_k(weights, name)
    block, size = GGML_QUANT_SIZES[qtype]
    assert packed.dtype == np.uint8 and packed.shape == (64, 2 * QK_K // block * size)
    restored = dequantize(packed, qtype)
    assert restored.shape == weights.shape
    assert _relative_rmse(weights, restored) < bound
    np.testing.assert_array_equal(restored[7], 0.0)
    np.testing.assert_allclose(restored[9], 0.25, rtol=2e-3)
    # Every row on its own scale: the large row is not flattened by the small ones, nor the reverse.
    for row in (0, 3, 5, 11):
        assert _relative_rmse(weights[row], restored[row]) < bound * 1.5, row
    if plain is not None:
        # The K-quant's searched scales and minimums beat the 32-value format of the same bits per weight.
        simple = dequantize(quantize(weights, GGMLQuantizationType[plain]), GGMLQuantizationType[plain])
        assert _relative_rmse(weights, restored) < _relative_rmse(weights, simple)


def test_k_quants_need_rows_of_256():
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize_k(np.zeros((2, 576), dtype=np.float32), "Q4_K")


def test_use_more_bits_is_llama_cpps_rule():
    # 32 layers: the first 4, the last 4, and every third one in between (llama.cpp's use_more_bits).
    assert [i for i in range(32) if use_more_bits(i, 32)] == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]


def test_q4_k_m_mix_as_llama_quantize_chooses():
    pick = lambda name, columns, layer=None, has_output=True: tensor_type(  # noqa: E731
        "q4_K_M", name, columns, layer=layer, layers=32, has_output=has_output
    )
    assert pick("output.weight", 4096) == "Q6_K"
    assert pick("token_embd.weight", 4096) == "Q4_K"
    assert pick("token_embd.weight", 4096, has_output=False) == "Q6_K"  # tied: the embeddings are the head
    assert pick("blk.0.attn_v.weight", 4096, 0) == "Q6_K" and pick("blk.4.attn_v.weight", 4096, 4) == "Q4_K"
    assert pick("blk.6.ffn_down.weight", 11008, 6) == "Q6_K" and pick("blk.4.ffn_down.weight", 11008, 4) == "Q4_K"
    assert pick("blk.0.attn_q.weight", 4096, 0) == "Q4_K"
    # Rows that do not fit 256-value blocks fall back as llama-quantize does (SmolLM2's 576 columns).
    assert pick("blk.4.attn_q.weight", 576, 4) == "Q5_0"
    assert pick("blk.0.attn_v.weight", 576, 0) == "Q8_0"
    assert pick("token_embd.weight", 576, has_output=False) == "Q8_0"
    assert tensor_type("q5_K_M", "blk.4.attn_q.weight", 576, layer=4, layers=30, has_output=False) == "Q5_1"
    assert tensor_type("q4_0", "output.weight", 4096, layer=None, layers=32, has_output=True) == "Q6_K"
    assert tensor_type("q8_0", "output.weight", 4096, layer=None, layers=32, has_output=True) == "Q8_0"
