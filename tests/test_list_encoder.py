"""Lists encoded in the encoder's child process (streams/list_encoder.py): the same bytes as in
the publish thread, the format readers decode, and a killed child replaced."""

from __future__ import annotations

import os
import signal

import msgspec
import numpy as np

from streamrec.streams.list_encoder import ListColumns, ListEncodeProcess, Recommendation, encode_lists


def columns(rng, n: int, k: int) -> ListColumns:
    items = rng.integers(0, 2**62, (n, k))  # (-1 is the padding)
    valid = rng.integers(0, k + 1, n)  # short lists: padded with -1 after the valid ones
    items[np.arange(k)[None, :] >= valid[:, None]] = -1
    scores = rng.standard_normal((n, k)).astype(np.float32)
    models = [str(rng.choice(["popularity", "sasrec", "modèle \"x\"", "a\\b"])) for _ in range(n)]
    return ListColumns(rng.integers(-2**40, 2**40, n), items, scores, models, [str(v) for v in rng.integers(0, 9, n)],
                       rng.integers(0, 2**41, n), rng.integers(0, 2**41, n), rng.integers(0, 64, n),
                       rng.integers(0, 2**40, n), 1_700_000_000_123, 1_700_000_000_001, 1_700_000_000_050)


def test_the_child_encodes_every_batch_as_the_thread_does_and_readers_decode_it():
    rng = np.random.default_rng(11)
    p = ListEncodeProcess()
    try:
        for n, k in ((0, 20), (1, 1), (7, 3), (300, 20)):
            c = columns(rng, n, k)
            here = encode_lists(c)
            assert p.encode(c) == here and len(here) == n
            for j, value in enumerate(here):
                rec = msgspec.json.decode(value, type=Recommendation)
                keep = c.items[j] >= 0
                assert rec.user_id == c.users[j] and rec.items == c.items[j][keep].tolist()
                assert rec.scores == c.scores[j][keep].tolist() and rec.model == c.models[j]
                assert (rec.source_partition, rec.source_offset, rec.stored_at) == (
                    c.trigger_partition[j], c.trigger_offset[j], 1_700_000_000_050)
    finally:
        p.close()


def test_a_killed_encoder_is_replaced_and_the_batch_encoded_again():
    p = ListEncodeProcess()
    c = columns(np.random.default_rng(2), 5, 4)
    first = p._child.pid
    os.kill(first, signal.SIGKILL)
    p._child.wait(10)
    assert p.encode(c) == encode_lists(c) and p.restarts == 1 and p._child.pid != first
    p.close()
    assert p._child.poll() is not None
