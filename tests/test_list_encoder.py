"""A micro-batch's lists encoded at once (streams/list_encoder.py): what readers decode is each
row's list, without its padding, with its trigger and timings."""

from __future__ import annotations

import msgspec
import numpy as np

from streamrec.streams.list_encoder import ListColumns, Recommendation, encode_lists


def columns(rng, n: int, k: int) -> ListColumns:
    items = rng.integers(0, 2**62, (n, k))  # (-1 is the padding)
    valid = rng.integers(0, k + 1, n)  # short lists: padded with -1 after the valid ones
    items[np.arange(k)[None, :] >= valid[:, None]] = -1
    scores = rng.standard_normal((n, k)).astype(np.float32)
    models = [str(rng.choice(["popularity", "sasrec", "modèle \"x\"", "a\\b"])) for _ in range(n)]
    return ListColumns(rng.integers(-2**40, 2**40, n), items, scores, models, [str(v) for v in rng.integers(0, 9, n)],
                       rng.integers(0, 2**41, n), rng.integers(0, 2**41, n), rng.integers(0, 64, n),
                       rng.integers(0, 2**40, n), 1_700_000_000_123, 1_700_000_000_001, 1_700_000_000_050)


def test_readers_decode_each_row_s_list_without_its_padding():
    rng = np.random.default_rng(11)
    for n, k in ((0, 20), (1, 1), (7, 3), (300, 20)):
        c = columns(rng, n, k)
        values = encode_lists(c)
        assert len(values) == n
        for j, value in enumerate(values):
            rec = msgspec.json.decode(value, type=Recommendation)
            keep = c.items[j] >= 0
            assert rec.user_id == c.users[j] and rec.items == c.items[j][keep].tolist()
            assert rec.scores == c.scores[j][keep].tolist() and rec.model == c.models[j]
            assert rec.model_version == c.versions[j] and rec.event_time == c.trigger_time[j]
            assert (rec.source_partition, rec.source_offset, rec.published_at, rec.stored_at) == (
                c.trigger_partition[j], c.trigger_offset[j], 1_700_000_000_123, 1_700_000_000_050)
