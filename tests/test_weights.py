"""The weight checksum: its value is part of what a run keeps (league members' and the best
checkpoint's checksums are compared again after a resume), so it is pinned here."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from selfplay.weights import state_checksum


def test_the_checksum_is_sha256_of_names_and_fp32_values_in_name_order():
    tensors = {
        "b": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
        "a": torch.tensor([[1.0, 2.0], [3.0, 4.0]]).t(),  # not contiguous: hashed in logical order
    }
    digest = hashlib.sha256()
    digest.update(b"a")
    digest.update(np.array([[1.0, 3.0], [2.0, 4.0]], dtype=np.float32).tobytes())
    digest.update(b"b")
    digest.update(np.array([1.5, -2.0], dtype=np.float32).tobytes())
    assert state_checksum(tensors) == digest.hexdigest()
    assert state_checksum({"a": tensors["a"], "b": tensors["b"] + 1}) != digest.hexdigest()
