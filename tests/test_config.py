"""Config tree: YAML + --set overrides, and errors that name the bad field."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from selfplay.config import ConfigError, RunConfig, load_config, save_config, validate
from selfplay.device import native_bf16, resolve_dtype


def test_defaults_load_and_validate():
    cfg = load_config()
    assert cfg.model.dtype == resolve_dtype("auto")  # resolved on this machine (below)
    assert dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype="auto")) == RunConfig()
    assert validate(RunConfig()) == cfg
    assert cfg.learner.lr == 3e-4
    assert cfg.eval.opponents == ["random", "minimax", "nash", "greedy", "fair"]
    assert cfg.games == {"tictactoe": 1.0} and not cfg.league.enabled


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: small\nlearner:\n  batch_size: 64\n  lr: 0.001\nbuffer:\n  min_size: 96\n")
    cfg = load_config(path, ["learner.lr=1e-4", "eval.opponents=[random]", "model.path=/m"])
    assert cfg.name == "small"
    assert cfg.learner.batch_size == 64
    assert cfg.buffer.min_size == 96
    assert type(cfg.learner.lr) is float and cfg.learner.lr == 0.0001  # YAML 1.1 reads 1e-4 as str
    assert cfg.eval.opponents == ["random"]
    assert cfg.model.path == "/m"
    assert cfg.learner.clip_eps == 0.2  # untouched fields keep defaults


def test_override_int_into_float_field_becomes_float():
    cfg = load_config(overrides=["learner.grad_clip=2"])
    assert type(cfg.learner.grad_clip) is float and cfg.learner.grad_clip == 2.0


def test_override_null_into_optional_field():
    assert load_config(overrides=["ray.address=null"]).ray.address is None


def test_empty_yaml_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == load_config()


@pytest.mark.parametrize(
    "override, field",
    [
        ("lrr=1", "lrr"),
        ("learner.lrr=1e-4", "learner.lrr"),
        ("eval.oponents=[random]", "eval.oponents"),
    ],
)
def test_unknown_field_is_named_first(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert str(err.value).startswith(f"{field}: unknown field")


def test_dtype_auto_resolves_when_the_config_loads_and_a_named_one_is_kept(tmp_path, monkeypatch):
    """model.dtype auto becomes this machine's choice before any actor sees it, so the
    learner's exports and every engine agree and the saved config names what a run used."""
    cuda = torch.cuda.is_available()
    assert load_config().model.dtype == ("bfloat16" if native_bf16("cuda" if cuda else "cpu") else "float32")
    monkeypatch.setattr("selfplay.device.native_bf16", lambda device="cpu": False)
    assert load_config().model.dtype == "float32"
    monkeypatch.setattr("selfplay.device.native_bf16", lambda device="cpu": True)
    assert load_config().model.dtype == "bfloat16"
    monkeypatch.setattr("selfplay.device.native_bf16", lambda device="cpu": False)
    assert load_config(None, ["model.dtype=bfloat16"]).model.dtype == "bfloat16"  # as asked
    save_config(load_config(), tmp_path / "run.yaml")
    assert "dtype: float32" in (tmp_path / "run.yaml").read_text()
    # a config submitted to a cluster keeps auto: the job's driver resolves it there
    assert load_config(None, [], resolve=False).model.dtype == "auto"


@pytest.mark.parametrize("value, loaded", [("auto", "auto"), ("true", True), ("false", False)])
def test_learner_bf16_takes_a_bool_or_auto(value, loaded):
    assert load_config(None, [f"learner.bf16={value}"]).learner.bf16 == loaded


def test_unknown_field_in_yaml_is_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learner:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith("learner.lrr:")


