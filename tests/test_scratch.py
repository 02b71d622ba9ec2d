"""gctnet.kernels.scratch: the lean path's reused CPU output buffers."""

from __future__ import annotations

import pytest
import torch

from gctnet.kernels import scratch


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.delenv("GCTNET_SCRATCH_MB", raising=False)
    scratch.clear()
    yield
    scratch.set_limit_mb(None)
    scratch.clear()


def test_buffer_is_reused_only_after_every_tensor_on_it_is_gone():
    x = torch.randn(4, 3, 5, 5)
    a = scratch.like(x)
    assert a.shape == x.shape and a.stride() == x.stride() and a.dtype == x.dtype
    ptr = a.data_ptr()
    b = scratch.like(x)  # a still alive: a different buffer
    assert b.data_ptr() != ptr
    ptr_b = b.data_ptr()
    view = b[1:]
    del a, b
    c = scratch.like(x)  # b's buffer is still seen through `view`
    assert c.data_ptr() not in (ptr_b,)
    ptr_c = c.data_ptr()
    del c, view
    assert scratch.like(x).data_ptr() == ptr_c
    assert scratch.held_bytes() == x.numel() * 4


def test_every_kernel_layout_gets_a_buffer_with_its_strides():
    for x in (
        torch.randn(2, 3, 4, 4, 4).contiguous(memory_format=torch.channels_last_3d),
        torch.randn(2, 5, 3).transpose(1, 2),  # (N, C, L) view of an (N, L, C) tensor
        torch.randn(2, 3, 5),
    ):
        buf = scratch.like(x)
        assert buf is not None and buf.stride() == x.stride()


def test_keyed_by_shape_strides_and_dtype():
    x = torch.randn(2, 4, 3, 3)
    cl = x.contiguous(memory_format=torch.channels_last)
    a, b, c = scratch.like(x), scratch.like(cl), scratch.like(x.double())
    assert b.stride() == cl.stride() and c.dtype == torch.float64
    assert len({a.data_ptr(), b.data_ptr(), c.data_ptr()}) == 3
    assert scratch.held_bytes() == x.numel() * (4 + 4 + 8)


def test_other_tensors_get_none():
    assert scratch.like(torch.randn(2, 3, 4, 5).transpose(2, 3)) is None  # not dense in a known layout
    assert scratch.like(torch.randn(2, 3, 4, 5).permute(0, 2, 1, 3)) is None  # dense, but not a kernel layout
    assert scratch.like(torch.randn(2, 0, 3)) is None
    assert scratch.like(torch.randn(2, 3, 4, device="meta")) is None
    assert scratch.held_bytes() == 0


def test_budget_evicts_least_recently_used_and_zero_disables(monkeypatch):
    monkeypatch.setenv("GCTNET_SCRATCH_MB", str(3 * 4096 / (1 << 20)))  # room for three 4 KiB buffers
    xs = [torch.empty(1, 1, 1024 + i) for i in (0, 1, 2, 3)]  # 4096, 4100, ... bytes
    for x in xs[:3]:
        scratch.like(x)
    scratch.like(xs[0])  # xs[0] used last: xs[1] is now the least recently used
    assert scratch.held_bytes() <= 3 * 4096
    scratch.like(xs[3])
    keys = [k[0] for k in scratch._local.entries]
    assert (1, 1, 1025) not in keys and (1, 1, 1024) in keys and (1, 1, 1027) in keys
    assert scratch.like(torch.empty(1, 1, 4096)) is None  # 16 KiB: over the whole budget
    with scratch.use_limit_mb(0):
        assert scratch.like(xs[0]) is None
    assert scratch.like(xs[0]) is not None
    scratch.set_limit_mb(0)
    assert scratch.like(xs[0]) is None and scratch.limit_bytes() == 0


def test_entry_count_is_bounded():
    for i in range(scratch.MAX_ENTRIES + 5):
        scratch.like(torch.empty(1, 1, i + 1))
    assert len(scratch._local.entries) == scratch.MAX_ENTRIES


def test_bad_budgets_are_explained(monkeypatch):
    monkeypatch.setenv("GCTNET_SCRATCH_MB", "lots")
    with pytest.raises(ValueError, match=r"GCTNET_SCRATCH_MB must be a number of MiB >= 0.*got 'lots'"):
        scratch.limit_bytes()
    monkeypatch.setenv("GCTNET_SCRATCH_MB", "-1")
    with pytest.raises(ValueError, match="MiB >= 0"):
        scratch.like(torch.empty(1, 1, 4))
    with pytest.raises(ValueError, match="set_limit_mb"):
        scratch.set_limit_mb(-5)


def test_budget_follows_the_environment_as_it_changes(monkeypatch):
    # the parsed value is kept per raw string: a changed variable is read again, a bad one still fails
    monkeypatch.setenv("GCTNET_SCRATCH_MB", "1")
    assert scratch.limit_bytes() == 1 << 20
    monkeypatch.setenv("GCTNET_SCRATCH_MB", " 2 ")
    assert scratch.limit_bytes() == 2 << 20
    monkeypatch.setenv("GCTNET_SCRATCH_MB", "lots")
    with pytest.raises(ValueError, match="got 'lots'"):
        scratch.limit_bytes()
    with pytest.raises(ValueError, match="got 'lots'"):  # not remembered as valid
        scratch.limit_bytes()
    monkeypatch.delenv("GCTNET_SCRATCH_MB")
    assert scratch.limit_bytes() == 512 << 20


def test_buffers_are_per_thread():
    import threading

    x = torch.randn(2, 3, 4)
    scratch.like(x)
    seen = []
    t = threading.Thread(target=lambda: seen.append(scratch.held_bytes()))
    t.start(), t.join()
    assert seen == [0] and scratch.held_bytes() == x.numel() * 4


def test_inference_mode_buffers_are_kept_apart():
    x = torch.randn(2, 3, 4, 4)
    with torch.inference_mode():
        a = scratch.like(x)
        assert a.is_inference()
        del a
    b = scratch.like(x)  # not the inference tensor: writing into it outside inference_mode must work
    assert not b.is_inference()
    b.copy_(x)
    assert len(scratch._local.entries) == 2


def test_tensor_subclasses_get_none():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = mode.from_tensor(torch.randn(2, 3, 4, 4))
        assert scratch.like(fake) is None
    assert scratch.held_bytes() == 0
