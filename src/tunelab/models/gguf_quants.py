"""The K-quant encoders (Q4_K, Q5_K, Q6_K) that the installed ``gguf`` package only decodes, and llama.cpp's mixes.

``gguf.quants`` (0.19) encodes Q4_0, Q5_0, Q8_0 and friends but, for the K-quants, has only the
decoders. These encoders follow llama.cpp's reference ones (``quantize_row_q4_K_ref``,
``quantize_row_q5_K_ref``, ``quantize_row_q6_K_ref`` in ``ggml-quants.c``: the weighted search for each
32-value sub-block's scale and minimum, ``make_qkx2_quants``, and the signed search of
``make_qx_quants``), vectorised over all blocks with numpy. The byte layouts are checked against
``gguf.quants``' decoders in the tests, which is what every reader of the file (llama.cpp,
transformers) implements.

``tensor_type`` is llama.cpp's ``llama_tensor_get_type`` for the file types offered here: which tensors
of a ``q4_K_M`` / ``q5_K_M`` file get more bits (the output head, half of the attention value and FFN
down projections), and the fallbacks it takes when a row is not a multiple of 256 values.
"""

from __future__ import annotations

import numpy as np

QK_K = 256  # values per K-quant block (super-block of 8 or 16 sub-blocks)


def _nearest(values: np.ndarray) -> np.ndarray:
    # llama.cpp's nearest_int rounds half to even (the float magic-number trick), as numpy's rint does.
    return np.rint(values).astype(np.int32)


def _f16(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).astype(np.float32)


