"""What the classical and embedding baselines cost here: the measured constants of ``tunelab.estimate.plan``.

Times, on a run config's own split (default: the quickstart, examples/support-routing), the embedding model's
load (``models.embedding.load_embedding_model``, a fresh process), its encoding of the learning records and the
test records (``embed_texts``), and each baseline whole (``classical_baseline``, ``embedding_baseline``: the
cross-validated fit included), at the torch threads the environment gives (measured with OMP_NUM_THREADS=1).

    PYTHONPATH=src python bench/baseline_speed.py [CONFIG]
"""

from __future__ import annotations

import sys
import time


def main() -> None:
    from tunelab.config import load_config
    from tunelab.data.split import learning_records, make_split
    from tunelab.evaluation.baselines import classical_baseline, embedding_baseline
    from tunelab.models.embedding import embed_texts, load_embedding_model, resolve_embedding_model

    config = load_config(sys.argv[1] if len(sys.argv) > 1 else "examples/support-routing/config.yaml")
    split = make_split(config)
    train, test = learning_records(split), split.test
    texts = [r.text for r in [*train, *test]]
    start = time.perf_counter()
    model = load_embedding_model(resolve_embedding_model(config.eval.embedding_model, allow_network=False))
    load = time.perf_counter() - start
    start = time.perf_counter()
    embed_texts(model, texts)
    encode = time.perf_counter() - start
    start = time.perf_counter()
    embedding_baseline(train, test, config=config.eval, data_config=config.data)
    embedding = time.perf_counter() - start  # the model is loaded once per process: encode and fit
    start = time.perf_counter()
    classical_baseline(train, test, data_config=config.data)
    classical = time.perf_counter() - start
    print(f"{len(train)} learning + {len(test)} test texts")
    print(f"embedding model load {load:.2f} s; encode {encode:.2f} s ({encode / len(texts) * 1000:.1f} ms a text)")
    print(f"embedding baseline without the load {embedding:.2f} s ({embedding / len(texts) * 1000:.1f} ms a text)")
    print(f"classical baseline {classical:.2f} s ({classical / len(texts) * 1000:.1f} ms a text)")


if __name__ == "__main__":
    main()