@pytest.mark.parametrize(
    "override, field",
    [
        ("learner.batch_size=abc", "learner.batch_size"),
        ("learner.batch_size=1.5", "learner.batch_size"),
        ("learner.bf16=1", "learner.bf16"),
        ("learner.bf16=yes_please", "learner.bf16"),
        ("learner.lr=fast", "learner.lr"),
        ("learner.lr=true", "learner.lr"),
        ("model.path=3", "model.path"),
        ("eval.opponents=random", "eval.opponents"),
        ("eval.opponents=[1]", "eval.opponents[0]"),
        ("learner=3", "learner"),
        ("games=[tictactoe]", "games"),
        ("games={tictactoe: fast}", "games.tictactoe"),
    ],
)
def test_ill_typed_value_is_named(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert str(err.value).startswith(f"{field}:")


@pytest.mark.parametrize(
    "override, field",
    [
        ("learner.batch_size=0", "learner.batch_size"),
        ("learner.lr=-1e-4", "learner.lr"),
        ("buffer.max_staleness=-1", "buffer.max_staleness"),
        ("learner.baseline_alpha=1.0", "learner.baseline_alpha"),
        ("model.dtype=int8", "model.dtype"),
        ("eval.opponents=[random,alphazero]", "eval.opponents[1]"),
        ("games={chess: 1.0}", "games.chess"),
        ("games={tictactoe: 0}", "games.tictactoe"),
        ("games={}", "games"),
        ("league.mode=elo", "league.mode"),
        ("league.self_play_fraction=1.5", "league.self_play_fraction"),
        ("eval.kuhn_average_tail=1.5", "eval.kuhn_average_tail"),
        ("eval.kuhn_average_tail=-0.1", "eval.kuhn_average_tail"),
        ("league.max_live_opponents=0", "league.max_live_opponents"),
        ("learner.device=tpu", "learner.device"),
        ("learner.weight_sync=nccl", "learner.weight_sync"),
        ("learner.sync_backend=mpi", "learner.sync_backend"),
        ("learner.sync_bucket_mb=0", "learner.sync_bucket_mb"),
        ("learner.num_workers=0", "learner.num_workers"),
        ("learner.lora_rank=-1", "learner.lora_rank"),
        # the run's directory under out_dir: no path out of it
        ("name=../../x", "name"),
        ("name=/tmp/evil", "name"),
        ("seed=-5", "seed"),  # numpy's generators take none
        ("ray.num_cpus=0", "ray.num_cpus"),
        ("league.final_match=-5", "league.final_match"),
        # nan and numbers past a float: no field means anything by them
        ("learner.lr=nan", "learner.lr"),
        ("task.alarm_margin=.nan", "task.alarm_margin"),
        ("builder.accept_reward=nan", "builder.accept_reward"),
        ("total_steps=1" + "0" * 400, "total_steps"),
        ("learner.lr=1" + "0" * 400, "learner.lr"),
    ],
)
def test_out_of_range_value_is_named(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert str(err.value).startswith(f"{field}:")


@pytest.mark.parametrize(
    "other", ["learner.num_workers=2", "learner.lora_rank=8", "learner.gradient_checkpointing=true"]
)
def test_a_compiled_learner_is_refused_where_it_was_not_measured(other):
    assert load_config(overrides=["learner.compile=true"]).learner.compile
    with pytest.raises(ConfigError, match="^learner.compile: only for a single learner"):
        load_config(overrides=["learner.compile=true", other])


def test_nccl_weight_sync_from_a_cpu_learner_is_refused():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["learner.sync_backend=nccl", "learner.device=cpu"])
    assert str(err.value).startswith("learner.sync_backend: nccl sends from a GPU")
    assert load_config(overrides=["learner.sync_backend=nccl"]).learner.sync_backend == "nccl"  # device auto


def test_min_size_above_capacity_is_refused():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["buffer.capacity=100", "buffer.min_size=101"])
    assert str(err.value).startswith("buffer.min_size:")
    ok = load_config(overrides=["buffer.capacity=100", "buffer.min_size=100", "learner.batch_size=100"])
    assert ok.buffer.min_size == 100


def test_min_size_below_batch_size_is_refused():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["learner.batch_size=64", "buffer.min_size=63"])
    assert str(err.value).startswith("buffer.min_size:")


def test_malformed_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("learner: [lr: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: not valid YAML")


