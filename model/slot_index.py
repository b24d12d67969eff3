"""User ids to dense slot numbers, for the online evaluator's per-user arrays."""

from __future__ import annotations

from streamrec.storage.codes import Codes


class SlotIndex(Codes):
    """A dict from user id to a dense slot number (``storage.key_index.Codes``: a batch of ids is
    looked up in one compiled pass instead of a Python loop); ``add`` gives new ids the next slots.

    >>> idx = SlotIndex()
    >>> idx.add([30, 10, 30]).tolist(), idx.lookup([10, 20, 30]).tolist(), len(idx)
    ([0, 1, 0], [1, -1, 0], 2)
    """

    add = Codes.encode
