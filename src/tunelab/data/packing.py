"""Which examples share a packed row: one rule for the collate that builds rows and the estimate that counts them.

Pure arithmetic over lengths (no torch), so the estimate's plan can use it without the training stack.
"""

from __future__ import annotations

from collections.abc import Sequence


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Assign example indices to rows of at most ``capacity`` tokens (first fit decreasing).

    An example longer than ``capacity`` gets a row of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[int] = []
    for index in order:
        size = lengths[index]
        for row, room in enumerate(free):
            if size <= room:
                rows[row].append(index)
                free[row] -= size
                break
        else:
            rows.append([index])
            free.append(capacity - size)
    return rows