def test_yaml_top_level_list_names_the_file(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping") as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_override_without_equals_sign_is_refused():
    with pytest.raises(ConfigError, match="expected key=value") as err:
        load_config(overrides=["learner.lr"])
    assert "'learner.lr'" in str(err.value)


def test_save_then_load_round_trips(tmp_path):
    cfg = load_config(
        overrides=[
            "learner.lr=1e-4",
            "eval.opponents=[minimax]",
            "model.path=/m",
            "ray.num_cpus=4",
            "time_limit_min=2.5",
            "learner.bf16=false",
        ]
    )
    path = tmp_path / "saved.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg


def test_save_then_load_round_trips_defaults(tmp_path):
    path = tmp_path / "defaults.yaml"
    save_config(RunConfig(), path)
    assert load_config(path) == load_config()


def test_a_game_mix_loads_from_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("games: {tictactoe: 2, kuhn: 1.0, 'textarena:TicTacToe-v0': 0.5}\n")
    assert load_config(path).games == {"tictactoe": 2.0, "kuhn": 1.0, "textarena:TicTacToe-v0": 0.5}


def test_the_old_single_game_field_says_what_replaced_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("game: tictactoe\n")
    with pytest.raises(ConfigError, match=r"^game: replaced by games.*games: \{tictactoe: 1.0\}"):
        load_config(path)


def test_closed_sets_are_read_from_their_types():
    import typing

    from selfplay.config import MatchmakingMode
    from selfplay.league import MODES

    assert MODES == typing.get_args(MatchmakingMode) == ("pfsp", "near", "latest")
    with pytest.raises(
        ConfigError, match=r"league.mode: must be one of \('pfsp', 'near', 'latest'\), got 'elo'"
    ):
        load_config(overrides=["league.mode=elo"])


def test_legal_moves_only_needs_one_token_moves_of_a_game():
    with pytest.raises(ConfigError, match="generator.legal_moves_only: masks one-token moves.*got 3"):
        load_config(overrides=["generator.legal_moves_only=true"])
    with pytest.raises(
        ConfigError, match="generator.legal_moves_only: masks a game's moves; task arithmetic"
    ):
        load_config(
            overrides=[
                "task.name=arithmetic",
                "learner.advantage=group",
                "generator.legal_moves_only=true",
                "generator.max_response_tokens=1",
            ]
        )
    cfg = load_config(overrides=["generator.legal_moves_only=true", "generator.max_response_tokens=1"])
    assert cfg.generator.legal_moves_only


def test_gae_asks_for_whole_games_and_a_lambda_in_range():
    with pytest.raises(ConfigError, match="learner.advantage: gae runs over each game's turns"):
        load_config(overrides=["learner.advantage=gae"])
    with pytest.raises(ConfigError, match=r"learner.gamma: must be in \(0, 1\], got 0.0"):
        load_config(overrides=["learner.advantage=gae", "buffer.whole_games=true", "learner.gamma=0"])
    with pytest.raises(ConfigError, match="learner.gamma: discounts the gae advantage"):
        load_config(overrides=["learner.gamma=0.9"])
    assert (
        load_config(
            overrides=["learner.advantage=gae", "buffer.whole_games=true", "learner.gamma=0.9"]
        ).learner.gamma
        == 0.9
    )
    with pytest.raises(ConfigError, match=r"learner.gae_lambda: must be in \[0, 1\], got 1.5"):
        load_config(overrides=["learner.advantage=gae", "buffer.whole_games=true", "learner.gae_lambda=1.5"])
    with pytest.raises(ConfigError, match="learner.advantage: must be one of"):
        load_config(overrides=["learner.advantage=vtrace"])
    with pytest.raises(ConfigError, match="buffer.sampling: must be one of"):
        load_config(overrides=["buffer.sampling=prioritized"])
    cfg = load_config(overrides=["learner.advantage=gae", "buffer.whole_games=true"])
    assert (cfg.learner.advantage, cfg.buffer.sampling) == ("gae", "least_sampled")


def test_scripted_training_opponents_are_checked_against_the_games():
    cfg = load_config(overrides=["generator.opponents={heuristic: 0.25}"])
    assert cfg.generator.opponents == {"heuristic": 0.25}
    with pytest.raises(
        ConfigError, match="generator.opponents.heuristic: no scripted player 'heuristic' in game kuhn"
    ):
        load_config(overrides=["games={tictactoe: 1.0, kuhn: 1.0}", "generator.opponents={heuristic: 0.25}"])
    with pytest.raises(ConfigError, match="generator.opponents.random: share must be > 0, got -0.1"):
        load_config(overrides=["generator.opponents={random: -0.1}"])
    with pytest.raises(ConfigError, match="generator.opponents: shares add up to 1.2, more than 1"):
        load_config(overrides=["generator.opponents={random: 0.6, heuristic: 0.6}"])


def test_random_openings_need_a_random_player_and_a_game():
    cfg = load_config(overrides=["generator.opening_moves=1", "generator.opening_share=0.5"])
    assert (cfg.generator.opening_moves, cfg.generator.opening_share) == (1, 0.5)
    with pytest.raises(
        ConfigError, match="generator.opening_moves: game textarena:TicTacToe-v0 has no `random`"
    ):
        load_config(overrides=["games={'textarena:TicTacToe-v0': 1.0}", "generator.opening_moves=1"])
    with pytest.raises(ConfigError, match="generator.opening_share: must be in"):
        load_config(overrides=["generator.opening_moves=1", "generator.opening_share=1.5"])
    with pytest.raises(ConfigError, match="generator.opening_moves: must be"):
        load_config(overrides=["generator.opening_moves=-1"])
    with pytest.raises(
        ConfigError, match=r"generator.opening_moves_min: 3 is more than generator.opening_moves \(2\)"
    ):
        load_config(overrides=["generator.opening_moves=2", "generator.opening_moves_min=3"])
    with pytest.raises(ConfigError, match="generator.opening_moves_min: must be"):
        load_config(overrides=["generator.opening_moves=2", "generator.opening_moves_min=-1"])
    with pytest.raises(ConfigError, match="generator.opening_moves: a task run has no game to open"):
        load_config(overrides=[*TASK, "generator.opening_moves=1"])


def test_board_symmetries_need_tictactoe():
    assert load_config(overrides=["generator.board_symmetries=true"]).generator.board_symmetries
    with pytest.raises(ConfigError, match="generator.board_symmetries: only TicTacToe has them"):
        load_config(overrides=["games={kuhn: 1.0}", "generator.board_symmetries=true"])
    with pytest.raises(ConfigError, match="generator.board_symmetries: a task run has no board"):
        load_config(overrides=[*TASK, "generator.board_symmetries=true"])


def test_k1_in_the_loss_is_refused_naming_why():
    with pytest.raises(ConfigError, match="learner.kl_estimator: k1 as a loss has no KL gradient"):
        load_config(overrides=["learner.kl_placement=loss", "learner.kl_estimator=k1"])
    assert (
        load_config(overrides=["learner.kl_placement=loss", "learner.kl_estimator=k2"]).learner.kl_estimator
        == "k2"
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("acceptance={tictactoe: '>= 0.9'}", "acceptance.tictactoe: name an evaluation field"),
        ("acceptance={tictactoe/minimax/non_loss: 'at least 0.9'}", "expected a comparison such as"),
        ("stop_when={batch_reward: 0.55}", "stop_when.batch_reward: expected str, got 0.55"),
        ("stop_when={batch_reward: '= 0.55'}", "stop_when.batch_reward: expected a comparison such as"),
        ("stop_window=0", "stop_window: must be > 0"),
    ],
)
def test_an_acceptance_target_that_cannot_be_read_is_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_the_demo_configs_carry_their_acceptance_targets():
    ttt = load_config("configs/tictactoe.yaml").acceptance
    assert ttt["tictactoe/minimax/non_loss"] == ">= 0.90" and ttt["tictactoe/random/illegal"] == "<= 0.01"
    assert load_config("configs/league.yaml").acceptance["kuhn/exploitability/exploitability"] == "<= 0.05"
    for task_demo in ("configs/rft.yaml", "configs/grpo.yaml"):
        assert load_config(task_demo).acceptance == {"arithmetic/held_out/accuracy_gain_over_sft": ">= 0.10"}


