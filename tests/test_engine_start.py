"""An engine that compiles its model leaves it in vLLM's compile cache, and the next engine of
that model shape loads it rather than compiling again (actors/engine.py: vLLM 0.32's AOT
artifacts, its default on torch >= 2.12, fail to load, and each engine compiled anew)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = """
import dataclasses, json, sys
from actors.engine import Engine
from selfplay.config import load_config
from vllm.compilation.counter import compilation_counter as counter

cfg = load_config(None, ["model.preset=1m", "model.max_model_len=64", "generator.cpu_bind=nobind"])
gen = dataclasses.replace(cfg.generator, enforce_eager=False)
starts = []
for seed in (1, 2):
    before = counter.clone()
    engine = Engine(sys.argv[1], cfg.model, gen, seed)
    assert engine.generate([engine.encode("x")], 2, 1.0)[0].token_ids
    starts.append({f.name: getattr(counter, f.name) - getattr(before, f.name) for f in dataclasses.fields(counter)})
    del engine
print("COUNTS " + json.dumps(starts))
"""


def test_a_second_compiled_engine_of_a_model_shape_loads_the_first_ones_compiled_graph(tiny_model, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "VLLM_USE_AOT_COMPILE"}  # the engine's own default
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, tiny_model], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("COUNTS "))
    first, second = json.loads(line.removeprefix("COUNTS "))
    assert first["num_models_seen"] == second["num_models_seen"] == 1  # each one compiled (not eager)
    compiled = ("num_aot_compiles", "num_inductor_compiles", "num_backend_compilations")
    assert {k: second[k] for k in compiled} == dict.fromkeys(compiled, 0), second