def _make_qkx2_quants(x: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scale, min as a positive offset, levels) for each row of ``x`` (n, 32): llama.cpp's ``make_qkx2_quants``.

    Each value is ``scale * level - min`` with levels 0..nmax; the weights are those of the reference
    (``sqrt(mean(x²)) + |x|``), and the search tries ``nstep`` scales around the plain min/max one.
    """
    weights = np.sqrt(np.mean(x * x, axis=1, keepdims=True)) + np.abs(x)
    low = np.minimum(x.min(axis=1, keepdims=True), 0.0)
    high = x.max(axis=1, keepdims=True)
    span = high - low
    flat = span[:, 0] <= 0
    span = np.where(span > 0, span, 1.0)
    sum_w = weights.sum(axis=1, keepdims=True)
    sum_x = (weights * x).sum(axis=1, keepdims=True)

    iscale = nmax / span
    levels = np.clip(_nearest(iscale * (x - low)), 0, nmax)
    scale = 1.0 / iscale
    minimum = low.copy()
    best = (weights * (scale * levels + minimum - x) ** 2).sum(axis=1, keepdims=True)
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * step + nmax) / span
        trial = np.clip(_nearest(iscale * (x - low)), 0, nmax).astype(np.float32)
        sum_l = (weights * trial).sum(axis=1, keepdims=True)
        sum_l2 = (weights * trial * trial).sum(axis=1, keepdims=True)
        sum_xl = (weights * trial * x).sum(axis=1, keepdims=True)
        det = sum_w * sum_l2 - sum_l * sum_l
        ok = det > 0
        safe = np.where(ok, det, 1.0)
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / safe
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / safe
        positive = this_min > 0
        this_min = np.where(positive, 0.0, this_min)
        this_scale = np.where(positive, sum_xl / np.where(sum_l2 > 0, sum_l2, 1.0), this_scale)
        error = (weights * (this_scale * trial + this_min - x) ** 2).sum(axis=1, keepdims=True)
        better = ok & (error < best)
        levels = np.where(better, trial, levels)
        best = np.where(better, error, best)
        scale = np.where(better, this_scale, scale)
        minimum = np.where(better, this_min, minimum)
    scale = np.where(flat[:, None], 0.0, scale)
    levels = np.where(flat[:, None], 0, levels)
    return scale[:, 0].astype(np.float32), (-minimum[:, 0]).astype(np.float32), levels.astype(np.int32)


def _pack_scales_k4(scales: np.ndarray, mins: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and eight 6-bit mins per block into 12 bytes (the layout ``get_scale_min_k4`` reads)."""
    sc, mn = scales.astype(np.uint8), mins.astype(np.uint8)
    packed = np.zeros((sc.shape[0], 12), dtype=np.uint8)
    packed[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = mn[:, 0:4] | ((mn[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((mn[:, 4:8] & 0x0F) << 4)
    return packed


def _k_scales_and_levels(blocks: np.ndarray, nmax: int, rmin: float, nstep: int) -> tuple[np.ndarray, ...]:
    """The shared half of Q4_K and Q5_K: per block d, dmin, the packed 6-bit scales/mins and every value's level."""
    n = blocks.shape[0]
    sub = blocks.reshape(n * 8, 32)
    scales, mins, _ = _make_qkx2_quants(sub, nmax, rmin, 0.1, nstep)
    scales, mins = scales.reshape(n, 8), mins.reshape(n, 8)
    max_scale, max_min = scales.max(axis=1), mins.max(axis=1)
    inv_scale = np.where(max_scale > 0, 63.0 / np.where(max_scale > 0, max_scale, 1.0), 0.0)
    inv_min = np.where(max_min > 0, 63.0 / np.where(max_min > 0, max_min, 1.0), 0.0)
    ls = np.clip(_nearest(inv_scale[:, None] * scales), 0, 63)
    lm = np.clip(_nearest(inv_min[:, None] * mins), 0, 63)
    d = _f16(max_scale / 63.0)
    dmin = _f16(max_min / 63.0)
    step = (d[:, None] * ls).reshape(n, 8, 1)
    offset = (dmin[:, None] * lm).reshape(n, 8, 1)
    values = blocks.reshape(n, 8, 32)
    levels = np.where(step > 0, _nearest((values + offset) / np.where(step > 0, step, 1.0)), 0)
    levels = np.clip(levels, 0, nmax)
    return d, dmin, _pack_scales_k4(ls, lm), levels.reshape(n, QK_K)


def quantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    """Blocks of 256 float32 values -> Q4_K blocks of 144 bytes: d, dmin (f16), 12 bytes of scales, 128 of nibbles."""
    n = blocks.shape[0]
    d, dmin, scales, levels = _k_scales_and_levels(blocks.astype(np.float32), 15, -1.0, 20)
    # Each 64 values: 32 bytes, the first 32 values in the low nibbles, the next 32 in the high ones.
    pairs = levels.reshape(n, 4, 2, 32).astype(np.uint8)
    qs = (pairs[:, :, 0, :] | (pairs[:, :, 1, :] << 4)).reshape(n, 128)
    return np.concatenate([d.astype(np.float16).view(np.uint8).reshape(n, 2), dmin.astype(np.float16).view(np.uint8).reshape(n, 2), scales, qs], axis=1)


def quantize_q5_k(blocks: np.ndarray) -> np.ndarray:
    """Blocks of 256 float32 values -> Q5_K blocks of 176 bytes: as Q4_K plus 32 bytes holding each level's fifth bit."""
    n = blocks.shape[0]
    d, dmin, scales, levels = _k_scales_and_levels(blocks.astype(np.float32), 31, -0.5, 15)
    by_sub = levels.reshape(n, 8, 32).astype(np.uint8)
    high = by_sub >> 4
    qh = np.zeros((n, 32), dtype=np.uint8)
    for sub in range(8):
        qh |= high[:, sub, :] << sub
    low = (by_sub & 0x0F).reshape(n, 4, 2, 32)
    qs = (low[:, :, 0, :] | (low[:, :, 1, :] << 4)).reshape(n, 128)
    return np.concatenate([d.astype(np.float16).view(np.uint8).reshape(n, 2), dmin.astype(np.float16).view(np.uint8).reshape(n, 2), scales, qh, qs], axis=1)


def _make_qx_quants(x: np.ndarray, nmax: int) -> np.ndarray:
    """The scale of each row of ``x`` (n, 16) for signed levels -nmax..nmax-1: llama.cpp's ``make_qx_quants`` (rmse_type 1)."""
    index = np.abs(x).argmax(axis=1)
    peak = x[np.arange(x.shape[0]), index][:, None]
    zero = np.abs(peak[:, 0]) < 1e-15
    peak = np.where(zero[:, None], 1.0, peak)
    weights = x * x

    def fit(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        levels = np.clip(_nearest(iscale * x), -nmax, nmax - 1).astype(np.float32)
        return (weights * x * levels).sum(axis=1), (weights * levels * levels).sum(axis=1)

    sum_lx, sum_l2 = fit(-nmax / peak)
    scale = np.where(sum_l2 > 0, sum_lx / np.where(sum_l2 > 0, sum_l2, 1.0), 0.0)
    best = scale * sum_lx
    for step in range(-9, 10):
        if step == 0:
            continue
        sum_lx, sum_l2 = fit(-(nmax + 0.1 * step) / peak)
        better = (sum_l2 > 0) & (sum_lx * sum_lx > best * sum_l2)
        this_scale = sum_lx / np.where(sum_l2 > 0, sum_l2, 1.0)
        scale = np.where(better, this_scale, scale)
        best = np.where(better, this_scale * sum_lx, best)
    return np.where(zero, 0.0, scale).astype(np.float32)


def quantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    """Blocks of 256 float32 values -> Q6_K blocks of 210 bytes: 128 bytes of low nibbles, 64 of high bits, 16 int8 scales, d."""
    blocks = blocks.astype(np.float32)
    n = blocks.shape[0]
    scales = _make_qx_quants(blocks.reshape(n * 16, 16), 32).reshape(n, 16)
    which = np.abs(scales).argmax(axis=1)
    max_scale = scales[np.arange(n), which]
    empty = np.abs(max_scale) < 1e-15
    iscale = np.where(empty, 0.0, -128.0 / np.where(empty, 1.0, max_scale))
    d = _f16(np.where(empty, 0.0, 1.0 / np.where(iscale == 0, 1.0, iscale)))
    small = np.clip(_nearest(iscale[:, None] * scales), -128, 127)
    small = np.minimum(small, 127)
    step = (d[:, None] * small).reshape(n, 16, 1)
    values = blocks.reshape(n, 16, 16)
    levels = np.where(step != 0, _nearest(values / np.where(step != 0, step, 1.0)), 0)
    levels = (np.clip(levels, -32, 31) + 32).reshape(n, 2, 4, 32).astype(np.uint8)  # halves of 128, quarters of 32
    low, high = levels & 0x0F, levels >> 4
    ql = np.concatenate([low[:, :, 0, :] | (low[:, :, 2, :] << 4), low[:, :, 1, :] | (low[:, :, 3, :] << 4)], axis=2).reshape(n, 128)
    qh = (high[:, :, 0, :] | (high[:, :, 1, :] << 2) | (high[:, :, 2, :] << 4) | (high[:, :, 3, :] << 6)).reshape(n, 64)
    return np.concatenate([ql, qh, small.astype(np.int8).view(np.uint8), d.astype(np.float16).view(np.uint8).reshape(n, 2)], axis=1)


ENCODERS = {"Q4_K": quantize_q4_k, "Q5_K": quantize_q5_k, "Q6_K": quantize_q6_k}
# Rows at a time: bounds the float32 temporaries of the search (a few times the rows' size).
CHUNK_BLOCKS = 16384


def quantize_k(data: np.ndarray, type_name: str) -> np.ndarray:
    """A 2-D float array (rows a multiple of 256 long) as K-quant bytes, shaped (rows, bytes per row) as gguf stores them.

    Raises:
        ValueError: when the rows are not a multiple of 256 values.
    """
    rows, columns = data.shape
    if columns % QK_K:
        raise ValueError(f"{type_name} needs rows of a multiple of {QK_K} values, got {columns}")
    encode = ENCODERS[type_name]
    blocks = np.ascontiguousarray(data, dtype=np.float32).reshape(-1, QK_K)
    out = [encode(blocks[start : start + CHUNK_BLOCKS]) for start in range(0, blocks.shape[0], CHUNK_BLOCKS)]
    packed = np.concatenate(out, axis=0)
    return packed.reshape(rows, -1)


# ------------------------------------------------------------------ llama.cpp's choice per tensor

# File type -> (the type most matrices get, whether it is a K-quant mix that gives some tensors more bits).
FILE_TYPES: dict[str, str] = {"q4_0": "Q4_0", "q5_0": "Q5_0", "q8_0": "Q8_0", "q4_K_M": "Q4_K", "q5_K_M": "Q5_K", "q6_K": "Q6_K"}
# llama.cpp's fallbacks for a row that is not a multiple of 256 (``llama_tensor_get_type``).
K_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def use_more_bits(index: int, count: int) -> bool:
    """llama.cpp's ``use_more_bits``: the first and last eighth of the layers, and every third one between."""
    return index < count // 8 or index >= 7 * count // 8 or (index - count // 8) % 3 == 2


def tensor_type(file_type: str, name: str, columns: int, *, layer: int | None, layers: int, has_output: bool) -> str:
    """The ggml type llama.cpp's quantizer gives the matrix ``name`` (a GGUF tensor name) in a ``file_type`` file."""
    base = FILE_TYPES[file_type]
    chosen = base
    is_head = name == "output.weight" or (not has_output and name == "token_embd.weight")
    if is_head:
        # The output head (the embeddings when they are tied to it) keeps 6 bits, or 8 when rows do not fit K blocks.
        chosen = "Q8_0" if columns % QK_K else ("Q6_K" if base != "Q8_0" else "Q8_0")
    elif file_type in ("q4_K_M", "q5_K_M") and layer is not None and (".attn_v." in name or ".ffn_down." in name):
        if use_more_bits(layer, layers):
            chosen = "Q6_K"
    if chosen in K_FALLBACK and columns % QK_K:
        chosen = K_FALLBACK[chosen]
    return chosen