TASK = ["task.name=arithmetic", "learner.advantage=group"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["task.name=chess", "learner.advantage=group"], "^task: unknown task 'chess'"),
        ([*TASK, "task.held_out=1000"], r"arithmetic: held_out\(1000\) asks for more than"),
        ([*TASK, "task.samples_per_prompt=1"], "task.samples_per_prompt: group advantages need at least 2"),
        (
            [*TASK, "builder.group_advantage=passk", "builder.pass_k=8"],
            r"builder.pass_k: must be < task.samples_per_prompt \(8\)",
        ),
        ([*TASK, "acceptance={arithmetic/held_out/acuracy: '>= 0.5'}"], "FIELD one of accuracy, pass_at_k"),
        ([*TASK, "task.params={digitz: 3}"], "task.params.digitz: unknown parameter of arithmetic"),
        (["task.name=arithmetic"], "learner.advantage: a task run trains on the builder's group advantages"),
        (
            [*TASK, "league.enabled=true"],
            "league.enabled: a task run's league holds the snapshots that compete",
        ),
        (
            [*TASK, "generator.opponents={random: 0.5}"],
            "generator.opponents: a task run has no scripted opponents",
        ),
        ([*TASK, "sft.steps=10", "sft.examples=100"], r"sft.examples: must be >= learner.batch_size \(512\)"),
        (
            [*TASK, "acceptance={tictactoe/minimax/non_loss: '>= 0.9'}"],
            "a task run reports arithmetic/held_out/FIELD",
        ),
        ([*TASK, "task.samples_per_prompt=0"], "task.samples_per_prompt: must be > 0"),
        ([*TASK, "builder.rows=pairs"], "builder.rows: must be one of"),
        (["learner.advantage=group"], "learner.advantage: group needs a task"),
        ([*TASK, "sft.lr=0"], "sft.lr: must be > 0"),
        (["league.reference_every=-1"], "league.reference_every: must be >= 0"),
        ([*TASK, "task.hard_fraction=1.5"], r"task.hard_fraction: must be in \[0, 1\]"),
        (
            [*TASK, "task.screen_samples=1"],
            r"task.screen_samples: must be 0 or in \[2, task.samples_per_prompt\)",
        ),
        ([*TASK, "task.screen_samples=8"], r"task.screen_samples: must be 0 or in \[2, .*\(= 8\), got 8"),
        (
            [
                "task.name=solver_checker",
                "learner.advantage=group",
                "task.held_out=50",
                "task.screen_samples=4",
            ],
            "task.screen_samples: screens a one-role task's own samples; solver_checker",
        ),
        ([*TASK, "task.screen_samples=4", "builder.rows=sft"], "task.screen_samples: .*builder.rows rl"),
        (
            [
                "task.name=words",
                "learner.advantage=group",
                "task.held_out=50",
                "task.curriculum=learnability",
            ],
            "task.curriculum: draws by a task's difficulty classes; words has none",
        ),
        ([*TASK, "task.curriculum=hardest"], "task.curriculum"),
        ([*TASK, "task.curriculum_floor=0"], r"task.curriculum_floor: must be in \(0, 1\], got 0"),
    ],
)
def test_a_task_run_is_checked_field_by_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_task_run_skips_the_game_checks():
    cfg = load_config(None, [*TASK, "eval.opponents=[nobody]", "task.params={digits: 3, terms: 3}"])
    assert cfg.task.params == {"digits": 3, "terms": 3}


