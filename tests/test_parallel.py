"""tinyse.parallel: how a batch is cut into chunks, and the per-thread work arrays."""
import itertools
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinyse.functional as F
from tinyse import Tensor, parallel


@settings(max_examples=200)
@given(batch=st.integers(1, 300), bytes_per_item=st.integers(1, 1 << 23), n_workers=st.integers(1, 4))
def test_chunks_cover_the_batch_in_even_pieces_for_every_worker(batch, bytes_per_item, n_workers):
    chunks = parallel.chunk_bounds(batch, bytes_per_item, n_workers)
    assert chunks[0][0] == 0 and chunks[-1][1] == batch
    assert all(stop == next_start for (_, stop), (next_start, _) in itertools.pairwise(chunks))
    sizes = [stop - start for start, stop in chunks]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    fit = max(1, parallel.CACHE_BYTES // bytes_per_item)
    assert max(sizes) <= fit or len(chunks) == batch  # each chunk fits, unless a single item does not
    if len(chunks) < batch:
        assert len(chunks) % n_workers == 0  # no worker waits for the last chunk alone


def test_workspace_is_kept_per_thread_and_zero_where_never_written():
    first = parallel.workspace(np, "test-parallel", (4, 3), np.float32)
    assert not first.any()
    first[:, 0] = 7
    again = parallel.workspace(np, "test-parallel", (2, 3), np.float32)  # a smaller batch: the front of the same array
    assert np.shares_memory(first, again) and again.shape == (2, 3)
    assert (again[:, 0] == 7).all() and not again[:, 1:].any()
    other = {}
    def in_another_thread():
        other["a"] = parallel.workspace(np, "test-parallel", (4, 3), np.float32)

    thread = threading.Thread(target=in_another_thread)
    thread.start()
    thread.join()
    assert not np.shares_memory(first, other["a"]) and not other["a"].any()


@pytest.mark.parametrize("shape", [(4, 3), (5, 3), (4, 2)])
def test_workspace_is_remade_for_a_larger_batch_or_another_shape(shape):
    """The same request gets the same memory back, as the last user left it; a larger batch or another
    shape gets new zeros, and a later smaller request is then the front of that new array."""
    key = f"test-parallel-shapes-{shape}"  # a key of its own: this thread's arrays outlive the test
    small = parallel.workspace(np, key, (4, 3), np.float64)
    small[...] = 1
    other = parallel.workspace(np, key, shape, np.float64)
    assert other.shape == shape
    if shape == (4, 3):
        assert np.shares_memory(other, small) and (other == 1).all()
    else:
        assert not np.shares_memory(other, small) and not other.any()
        other[...] = 2
        again = parallel.workspace(np, key, (4, shape[1]), np.float64)
        assert np.shares_memory(again, other) and (again == 2).all()


CHUNKED_OPS = {  # ops whose NumPy passes run the batch in chunks on every core: (x, gates, shortcut, gamma, beta) -> y
    "batch_norm": lambda x, s, r, g, b: F.batch_norm(x, g, b, training=True),
    "batch_norm eval": lambda x, s, r, g, b: F.batch_norm(x, g, b, np.zeros(3), np.full(3, 2.0), training=False),
    "batch_norm_relu": lambda x, s, r, g, b: F.batch_norm_relu(x, g, b, None, None, training=True),
    "se_scale_add_relu": lambda x, s, r, g, b: F.se_scale_add_relu(x, s, r),
    "add_relu": lambda x, s, r, g, b: F.add_relu(x, r),
    "relu": lambda x, s, r, g, b: F.relu(x),
    "se_squeeze": lambda x, s, r, g, b: F.se_squeeze(x),
}


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("name", CHUNKED_OPS)
def test_ops_in_many_chunks_on_threads_equal_one_chunk(monkeypatch, name, threads):
    """Forward and every gradient are the same whether the batch runs as one chunk or one image per chunk, on
    1 to 3 threads (up to the order of the partial sums)."""
    rng = np.random.default_rng(3)
    shape = (7, 3, 4, 5)
    arrays = [rng.standard_normal(shape), rng.random(shape[:2]) + 0.5, rng.standard_normal(shape),
              rng.random(3) + 0.5, rng.standard_normal(3)]
    upstream = rng.standard_normal(CHUNKED_OPS[name](*[Tensor(a) for a in arrays]).shape)
    monkeypatch.setenv("TINYSE_NUM_THREADS", str(threads))
    results = []
    for cache_bytes in (parallel.CACHE_BYTES, 1):  # the whole batch in one chunk; one image per chunk
        monkeypatch.setattr(parallel, "CACHE_BYTES", cache_bytes)
        tensors = [Tensor(a.copy(), requires_grad=True) for a in arrays]
        CHUNKED_OPS[name](*tensors).backward(upstream)
        results.append([CHUNKED_OPS[name](*tensors).data] + [t.grad for t in tensors])
    for whole, chunked in zip(*results):
        if whole is None:
            assert chunked is None
        else:
            np.testing.assert_allclose(chunked, whole, rtol=1e-12, atol=1e-12)
