"""The weight checksum: its value is part of what a run keeps (league members' checksums are
compared again after a resume), so it is pinned here, with the older scheme a resumed run
may have recorded."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from selfplay.weights import CHECKSUM_SCHEME, export_tensors, legacy_checksum, same_weights, state_checksum


def tensors() -> dict[str, torch.Tensor]:
    return {
        "b": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
        "a": torch.tensor([[1.0, 2.0], [3.0, 4.0]]).t(),  # not contiguous: hashed in logical order
    }


def test_the_checksum_is_sha256_of_names_dtypes_shapes_and_held_bytes_in_name_order():
    digest = hashlib.sha256()
    digest.update(b"a\0torch.float32\0(2, 2)\0")
    digest.update(np.array([[1.0, 3.0], [2.0, 4.0]], dtype=np.float32).tobytes())
    digest.update(b"b\0torch.bfloat16\0(2,)\0")
    digest.update(bytes([0xC0, 0x3F, 0x00, 0xC0]))  # bf16 1.5 = 0x3FC0, -2.0 = 0xC000, little-endian
    assert state_checksum(tensors()) == CHECKSUM_SCHEME + digest.hexdigest()
    changed = {**tensors(), "b": tensors()["b"] + 1}
    assert state_checksum(changed) != state_checksum(tensors())
    # the same values in another dtype, or another shape, are other weights
    assert state_checksum({**tensors(), "b": tensors()["b"].float()}) != state_checksum(tensors())
    assert state_checksum({**tensors(), "a": tensors()["a"].reshape(4)}) != state_checksum(tensors())
    assert state_checksum({"s": torch.tensor(3.0)})  # a 0-dim tensor hashes too


def test_the_legacy_checksum_is_sha256_of_names_and_fp32_values_in_name_order():
    digest = hashlib.sha256()
    digest.update(b"a")
    digest.update(np.array([[1.0, 3.0], [2.0, 4.0]], dtype=np.float32).tobytes())
    digest.update(b"b")
    digest.update(np.array([1.5, -2.0], dtype=np.float32).tobytes())
    assert legacy_checksum(tensors()) == digest.hexdigest()


def test_a_recorded_checksum_is_recognised_in_either_scheme():
    now, legacy = state_checksum(tensors()), legacy_checksum(tensors())
    other = {**tensors(), "b": tensors()["b"] + 1}
    assert same_weights(now, now, tensors)
    assert same_weights(legacy, now, tensors)  # an older run's league member
    assert not same_weights(legacy, state_checksum(other), lambda: other)
    assert not same_weights(state_checksum(other), now, tensors)
    # a record in today's scheme is never compared by the old one
    assert not same_weights(CHECKSUM_SCHEME + legacy, now, tensors)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_export_is_a_copy_in_every_dtype_even_of_tied_weights(dtype):
    """float32 engines take a float32 learner's weights unchanged in dtype: the export still
    copies, so tied tensors save (safetensors refuses shared storage) and a later step does
    not change what was sent or its checksum."""
    embed = torch.nn.Parameter(torch.randn(4, 3))
    state = {"model.embed_tokens.weight": embed, "lm_head.weight": embed, "b": torch.randn(3)}
    tensors, checksum = export_tensors(state, dtype)
    assert all(t.data_ptr() != v.data_ptr() for t, v in zip(tensors.values(), state.values()))
    assert tensors["lm_head.weight"].data_ptr() != tensors["model.embed_tokens.weight"].data_ptr()
    blob = save_safetensors(tensors)  # raises on shared storage
    with torch.no_grad():
        embed.add_(1.0)
    assert state_checksum(tensors) == checksum and state_checksum(load_safetensors(blob)) == checksum