def test_a_rate_limit_tolerance_that_could_deadlock_is_refused():
    # below half a batch, inserts and samples can both be held back (actors/buffer.py)
    with pytest.raises(ConfigError, match=r"buffer.spi_tolerance: must be >= learner.batch_size / 2 \(32\)"):
        load_config(None, ["learner.batch_size=64", "buffer.min_size=64", "buffer.spi_tolerance=31"])
    assert load_config(None, ["learner.batch_size=64", "buffer.min_size=64", "buffer.spi_tolerance=32"])


@pytest.mark.parametrize("override", ["learner.lr=[", "learner.lr={a", "learner.lr='x"])
def test_an_override_that_is_not_yaml_is_a_one_line_error_naming_the_field(override):
    with pytest.raises(ConfigError, match=r"^learner.lr: cannot read .* as a YAML value") as err:
        load_config(None, [override])
    assert "\n" not in str(err.value)


def leaf_fields(cls, prefix: str = "") -> list[str]:
    import dataclasses

    out = []
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out += leaf_fields(type(default), f"{name}.")
        else:
            out.append(name)
    return out


BAD_VALUES = [
    "[",
    "{a",
    "'x",
    "",
    "abc",
    "-1",
    "-1e400",
    "1e400",
    ".nan",
    "[1, 2]",
    "{a: 1}",
    "true",
    "null",
    "0",
]


