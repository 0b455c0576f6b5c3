"""Which rows each process trains on: with any number of processes the union of their micro-batches is the step's
rows, each once, and an epoch's steps take every training row once (an odd count included)."""

from types import SimpleNamespace

import pytest

from tunelab.train.batching import StepPlan, micro_batches


@pytest.mark.parametrize("rows, batch_size, grad_accum", [(7, 1, 1), (7, 2, 1), (9, 1, 2), (5, 3, 1)])
@pytest.mark.parametrize("bucket", [False, True])
def test_two_processes_share_each_step_like_one_process_with_the_whole_batch(rows, batch_size, grad_accum, bucket):
    world = 2
    plan = StepPlan(rows, batch_size * grad_accum * world, seed=3)
    assert plan == StepPlan(rows, (batch_size * world) * grad_accum, seed=3)  # one process with the whole batch
    order = []
    for step in range(plan.steps_per_epoch()):
        examples = plan.indices(step)
        # Rows of different lengths, so bucketing (without packing) reorders them before they are shared out.
        tokenized = [SimpleNamespace(index=i, input_ids=[0] * (1 + i * 7 % 5)) for i in examples]
        shares = [micro_batches(tokenized, batch_size=batch_size, grad_accum=grad_accum, world_size=world, rank=rank, bucket=bucket)
                  for rank in range(world)]
        taken = sorted(e.index for share in shares for batch in share for e in batch)
        assert taken == sorted(examples)  # no row of the step dropped or doubled across the processes
        assert all(len(batch) == batch_size for share in shares for batch in share)
        order += examples
    # The epoch's rows each once; a last step that is not full fills up from the next epoch's order.
    assert sorted(order[:rows]) == list(range(rows))
    assert order[rows:] == StepPlan(rows, plan.global_batch, seed=3)._permutation(1)[: len(order) - rows]