def test_every_field_takes_any_value_or_names_itself_in_one_line():
    """Fuzz: every leaf of the config tree, set to values of every wrong shape, is loaded
    or refused with a ConfigError of one line naming the field; nothing else escapes."""
    fields = leaf_fields(RunConfig)
    assert len(fields) > 100
    refused = 0
    for name in fields:
        for value in BAD_VALUES:
            try:
                load_config(None, [f"{name}={value}"])
            except ConfigError as err:
                message = str(err)
                assert "\n" not in message, (name, value, message)
                section = name.split(".")[0]
                assert message.split(":")[0].startswith(section) or name in message, (name, value, message)
                refused += 1
    assert refused > len(fields) * len(BAD_VALUES) / 2  # most of these are wrong everywhere


@pytest.mark.parametrize(
    "argv",
    [
        ["--set", "learner.lr=["],
        ["--set", "learner.batch_size=-5"],
        ["--set", "learner.lr=abc"],
        ["--set", "no.such=1"],
        ["--set", "generator.games_per_wave=[1, 2]"],
        ["--set", "learner.micro_batch_size=-1"],
        ["--name", "../outside"],
        ["--name", "a/b"],
    ],
)
def test_the_cli_refuses_bad_input_in_one_line_and_writes_nothing(argv, tmp_path, capsys):
    from selfplay.cli import main

    out = tmp_path / "runs"
    assert main(["run", "configs/tictactoe.yaml", "--set", f"out_dir={out}", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("selfplay: error: ") and "\n" not in err, err
    assert not out.exists()


def test_resuming_a_directory_that_is_not_a_run_is_one_line(tmp_path, capsys):
    from selfplay.cli import main

    assert main(["run", "--resume", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("selfplay: error: ") and "\n" not in err, err


def test_a_learner_group_takes_preference_pairs_and_lora():
    # both train in a group (tests/test_sharded_learner.py)
    assert load_config("configs/spin.yaml", ["learner.num_workers=2"]).learner.num_workers == 2
    cfg = load_config(overrides=["learner.num_workers=2", "learner.lora_rank=8"]).learner
    assert (cfg.num_workers, cfg.lora_rank) == (2, 8)


def test_a_final_match_larger_than_the_held_out_set_is_named_itself():
    with pytest.raises(ConfigError, match="^league.final_match: describe: held_out"):
        load_config("configs/compete.yaml", ["league.final_match=10000000"])


@pytest.mark.parametrize("path", ["/mnt/my runs #2", "/mnt/a: b", "/mnt/[x]", "/tmp/é"])
def test_a_path_a_person_typed_is_set_as_the_string_it_is(path):
    from selfplay.config import string_override

    assert load_config(None, [string_override("out_dir", path)]).out_dir == path


def test_a_gpu_that_only_emulates_bf16_does_not_get_it(monkeypatch):
    """torch says a T4 or V100 supports bf16 (it emulates it); `auto` then chose bfloat16,
    which vLLM refuses on such a card and the learner would emulate."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert native_bf16("cuda") is False
