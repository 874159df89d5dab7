"""One typed config tree, loaded from YAML, overridden with `--set a.b=c`, validated with
errors that name the field."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from selfplay.files import write_atomic


class ConfigError(ValueError):
    """A config value is missing, unknown or ill-typed; the message names the field."""


# Closed sets are types: the loader checks a value against them, and code that needs the
# list reads it with typing.get_args (one definition each).
Dtype = Literal["auto", "bfloat16", "float32", "float16"]  # selfplay/device.py:pick_dtype
MatchmakingMode = Literal["pfsp", "near", "latest"]  # see selfplay/league.py:matchmaking_probs
KlPlacement = Literal["reward", "loss"]
KlEstimator = Literal["k1", "k2", "k3"]
BufferSampling = Literal["least_sampled", "uniform"]
Advantage = Literal["rae", "gae", "group"]  # see learner/advantages.py
GroupAdvantage = Literal["grpo", "drgrpo", "rloo", "passk"]  # learner/advantages.py:group_advantages
BuilderRows = Literal["rl", "sft", "spin", "compete", "best_worst"]  # selfplay/builder.py
PreferenceLoss = Literal["sigmoid", "ipo", "hinge"]  # learner/losses.py:preference_loss
TaskPrompts = Literal["train", "sft"]
TaskVersus = Literal["self", "snapshot"]
TaskCurriculum = Literal["none", "learnability"]
TaskJudge = Literal["rules", "self"]
JudgeWeights = Literal["current", "snapshot"]
Truncated = Literal["score", "zero"]  # task.truncated
MonitorReplies = Literal["greedy", "sampled"]
WeightSync = Literal["object_store", "collective"]
SyncBackend = Literal["auto", "gloo", "nccl"]  # selfplay/collective.py:pick_backend
LossAggregation = Literal["token_mean", "sequence_mean"]  # learner/losses.py:ppo_clip_loss
LrSchedule = Literal["constant", "linear", "cosine"]  # learner/schedule.py:scheduled_lr


@dataclass
class ModelConfig:
    path: str | None = None  # any HF-format directory; None builds the default model
    preset: str = "3m"  # default-model size when path is None
    # The engines' dtype and the weights broadcast to them. auto: bfloat16 where the machine
    # that loads the config computes it natively (a CUDA device, or a CPU with AMX or
    # AVX512-BF16), float32 elsewhere (an AVX2-only CPU emulates bf16 several times slower);
    # resolved when the config loads, so a run's saved config names what it used
    dtype: Dtype = "auto"
    max_model_len: int | None = None  # None: the model's own max_position_embeddings


@dataclass
class GeneratorConfig:
    num_generators: int = 1  # at start; `selfplay scale` or autoscale changes it while training runs
    num_cpus: float = 1.0
    num_gpus: float = 0.0  # per generator; with tensor_parallel_size > 1, per tensor-parallel worker
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources, e.g. {generator: 1}
    tensor_parallel_size: int = 1  # > 1: the engine's workers get a STRICT_PACK placement group
    games_per_wave: int = 256  # games played concurrently; every pending turn is one engine call
    # sampling temperature; the learner trains softmax(logits / T), the policy sampled
    temperature: float = 1.0
    max_response_tokens: int = 3
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE on CPU (whole GiB)
    cpu_bind: str = "auto"  # VLLM_CPU_OMP_THREADS_BIND
    gpu_memory_utilization: float = 0.5
    enforce_eager: bool = False
    skill_prompts: bool = False  # prefix <novice>/<intermediate>/<expert> by opponent strength
    # Legal-move masking (games): the engine draws each move only from the tokens of the
    # position's legal actions (vLLM's allowed_token_ids; greedy evaluations too) and the
    # learner's softmax is restricted the same way, as action masking in RLlib or OpenSpiel's
    # legal-action masks. Needs one-token moves (max_response_tokens 1); an illegal move
    # cannot then be played, so the illegal-move figures read 0 by construction.
    legal_moves_only: bool = False
    # Scripted training opponents: name -> share of each wave's games played against it (the
    # learner's seat at random), e.g. {heuristic: 0.25}; every game of the mix must have the
    # player (selfplay/games/*.SCRIPTED). An opponent left out stays a held-out evaluation.
    opponents: dict[str, float] = field(default_factory=dict)
    # Random openings (exploring starts): in a share of the training games the first
    # opening_moves moves are uniformly random legal moves, whoever is to move (the game's
    # `random` player; not trained, policy_id `opening`), so the policy plays on from
    # positions its own openings never reach. Evaluations start from the game's start.
    # opening_moves_min > 0: each opened game draws its number of random moves uniformly from
    # opening_moves_min..opening_moves (0: always opening_moves).
    opening_moves: int = 0
    opening_moves_min: int = 0
    opening_share: float = 1.0
    # Blunders (exploration past the opening): in a share of the training games against
    # itself or a scripted opponent, one move after the opening, drawn uniformly from the
    # next blunder_plies moves, is a uniformly random legal move (the game's `random`
    # player; policy_id `blunder`, not trained). Where the learner's seat made it, that
    # seat's other turns of the game are not trained either: the other side learns to punish
    # an open line (take the win it is left), which its own careful play seldom shows it.
    blunder_share: float = 0.0
    blunder_plies: int = 6
    # Board symmetries: every training turn of TicTacToe shows the board in one of its 8
    # symmetric orientations (rotated, reflected), drawn per turn from the game's seed; the
    # reply names a cell as shown. The policy meets each position in every orientation, as
    # minimax's lines in evaluation do. Evaluations show the board as it is.
    board_symmetries: bool = False
    # The pool heals: a generator whose wave loop ended, whose actor died, or whose loop made
    # no progress (health probe) for hang_timeout_s is replaced under its name; a name that
    # fails more than max_restarts times in a run ends it (a crash loop is a bug, not a fault).
    hang_timeout_s: float = 300.0
    max_restarts: int = 10


@dataclass
class VerifierConfig:
    num_cpus: float = 0.0  # light; a fraction of a CPU would not fit beside 1+1 on 2 cores
    resources: dict[str, float] = field(default_factory=dict)


@dataclass
class BufferConfig:
    capacity: int = 50_000  # turns
    max_staleness: int = 4  # drop turns generated more than this many versions ago
    samples_per_insert: float = 2.0
    spi_tolerance: int = 8192  # turns either side of the target rate before blocking
    min_size: int = 512
    sampling: BufferSampling = "least_sampled"  # least_sampled | uniform (actors/buffer.py)
    whole_games: bool = False  # a game's turns are sampled together (learner.advantage gae wants it)


@dataclass
class LearnerConfig:
    # ranks of a data-parallel learner group (learner/group.py): the model sharded over them
    # by FSDP2, each rank training its share of every batch; each rank gets num_cpus,
    # num_gpus and resources, in one placement group (STRICT_PACK with GPUs, else PACK)
    num_workers: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)  # pin to a node type, e.g. {learner: 1}
    threads: int = 1
    # on the CPU, a forward pass over a batch padded to at most this many tokens computes
    # attention with PyTorch's math kernel, not its flash kernel, whose backward is the
    # slower one at short lengths (the TicTacToe demo's 24-token turns: a learner step 0.40 s
    # against 0.56 s on AMX; `learner/learner.py:math_attention`); 0: the flash kernel always,
    # as under learner.gradient_checkpointing (its recompute in backward runs on the default)
    math_attention_max_len: int = 128
    device: str = "auto"  # auto (a GPU when torch sees one, else the CPU) | cpu | cuda | cuda:N
    lr: float = 3e-4
    # the learning rate over the run (learner/schedule.py): constant; linear or cosine from
    # `lr` down to lr * lr_final at the run's end, which is total_steps or time_limit_min,
    # whichever comes first (the driver sets it every log_every steps). A supervised stage
    # keeps its sft.lr; the schedule runs over the whole run, supervised stage included
    lr_schedule: LrSchedule = "constant"
    lr_final: float = 0.1
    # where in the run (a fraction of it, as above) a linear or cosine schedule starts to
    # decay: `lr` until then, `lr * lr_final` at the end. 0: decay from the start
    lr_decay_from: float = 0.0
    # a generator that has not acknowledged a weight load this long after it was sent is
    # dropped from the broadcast and told to stop (the pool replaces it): one hung engine
    # never stalls training
    ack_timeout_s: float = 120.0
    weight_decay: float = 0.0
    batch_size: int = 512  # turns per step
    # turns per forward/backward pass; their gradients accumulate to the batch's one update
    # (every loss term divides by the whole batch's count). 0: the whole batch in one pass
    micro_batch_size: int = 0
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~1/3 more compute
    # compile the policy's forward (torch.compile, inductor, dynamic shapes: one compile for
    # every batch size and length) on the first step, ~40-50 s on 2 cores with torch's
    # compile cache empty (~17 s once it holds the model). It fuses the small element-wise
    # ops that dominate a tiny model's step (the 1m preset's 512-turn step on AMX: 0.24 s
    # against 0.40-0.60 s eager). A single learner without LoRA or gradient checkpointing
    # (the combinations measured)
    compile: bool = False
    # optimiser state (AdamW's moments) and an fp32 copy of the trained weights in host
    # memory, the step taken there (ZeRO-Offload's optimiser half): frees 8 bytes per trained
    # parameter on a GPU learner; a sharded group uses FSDP2's CPUOffloadPolicy instead
    # (weights, gradients and optimiser shards on the host). On a CPU learner it saves nothing.
    optimizer_offload: bool = False
    # LoRA (Hu et al. 2021, through peft): 0 trains every weight; r > 0 freezes the model and
    # trains rank-r adapters on the linear layers named in lora_targets, scaled by
    # lora_alpha / r. Generators receive the merged weights by the usual broadcast (engines
    # need no LoRA support); checkpoints hold the merged model and the adapters.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    clip_eps: float = 0.2
    loss_aggregation: LossAggregation = "token_mean"  # policy loss over tokens: DAPO's, or GRPO's per reply
    # NLL of rows labelled sft over their tokens: token_mean (long targets weigh by their length,
    # as most SFT trainers), or sequence_mean (every target the same: a judge's 6-token verdict
    # as much as a 40-token reply, when the supervised stage teaches both)
    nll_aggregation: LossAggregation = "token_mean"
    # KL to the frozen initial policy (a task run's: the policy after its supervised stage); 0: none.
    # The reference is saved with every checkpoint (reference.safetensors) and restored on resume
    kl_coef: float = 0.0
    # Where the KL penalty goes and how it is estimated (learner/losses.py:kl_estimate):
    # reward: beta * (estimate summed over a turn's tokens) comes off that turn's advantage,
    #   no gradient through it (k1 unbiased; the turn's own tokens, not the role's later turns);
    # loss: beta * estimate, importance-weighted to the current policy, joins the loss (k2:
    #   the gradient of KL(pi || ref); k3: of the reverse KL(ref || pi); k1: none, refused).
    kl_placement: KlPlacement = "reward"
    kl_estimator: KlEstimator = "k1"
    # Rows labelled anchor (builder.anchored_roles) train this KL to the reference alone, on
    # their own tokens: anchor_coef x k2 in the loss (the gradient of KL(pi || ref)), importance-
    # weighted as kl_placement loss; no policy gradient. > 0 builds the reference (the policy
    # after the supervised stage); the other rows' KL stays kl_coef's
    anchor_coef: float = 0.0
    # rae: SPIRAL's EMA baseline per (game, role); gae: a value head on the policy's last
    # hidden state (shared trunk) and GAE over each player's turns (needs buffer.whole_games);
    # group: the buffer's builder's, over the k samples of a task prompt (task runs)
    advantage: Advantage = "rae"
    baseline_alpha: float = 0.9  # EMA factor of SPIRAL's per-(game, role) baseline
    gae_lambda: float = 0.95
    # gae: discount per own turn; < 1 values a win sooner (and a loss later) more, so a move
    # that wins now beats one that may win later. 1: no discount (the game's outcome alone)
    gamma: float = 1.0
    value_coef: float = 0.5  # weight of the value loss 0.5 * (V - G)^2 (gae)
    # gae: the value head also sees who the opponent is (a value per opponent kind: self,
    # a league member, each scripted player), as a centralised critic does; the policy
    # does not. The outcome from one board differs most by the opponent in a mixed league
    value_sees_opponent: bool = False
    normalize_advantages: bool = False  # per batch, to mean 0 and std 1 (as PPO implementations do)
    grad_clip: float = 1.0  # the gradient's global norm is clipped to this (0: no clipping)
    entropy_coef: float = 0.0
    broadcast_every: int = 1  # steps between weight broadcasts
    # How weights reach the generators: object_store, safetensors bytes through Ray's object
    # store (each generator's node fetches its copy); collective, one broadcast from the
    # learner to every generator at once in buckets of sync_bucket_mb (selfplay/collective.py;
    # a version whose broadcast fails within sync_timeout_s goes by the object store)
    weight_sync: WeightSync = "object_store"
    # the collective's backend: auto, NCCL when the learner trains on a GPU, else gloo. NCCL
    # wants every rank on a GPU of its own: a learner sharing its GPU with an engine, gloo
    sync_backend: SyncBackend = "auto"
    sync_bucket_mb: float = 64.0
    sync_timeout_s: float = 30.0
    # where the learner's process groups listen (the collective broadcast's, a learner
    # group's): 127.0.0.1 when all their ranks run on the learner's machine; node, the
    # learner node's address (a cluster)
    sync_host: str = "127.0.0.1"
    ref_refresh_every: int = 0  # steps between copying the policy into the KL reference; 0: never
    # An exponential moving average of the policy's weights (Polyak averaging), kept beside
    # the trained ones and evaluated as the run's policy: periodic evaluations, the best
    # checkpoint and the final figures measure it, and each checkpoint holds it as averaged/
    # (an HF model dir). Generators still play the trained weights. The decay per step,
    # warmed up as min(decay, (1 + step) / (10 + step)); 0: none (the last iterate is the policy)
    ema_decay: float = 0.0
    # A frozen reference model without a KL term (preference pairs train against one; kl_coef
    # > 0 keeps one anyway). Set for builder.rows spin
    reference: bool = False
    # Rows labelled dpo (preference pairs): learner/losses.py:preference_loss, its beta, and
    # an NLL term on the chosen reply with this weight (RPO, Pang et al. 2024; 0: none)
    preference_loss: PreferenceLoss = "sigmoid"
    beta: float = 0.1
    chosen_nll_coef: float = 0.0
    # bf16 autocast around fp32 weights; auto: on where the learner's device computes bf16
    # natively (selfplay/device.py:native_bf16), off where it would be emulated
    bf16: bool | Literal["auto"] = "auto"
    # what MFU is read against, TFLOP/s: auto measures the learner device's dense matmul rate
    # in its compute dtype on learner.threads once per machine (learner/peak.py; cached),
    # e.g. ~0.9 bf16 on a 2-core AMX CPU, ~0.15 fp32 on a 2-core AVX2 one, ~1,000 on a H200
    peak_tflops: float | Literal["auto"] = "auto"


@dataclass
class EvalConfig:
    every_steps: int = 25
    games: int = 200  # per game, opponent and seat
    # Scripted opponents; each game is evaluated against those it has (see games/*.SCRIPTED).
    opponents: list[str] = field(default_factory=lambda: ["random", "minimax", "nash", "greedy", "fair"])
    # Kuhn poker's average policy: the sequence-form average (games/kuhn.py:average_policy) of
    # the policies measured by this newest share of the run's evaluations, i.e. playing each
    # game with one of those evaluated weights drawn uniformly; as fictitious play, CFR and
    # NFSP report an average rather than the last iterate, which cycles. 0: none.
    kuhn_average_tail: float = 0.5


@dataclass
class TaskConfig:
    """A task with a checker (selfplay/tasks) in place of games: each wave draws
    prompts_per_wave train problems, samples each samples_per_prompt times (a group), and
    the verifier scores every reply."""

    name: str | None = (
        None  # arithmetic | codegen | describe | refine | solver_checker | words; None: the run plays `games`
    )
    params: dict[str, Any] = field(default_factory=dict)  # the task's own, e.g. {digits: 3, terms: 3}
    samples_per_prompt: int = 8  # k: a prompt's samples are each other's baseline
    prompts_per_wave: int = 32
    held_out: int = 400  # held-out problems per evaluation (greedy accuracy: pass@1)
    eval_samples: int = 8  # and that many samples each at the training temperature: pass@k
    # The hard-prompt pool (adversarial curriculum): train problems whose group was right
    # sometimes but at most hard_below of the time; that share of each wave's prompts is
    # drawn again from it (selfplay/builder.py:update_hard_pool). 0: every prompt is new.
    hard_fraction: float = 0.0
    hard_below: float = 0.5
    hard_pool: int = 1024
    # The learnability curriculum (the "frontier of learnability", Foster & Foerster 2025,
    # over the task's difficulty classes: arithmetic's digit counts and carries, codegen's
    # number of operations): each new train problem is the task's own draw, kept in
    # proportion to how often its class's groups have lately had rewards that differ (the
    # groups a group baseline learns from and the variance filter admits), at least
    # curriculum_floor, so that classes the policy always or never solves are drawn seldom
    # rather than generated and held back (selfplay/builder.py:update_learnability). none:
    # the task's own distribution.
    curriculum: TaskCurriculum = "none"
    curriculum_floor: float = 0.05
    # Selective prompting (SPEED, Zhang et al. 2025): sample each prompt screen_samples times
    # first, score them in the generator, and sample the rest of samples_per_prompt only where
    # the screen's scores differ; a uniform screen stays a small group, which the variance
    # filter holds back (actors/generator.py:_screened). 0: every prompt gets all k at once.
    screen_samples: int = 0
    # train: waves draw any train problem; sft: only the supervised stage's sft.examples
    # problems (SPIN's setting: the model plays against its own replies to the SFT data)
    prompts: TaskPrompts = "train"
    # self: the policy's samples only; snapshot: competitive self-play, the league's newest
    # snapshot answers every prompt as often, beside the policy (builder.rows compete)
    versus: TaskVersus = "self"
    # a judged task's constitution (selfplay/tasks/judges.py): [{name, weight, hard, params}, ...];
    # a reply that violates a hard principle scores hard_floor
    principles: list[dict[str, Any]] = field(default_factory=list)
    hard_floor: float = 0.0
    # The reward-hacking monitor: a held-out gold rule judge (principles, as above) that every
    # evaluation also scores the greedy replies by, never trained against. From the end of the
    # supervised stage on, an alarm is raised when, over the last alarm_window evaluations,
    # the training judge's score (the proxy) rose by more than alarm_margin while the gold
    # score fell by more than alarm_margin (100 held-out replies: evaluations differ by ~0.03).
    gold: list[dict[str, Any]] = field(default_factory=list)
    # Who judges a judged task's replies in training: rules, the constitution above; self, the
    # policy itself in a judge role (self-rewarding, selfplay/tasks/judges.py), marking each
    # reply by the constitution made an additive rubric, with the policy's weights of the
    # moment: greedily (judge_temperature 0, one verdict), or judge_samples verdicts sampled at
    # judge_temperature, their points averaged (Yuan et al.: 3). The constitution then teaches
    # the role (sft.judge_examples) and every evaluation measures the judge's agreement with it.
    judge: TaskJudge = "rules"
    judge_samples: int = 1
    judge_temperature: float = 0.0
    # Whose weights judge (task.judge self): current, the policy's as it trains; snapshot, the
    # newest league snapshot's (league.enabled): the supervised policy, then each promoted one,
    # frozen in between, as in Yuan et al.'s iterations (M_t judges the pairs that train M_t+1);
    # a promotion also makes it DPO's reference. A judge that moves with the policy it rewards
    # comes to rate its own replies highly whatever the constitution says (README).
    judge_weights: JudgeWeights = "current"
    alarm_window: int = 3
    alarm_margin: float = 0.05
    # Which replies the monitor and its gold_retained read: greedy, each held-out prompt's
    # greedy reply; sampled, the task.eval_samples samples each at the training temperature,
    # the policy the reward is paid on (Gao et al. score samples). A greedy reply can flip
    # between templates from one evaluation to the next while the distribution barely moves.
    monitor_replies: MonitorReplies = "greedy"
    # A length guard (DAPO's soft overlong punishment, selfplay/rewards.py): a reply's reward
    # loses overlong_coef * (0 .. 1) as its length goes from the reply's token limit
    # (tasks.reply_tokens) - overlong_buffer tokens to the limit (kept as the `overlong` score
    # column). 0: none.
    overlong_buffer: int = 0
    overlong_coef: float = 1.0
    # A reply the token limit cut off (no end of sequence): scored as written (score, as TRL's
    # and verl's defaults do: "117" and spaces to the limit reads 117), or scored 0 as
    # malformed (zero: reason `truncated`, counted), so that not ending is never paid
    truncated: Truncated = "score"


@dataclass
class BuilderConfig:
    """How the buffer turns scored groups into training rows (selfplay/builder.py)."""

    # rl: group-relative advantages; sft: verified samples (rejection sampling); spin: preference
    # pairs, the supervised target over each distinct sample that differs from it (SPIN);
    # compete: the judge's winner over its loser, the policy's i-th sample against the newest
    # snapshot's (competitive self-play -> DPO; ties and identical replies dropped); best_worst:
    # the best-rewarded sample of a group over its worst (self-rewarding; equal rewards dropped)
    rows: BuilderRows = "rl"
    group_advantage: GroupAdvantage = "grpo"
    pass_k: int = 4  # group_advantage passk: the k of the max@k (pass@k) each group is trained for
    # admit a group only if its rewards differ (std > min_reward_std): a group that agrees teaches
    # nothing. Held-back groups wait in a reserve; once fill_after rows were held back since the
    # last batch and the batch still cannot fill, the best of them fill it (counted, never a stall)
    variance_filter: bool = False
    min_reward_std: float = 0.0
    fill_after: int = 4096
    accept_reward: float = 1.0  # sft rows: a sample is kept when its reward reaches this
    dedupe: bool = True  # sft rows: one row per distinct reply of a group
    # refine (rl rows): each wrong refined answer also makes an sft row, its prompt with a right
    # answer its problem's chains found (STaR's rationalisation for the refiner)
    fix_targets: bool = False
    # ... only where the critique said "no": after "ok" the refiner learns from its reward
    # alone, so the targets are meant to teach it to answer again only when flagged
    fix_flagged_only: bool = False
    # roles (by name) whose groups build no rows: their samples are still scored and still judge
    # the other roles' (a group of each role is judged against the other's samples); e.g.
    # solver_checker's [solver]: the checker alone learns, against the supervised solver
    frozen_roles: list[str] = field(default_factory=list)
    # roles (by name) whose samples build rows labelled anchor: no policy gradient, only
    # learner.anchor_coef x the KL to the learner's reference (the supervised stage's policy)
    # on their tokens. SCoRe's first stage (Kumar et al. 2024) for refine's [answer]: the first
    # attempt held near where the supervised stage left it (frozen_roles leaves it to drift
    # with the weights the other roles train) while the critic and refiner learn to correct it
    anchored_roles: list[str] = field(default_factory=list)
    # ... each anchored group admits its first anchor_samples samples (its k are drawn alike, so
    # any n estimate the KL without bias, with more noise), leaving the batch to the trained
    # roles; 0: all of them
    anchor_samples: int = 0


@dataclass
class RewardModelConfig:
    """A Bradley-Terry reward model trained at the start of a task run (selfplay/reward_model.py):
    `pairs` pairs of the task's demonstrations labelled by the `labeler` constitution (rule
    principles, as task.principles), from the policy's initial weights with a scalar head,
    written to RUN_DIR/reward_model/. A task.principles entry {name: reward_model} without a
    path judges by it. 0 pairs: none is trained."""

    pairs: int = 0
    labeler: list[dict[str, Any]] = field(default_factory=list)
    held_out_pairs: int = 400  # from held-out problems: the figure of what it learned
    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 32  # pairs per step
    center_coef: float = 0.01  # coef * (r_w + r_l)^2 keeps rewards near 0 (the loss sees differences)


@dataclass
class SftConfig:
    """A supervised stage: the run's first `steps` learner steps train (NLL) on the task's
    labelled targets of `examples` fixed train problems, before any generation."""

    steps: int = 0
    examples: int = 500
    lr: float | None = None  # the stage's learning rate; None: learner.lr (the later stages' always)
    # task.judge self: as many rows teaching the judge role (self-rewarding's EFT data), each a
    # demonstration of a train problem and task.principles' marks of it
    judge_examples: int = 0
    # after the stage, this share of every batch is drawn from those judge rows (NLL): the role
    # keeps being taught while preference training moves the weights it shares with the policy
    judge_replay: float = 0.0


@dataclass
class LeagueConfig:
    enabled: bool = False
    mode: MatchmakingMode = "pfsp"  # how league opponents are drawn
    self_play_fraction: float = 0.5  # share of training games against the current policy itself
    max_live_opponents: int = 2  # opponent engines per generator; least recently used is swapped
    promote_every: int = 50  # steps between promotion matches against the newest snapshot
    promote_games: int = 64  # per game and seat
    promote_threshold: float = 0.6  # score (wins + draws/2) above which the policy is snapshotted
    # a task run (competitive self-play): promote_games is the held-out prompts of a promotion
    # match, and at the end the final policy meets the league's first member (the supervised
    # policy) on final_match held-out prompts (summary after TASK/vs_first); 0: no final match
    final_match: int = 0
    # DPO's reference in a task run that promotes (builder.rows compete, task.judge_weights
    # snapshot): every this many promotions it becomes the newest snapshot (1: each, the
    # previous snapshot as the reference); 0: never, the supervised policy stays the reference
    # (online DPO's fixed anchor, which keeps the policy near it however far the judge leads)
    reference_every: int = 1
    elo_k: float = 16.0
    pfsp_power: float = 2.0
    pfsp_window: int = 200  # PFSP weighs the learner's last N games per member and game; 0: all time
    near_scale: float = 200.0  # Elo width of "near" mode's Gaussian weighting


@dataclass
class AutoscaleConfig:
    """Grow the generator pool while the learner waits for data, shrink it while the
    buffer's rate limit holds generators back (see selfplay.scaling.autoscale_target)."""

    enabled: bool = False
    min_generators: int = 1
    max_generators: int = 4
    learner_idle_high: float = 0.2  # grow when the learner waited more than this share of the interval
    generator_idle_high: float = 0.5  # shrink when generators were rate-limited more than this share
    cooldown_s: float = 60.0  # at least this long between two changes


@dataclass
class RayConfig:
    address: str | None = None  # None starts a local Ray
    dashboard_host: str = "127.0.0.1"
    num_cpus: int | None = None


@dataclass
class RunConfig:
    name: str = "tictactoe"
    out_dir: str = "runs"
    seed: int = 0
    games: dict[str, float] = field(default_factory=lambda: {"tictactoe": 1.0})  # name -> mix weight
    total_steps: int = 300
    time_limit_min: float = 0.0  # the run's training minutes, every session's, each counted once its generators are up; 0: no limit
    log_every: int = 5
    checkpoint_every: int = 50
    # no learner step in this long: the run fails, saying what the buffer, verifier and
    # generators were doing, instead of hanging (a healing pool restarts engines in about a minute)
    watchdog_min: float = 10.0
    model: ModelConfig = field(default_factory=ModelConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    league: LeagueConfig = field(default_factory=LeagueConfig)
    autoscale: AutoscaleConfig = field(default_factory=AutoscaleConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    builder: BuilderConfig = field(default_factory=BuilderConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    # The demo's acceptance figures, read from the final evaluation into summary.json:
    # 'GAME/OPPONENT/FIELD' (or 'kuhn/exploitability/exploitability') -> '>= 0.9', '<= 0.05', ...
    acceptance: dict[str, str] = field(default_factory=dict)
    # Stop early, as Ray Tune's `stop` does: a metric's name (any in metrics.parquet, e.g.
    # batch_reward or eval/arithmetic/held_out/accuracy) -> a comparison such as '>= 0.55',
    # met by the mean of its last `stop_window` values logged after the supervised stage;
    # read after each `log_every` chunk. The final evaluation still runs.
    stop_when: dict[str, str] = field(default_factory=dict)
    stop_window: int = 1


COMPARISON = r"(>=|<=|>|<) -?\d+(\.\d+)?"  # acceptance and stop_when targets: '>= 0.9'

POSITIVE = {
    "total_steps",
    "generator.blunder_plies",
    "stop_window",
    "watchdog_min",
    "log_every",
    "checkpoint_every",
    "generator.num_generators",
    "generator.games_per_wave",
    "generator.temperature",  # training samples; evaluations play greedily on their own
    "generator.max_response_tokens",
    "generator.kv_cache_gib",
    "generator.hang_timeout_s",
    "buffer.capacity",
    "learner.beta",
    "buffer.samples_per_insert",
    "buffer.min_size",
    "learner.lr",
    "learner.batch_size",
    "builder.pass_k",
    "learner.broadcast_every",
    "learner.threads",
    "eval.every_steps",
    "eval.games",
    "league.max_live_opponents",
    "league.promote_every",
    "league.promote_games",
    "league.elo_k",
    "league.near_scale",
    "generator.tensor_parallel_size",
    "autoscale.min_generators",
    "autoscale.max_generators",
    "task.samples_per_prompt",
    "task.prompts_per_wave",
    "task.held_out",
    "task.eval_samples",
    "task.hard_pool",
    "task.judge_samples",
    "sft.examples",
    "reward_model.held_out_pairs",
    "reward_model.epochs",
    "reward_model.lr",
    "reward_model.batch_size",
    "learner.sync_bucket_mb",
    "learner.sync_timeout_s",
    "learner.lora_alpha",
    "learner.num_workers",
}
# a run's name: its directory under out_dir, its Ray namespace and job id (selfplay/jobs.py)
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
NON_NEGATIVE = {
    "seed",
    "league.final_match",
    "generator.opening_moves",
    "generator.opening_moves_min",
    "learner.lora_rank",
    "task.overlong_buffer",
    "task.overlong_coef",
    "reward_model.pairs",
    "reward_model.center_coef",
    "sft.judge_examples",
    "task.judge_temperature",
    "time_limit_min",
    "generator.num_cpus",
    "generator.num_gpus",
    "buffer.max_staleness",
    "buffer.spi_tolerance",
    "generator.max_restarts",
    "learner.ack_timeout_s",
    "learner.micro_batch_size",
    "learner.math_attention_max_len",
    "learner.clip_eps",
    "learner.kl_coef",
    "learner.anchor_coef",
    "builder.anchor_samples",
    "learner.chosen_nll_coef",
    "learner.grad_clip",
    "learner.weight_decay",
    "learner.entropy_coef",
    "learner.value_coef",
    "learner.num_cpus",
    "learner.num_gpus",
    "verifier.num_cpus",
    "learner.ref_refresh_every",
    "league.reference_every",
    "league.pfsp_power",
    "league.pfsp_window",
    "autoscale.learner_idle_high",
    "autoscale.generator_idle_high",
    "autoscale.cooldown_s",
    "builder.min_reward_std",
    "task.hard_fraction",
    "task.hard_below",
    "builder.fill_after",
    "sft.steps",
}


def _coerce(value, typ, name: str):
    origin = typing.get_origin(typ)
    if origin is typing.Literal:
        choices = typing.get_args(typ)
        if value not in choices:
            raise ConfigError(f"{name}: must be one of {choices}, got {value!r}")
        return value
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(typ)
        if value is None and type(None) in options:
            return None
        inner = [t for t in options if t is not type(None)]
        for option in inner[:-1]:  # the first that takes the value; the last one's error
            try:
                return _coerce(value, option, name)
            except ConfigError:
                pass
        return _coerce(value, inner[-1], name)
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {type(value).__name__}")
        return build(typ, value, name + ".")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(typ)
        return {
            _coerce(k, key_type, f"{name}.{k}"): _coerce(v, value_type, f"{name}.{k}")
            for k, v in value.items()
        }
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        (item,) = typing.get_args(typ)
        return [_coerce(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
    if typ is float and not isinstance(value, bool) and isinstance(value, (int, str)):
        try:  # YAML 1.1 reads 1e-4 as a string
            value = float(value)
        except (ValueError, OverflowError):
            raise ConfigError(f"{name}: expected float, got {value!r}") from None
    if typ in (int, float, str, bool) and (type(value) is not typ):
        raise ConfigError(f"{name}: expected {typ.__name__}, got {value!r}")
    if typ is float and not math.isfinite(value):  # no field means anything by nan or inf
        raise ConfigError(f"{name}: must be finite, got {value!r}")
    return value


def build(cls, data: dict, prefix: str = ""):
    """A dataclass from a mapping; unknown or ill-typed fields raise ConfigError naming them."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown field (known: {', '.join(sorted(known))})")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def validate(cfg: RunConfig, resolve: bool = True) -> RunConfig:
    """Checks every field (ConfigError naming it); with `resolve`, model.dtype auto becomes
    this machine's choice (selfplay/device.py:pick_dtype)."""
    if not RUN_NAME.fullmatch(cfg.name):  # a directory under out_dir, a Ray namespace, a job id
        raise ConfigError(
            f"name: {cfg.name!r} must be letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    for name in POSITIVE | NON_NEGATIVE:
        try:
            finite = math.isfinite(_get(cfg, name))
        except OverflowError:  # an int too large for a float
            finite = False
        if not finite:
            raise ConfigError(f"{name}: must be finite, got {_get(cfg, name)!r}")
    if cfg.ray.num_cpus is not None and cfg.ray.num_cpus <= 0:
        raise ConfigError(
            f"ray.num_cpus: must be > 0 (or unset: all of this machine's), got {cfg.ray.num_cpus}"
        )
    for name in POSITIVE:
        if not _get(cfg, name) > 0:
            raise ConfigError(f"{name}: must be > 0, got {_get(cfg, name)!r}")
    for name in NON_NEGATIVE:
        if not _get(cfg, name) >= 0:
            raise ConfigError(f"{name}: must be >= 0, got {_get(cfg, name)!r}")
    peak = cfg.learner.peak_tflops
    if peak != "auto" and not (math.isfinite(peak) and peak > 0):
        raise ConfigError(f"learner.peak_tflops: must be > 0 or auto, got {peak!r}")
    if cfg.model.max_model_len is not None and cfg.model.max_model_len <= 0:
        raise ConfigError(f"model.max_model_len: must be > 0, got {cfg.model.max_model_len}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.learner.device):
        raise ConfigError(f"learner.device: must be auto, cpu, cuda or cuda:N, got {cfg.learner.device!r}")
    if cfg.learner.sync_backend == "nccl" and cfg.learner.device == "cpu":
        raise ConfigError(
            "learner.sync_backend: nccl sends from a GPU, but learner.device is cpu; set gloo or auto"
        )
    if cfg.learner.kl_placement == "loss" and cfg.learner.kl_estimator == "k1":
        raise ConfigError(
            "learner.kl_estimator: k1 as a loss has no KL gradient (its expectation's gradient is 0); "
            "use k2 with kl_placement loss, or kl_placement reward"
        )
    if not 0 <= cfg.learner.baseline_alpha < 1:
        raise ConfigError(f"learner.baseline_alpha: must be in [0, 1), got {cfg.learner.baseline_alpha}")
    if cfg.learner.compile and (
        cfg.learner.num_workers > 1 or cfg.learner.lora_rank or cfg.learner.gradient_checkpointing
    ):
        raise ConfigError(
            "learner.compile: only for a single learner without LoRA or gradient checkpointing "
            "(learner.num_workers 1, lora_rank 0, gradient_checkpointing false)"
        )
    if cfg.learner.value_sees_opponent and cfg.learner.advantage != "gae":
        raise ConfigError("learner.value_sees_opponent: a value head needs learner.advantage gae")
    if not 0 <= cfg.learner.gae_lambda <= 1:
        raise ConfigError(f"learner.gae_lambda: must be in [0, 1], got {cfg.learner.gae_lambda}")
    if not 0 <= cfg.learner.ema_decay < 1:
        raise ConfigError(
            f"learner.ema_decay: must be in [0, 1) (0: no average), got {cfg.learner.ema_decay}"
        )
    if not 0 < cfg.learner.gamma <= 1:
        raise ConfigError(f"learner.gamma: must be in (0, 1], got {cfg.learner.gamma}")
    if not 0 <= cfg.learner.lr_decay_from < 1:
        raise ConfigError(f"learner.lr_decay_from: must be in [0, 1), got {cfg.learner.lr_decay_from!r}")
    if cfg.learner.gamma != 1 and cfg.learner.advantage != "gae":
        raise ConfigError("learner.gamma: discounts the gae advantage; set learner.advantage gae with it")
    if cfg.learner.advantage == "gae" and not cfg.buffer.whole_games:
        raise ConfigError(
            "learner.advantage: gae runs over each game's turns; set buffer.whole_games true with it"
        )
    if not 0 < cfg.generator.gpu_memory_utilization <= 1:
        raise ConfigError(
            f"generator.gpu_memory_utilization: must be in (0, 1], got {cfg.generator.gpu_memory_utilization}"
        )
    if 2 * cfg.buffer.spi_tolerance < cfg.learner.batch_size:
        raise ConfigError(
            f"buffer.spi_tolerance: must be >= learner.batch_size / 2 ({cfg.learner.batch_size / 2:g}), "
            f"got {cfg.buffer.spi_tolerance}: below it the rate limiter can hold back generators "
            "and learner at once (a deadlock)"
        )
    if cfg.buffer.min_size > cfg.buffer.capacity:
        raise ConfigError("buffer.min_size: must not exceed buffer.capacity")
    if cfg.buffer.min_size < cfg.learner.batch_size:
        raise ConfigError(
            f"buffer.min_size: must be >= learner.batch_size ({cfg.learner.batch_size}), "
            f"got {cfg.buffer.min_size}"
        )
    if cfg.task.name is None:
        if cfg.learner.advantage == "group":
            raise ConfigError(
                "learner.advantage: group needs a task (task.name), whose samples form the groups"
            )
        if cfg.learner.anchor_coef > 0:
            raise ConfigError("learner.anchor_coef: the KL on a task's builder.anchored_roles; set task.name")
        validate_games(cfg)
        validate_opponents(cfg)
        if cfg.generator.legal_moves_only and cfg.generator.max_response_tokens != 1:
            raise ConfigError(
                "generator.legal_moves_only: masks one-token moves; set generator.max_response_tokens 1 "
                f"(got {cfg.generator.max_response_tokens})"
            )
    else:
        validate_task(cfg)
        if cfg.generator.legal_moves_only:
            raise ConfigError(
                f"generator.legal_moves_only: masks a game's moves; task {cfg.task.name} has none"
            )
    for name, target in cfg.stop_when.items():
        if not re.fullmatch(COMPARISON, str(target)):
            raise ConfigError(f"stop_when.{name}: expected a comparison such as '>= 0.55', got {target!r}")
    for name, target in cfg.acceptance.items():
        if name.count("/") < 2:
            raise ConfigError(f"acceptance.{name}: name an evaluation field, e.g. tictactoe/minimax/non_loss")
        if not re.fullmatch(COMPARISON, target):
            raise ConfigError(f"acceptance.{name}: expected a comparison such as '>= 0.9', got {target!r}")
    for section in ("generator", "learner", "verifier"):
        for name, amount in _get(cfg, f"{section}.resources").items():
            if not (math.isfinite(amount) and amount > 0):
                raise ConfigError(f"{section}.resources.{name}: must be > 0, got {amount!r}")
            if name in ("CPU", "GPU", "memory"):
                raise ConfigError(f"{section}.resources.{name}: use {section}.num_cpus / num_gpus instead")
    if cfg.generator.tensor_parallel_size > 1 and cfg.generator.num_gpus <= 0:
        raise ConfigError(
            "generator.tensor_parallel_size: > 1 needs generator.num_gpus > 0 (one GPU per worker)"
        )
    a = cfg.autoscale
    if a.min_generators > a.max_generators:
        raise ConfigError(
            f"autoscale.min_generators: must not exceed autoscale.max_generators ({a.max_generators})"
        )
    if a.enabled and not a.min_generators <= cfg.generator.num_generators <= a.max_generators:
        raise ConfigError(
            f"generator.num_generators: must be within autoscale bounds "
            f"[{a.min_generators}, {a.max_generators}], got {cfg.generator.num_generators}"
        )
    unit = (
        "league.self_play_fraction",
        "league.promote_threshold",
        "eval.kuhn_average_tail",
        "learner.lr_final",
        "generator.opening_share",
        "generator.blunder_share",
    )
    for name in unit:
        if not 0 <= _get(cfg, name) <= 1:
            raise ConfigError(f"{name}: must be in [0, 1], got {_get(cfg, name)!r}")
    if resolve and cfg.model.dtype == "auto":  # one dtype for the learner's exports and every engine
        from selfplay.device import resolve_dtype

        cfg.model.dtype = resolve_dtype("auto")
    return cfg


def validate_task(cfg: RunConfig) -> None:
    """A task run: the task and its parameters exist, and nothing of the game path is asked for."""
    from selfplay.tasks import gold_judge, reply_tokens, task_of
    from selfplay.tasks.base import role_names

    try:
        task = task_of(cfg.task)
        task.held_out(cfg.task.held_out)
        gold_judge(cfg.task)
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err) if str(err).startswith("task") else f"task: {err}") from None
    validate_reward_model(cfg, task)
    limit = reply_tokens(task, cfg.generator.max_response_tokens)
    if cfg.task.name == "refine" and limit < task.max_reply_chars - 1:  # its longest reply, and an end
        raise ConfigError(
            f"generator.max_response_tokens: the refine task's longest reply needs {task.max_reply_chars - 1} "
            f"tokens with its end (a critique with working included), got {cfg.generator.max_response_tokens}"
        )
    if cfg.task.overlong_buffer > limit:
        raise ConfigError(
            f"task.overlong_buffer: must be <= the reply's token limit ({limit}: generator.max_response_tokens "
            f"{cfg.generator.max_response_tokens}, the task's longest reply {task.max_reply_chars} + 1), "
            f"got {cfg.task.overlong_buffer}"
        )
    validate_self_judge(cfg, task)
    if cfg.task.alarm_window < 2:
        raise ConfigError(f"task.alarm_window: must be >= 2 evaluations, got {cfg.task.alarm_window}")
    # the self-judge marks greedy replies only (judge_score)
    if cfg.task.gold and cfg.task.monitor_replies == "sampled" and cfg.task.judge != "rules":
        raise ConfigError(
            "task.monitor_replies: sampled reads the samples' scores by the judge trained against, "
            f"which needs task.judge rules; got {cfg.task.judge}"
        )
    if cfg.builder.rows == "rl" and cfg.task.samples_per_prompt < 2:
        raise ConfigError(
            "task.samples_per_prompt: group advantages need at least 2 samples per prompt "
            f"(builder.rows rl), got {cfg.task.samples_per_prompt}"
        )
    if cfg.builder.rows == "rl" and cfg.builder.group_advantage == "passk":
        if cfg.builder.pass_k >= cfg.task.samples_per_prompt:
            raise ConfigError(
                f"builder.pass_k: must be < task.samples_per_prompt ({cfg.task.samples_per_prompt}): "
                f"each sample's baseline is max@k of the others; got {cfg.builder.pass_k}"
            )
    if cfg.generator.opponents:
        raise ConfigError("generator.opponents: a task run has no scripted opponents")
    if cfg.generator.opening_moves:
        raise ConfigError("generator.opening_moves: a task run has no game to open")
    if cfg.generator.blunder_share:
        raise ConfigError("generator.blunder_share: a task run has no game to blunder in")
    if cfg.generator.board_symmetries:
        raise ConfigError("generator.board_symmetries: a task run has no board")
    if getattr(task, "chain", False) and cfg.builder.rows not in ("rl", "sft"):
        raise ConfigError(
            f"builder.rows: {cfg.task.name} trains each role of its chains on its own reward; "
            f"set rl or sft, got {cfg.builder.rows}"
        )
    if cfg.builder.fix_targets and not (cfg.task.name == "refine" and cfg.builder.rows == "rl"):
        raise ConfigError(
            "builder.fix_targets: gives the refine task's refiner the right answers its chains found; "
            f"set task.name refine and builder.rows rl (got {cfg.task.name}, {cfg.builder.rows})"
        )
    if cfg.builder.fix_flagged_only and not cfg.builder.fix_targets:
        raise ConfigError("builder.fix_flagged_only: narrows builder.fix_targets, which is off; set it true")
    roles = role_names(task, cfg.task.name)
    frozen = cfg.builder.frozen_roles
    if frozen and (cfg.builder.rows != "rl" or not set(frozen) < set(roles)):
        raise ConfigError(
            f"builder.frozen_roles: some but not all of {cfg.task.name}'s roles {list(roles)}, "
            f"with builder.rows rl (got {frozen}, {cfg.builder.rows})"
        )
    anchored = cfg.builder.anchored_roles
    if anchored and (
        cfg.builder.rows != "rl" or not set(anchored) < set(roles) or set(anchored) & set(frozen)
    ):
        raise ConfigError(
            f"builder.anchored_roles: some but not all of {cfg.task.name}'s roles {list(roles)}, none of "
            f"them frozen, with builder.rows rl (got {anchored}, frozen {frozen}, {cfg.builder.rows})"
        )
    if cfg.builder.anchor_samples and not anchored:
        raise ConfigError("builder.anchor_samples: narrows builder.anchored_roles, which is empty; set it")
    if anchored and set(roles) <= set(anchored) | set(frozen):
        raise ConfigError(
            f"builder.anchored_roles: with builder.frozen_roles {frozen}, every role of {cfg.task.name} "
            f"({list(roles)}) is anchored or frozen, and nothing trains; leave one out"
        )
    if anchored and cfg.learner.ref_refresh_every:
        raise ConfigError(
            "learner.ref_refresh_every: would move the reference builder.anchored_roles are held to "
            f"(the policy after the supervised stage); set it 0 (got {cfg.learner.ref_refresh_every})"
        )
    if bool(anchored) != (cfg.learner.anchor_coef > 0):
        raise ConfigError(
            "learner.anchor_coef: the KL on builder.anchored_roles' rows; set both or neither "
            f"(got {cfg.learner.anchor_coef}, {anchored})"
        )
    compete = (cfg.builder.rows == "compete", cfg.task.versus == "snapshot")
    if (any(compete) and not all(compete)) or (all(compete) and not cfg.league.enabled):
        raise ConfigError(
            "builder.rows: competitive self-play is builder.rows compete with task.versus snapshot "
            f"and league.enabled true together (got {cfg.builder.rows}, {cfg.task.versus}, {cfg.league.enabled})"
        )
    snapshot_judge = cfg.task.judge_weights == "snapshot"
    if snapshot_judge and (cfg.task.judge != "self" or not cfg.league.enabled):
        raise ConfigError(
            "task.judge_weights: snapshot judges with the newest league snapshot's weights; it needs "
            f"task.judge self and league.enabled true (got {cfg.task.judge}, {cfg.league.enabled})"
        )
    if cfg.league.enabled:
        if not (all(compete) or snapshot_judge):
            raise ConfigError(
                "league.enabled: a task run's league holds the snapshots that compete (builder.rows "
                "compete) or judge (task.judge_weights snapshot); set one, or league.enabled false"
            )
        if not cfg.learner.reference:
            raise ConfigError(
                f"learner.reference: builder.rows {cfg.builder.rows} trains pairs against a reference; set it true"
            )
        if not cfg.sft.steps:
            raise ConfigError(
                "sft.steps: a task run's league starts from the supervised policy (the first snapshot)"
            )
        for field in ("promote_games", "final_match"):
            try:
                task.held_out(getattr(cfg.league, field))
            except ValueError as err:
                raise ConfigError(f"league.{field}: {err}") from None
    if cfg.builder.rows == "best_worst":
        if not cfg.learner.reference:
            raise ConfigError(
                "learner.reference: builder.rows best_worst trains pairs against a reference; set it true"
            )
        if cfg.task.samples_per_prompt < 2:
            raise ConfigError(
                "task.samples_per_prompt: builder.rows best_worst pairs a prompt's best sample with "
                f"its worst; give at least 2, got {cfg.task.samples_per_prompt}"
            )
    if cfg.builder.rows == "spin":
        if not cfg.learner.reference:
            raise ConfigError(
                "learner.reference: builder.rows spin trains pairs against a reference; set it true"
            )
        if cfg.task.prompts != "sft" or not cfg.sft.steps:
            raise ConfigError(
                "task.prompts: builder.rows spin pairs samples with the supervised targets; "
                "set task.prompts sft and sft.steps > 0"
            )
        if len(roles) > 1:  # the supervised targets are kept per problem, one role's
            raise ConfigError(
                f"builder.rows: spin pairs a problem's samples with its one supervised target; "
                f"{cfg.task.name} has roles {list(roles)}: set rl or sft"
            )
        # SPIN's opponent is the reference: the generators sample the iterate the learner's
        # reference holds, so both move together, once an iteration, from the stage's end
        every = cfg.learner.ref_refresh_every
        if not every or cfg.learner.broadcast_every != every or cfg.sft.steps % every:
            raise ConfigError(
                "learner.ref_refresh_every: builder.rows spin samples the reference iterate; set it > 0, "
                f"learner.broadcast_every equal to it and sft.steps a multiple of it (got {every}, "
                f"{cfg.learner.broadcast_every}, {cfg.sft.steps})"
            )
    if cfg.learner.advantage != "group":
        raise ConfigError(
            f"learner.advantage: a task run trains on the builder's group advantages; set group, "
            f"got {cfg.learner.advantage}"
        )
    screen = cfg.task.screen_samples
    if screen:
        if not 2 <= screen < cfg.task.samples_per_prompt:
            raise ConfigError(
                f"task.screen_samples: must be 0 or in [2, task.samples_per_prompt) "
                f"(= {cfg.task.samples_per_prompt}), got {screen!r}"
            )
        from selfplay.tasks import task_of

        task = task_of(cfg.task)
        if getattr(task, "chain", False) or getattr(task, "roles", None) or cfg.task.versus != "self":
            raise ConfigError(
                f"task.screen_samples: screens a one-role task's own samples; {cfg.task.name} "
                f"(versus {cfg.task.versus}) cannot be screened, set 0"
            )
        if cfg.task.judge == "self" or cfg.builder.rows != "rl":
            raise ConfigError(
                "task.screen_samples: screens by the task's scorer for group-relative RL; needs "
                f"task.judge rules and builder.rows rl (got {cfg.task.judge}, {cfg.builder.rows})"
            )
    if cfg.task.curriculum != "none":
        if not hasattr(task, "difficulty"):
            raise ConfigError(
                f"task.curriculum: draws by a task's difficulty classes; {cfg.task.name} has none "
                "(arithmetic and codegen do), set none"
            )
        if cfg.task.prompts != "train":
            raise ConfigError(
                "task.curriculum: draws new train problems; task.prompts sft has none, set none"
            )
    if not 0 < cfg.task.curriculum_floor <= 1:  # 0 would never draw a class again
        raise ConfigError(f"task.curriculum_floor: must be in (0, 1], got {cfg.task.curriculum_floor!r}")
    for name in ("task.hard_fraction", "task.hard_below"):
        if not _get(cfg, name) <= 1:
            raise ConfigError(f"{name}: must be in [0, 1], got {_get(cfg, name)!r}")
    if cfg.sft.lr is not None and not (math.isfinite(cfg.sft.lr) and cfg.sft.lr > 0):
        raise ConfigError(f"sft.lr: must be > 0, got {cfg.sft.lr!r}")
    if cfg.sft.steps and cfg.sft.examples < cfg.learner.batch_size:
        raise ConfigError(
            f"sft.examples: must be >= learner.batch_size ({cfg.learner.batch_size}), got {cfg.sft.examples}"
        )
    from selfplay.evals import (
        CHAIN_FIELDS,
        JUDGE_FIELDS,
        MATCH_FIELDS,
        MONITOR_FIELDS,
        SELECTION_FIELDS,
        TASK_FIELDS,
    )

    fields = [*TASK_FIELDS, "accuracy_gain_over_sft"]
    fields += ["score", "sample_score"] if cfg.task.principles else []
    fields += ["gold_score", "sample_gold_score"] if cfg.task.gold else []
    fields += ["score_gain_over_sft"] if cfg.task.principles and cfg.sft.steps else []
    fields += [*JUDGE_FIELDS, "judge_agreement_gain_over_sft"] if cfg.task.judge == "self" else []
    if cfg.task.name == "solver_checker":
        fields += SELECTION_FIELDS
    if cfg.task.name == "refine":  # critic_working: the critic's sums, only where it writes them
        fields += [f for f in CHAIN_FIELDS if f != "critic_working" or task.critic_working]
    task = cfg.task.name
    reported = {f"{task}/held_out/{f}" for f in fields}
    message = f"a task run reports {task}/held_out/FIELD, FIELD one of {', '.join(fields)}"
    if cfg.task.gold:  # the reward-hacking monitor's figures
        reported |= {f"{task}/monitor/{f}" for f in MONITOR_FIELDS}
        message += f"; and {task}/monitor/FIELD, FIELD one of {', '.join(MONITOR_FIELDS)}"
    if cfg.league.enabled:  # competitive self-play
        reported.add("league/snapshots/promotions")
        message += "; and league/snapshots/promotions"
        if cfg.league.final_match:
            reported |= {f"{task}/vs_first/{f}" for f in MATCH_FIELDS}
            message += f"; and {task}/vs_first/FIELD, FIELD one of {', '.join(MATCH_FIELDS)}"
        else:
            message += f" ({task}/vs_first/FIELD needs league.final_match > 0)"
    if cfg.reward_model.pairs:
        reported.add("reward_model/held_out/accuracy")
        message += "; and reward_model/held_out/accuracy"
    for name in cfg.acceptance:
        if name not in reported:
            raise ConfigError(f"acceptance.{name}: {message}")


def validate_self_judge(cfg: RunConfig, task) -> None:
    """task.judge self: a judged task whose judge prompts fit the context and whose judge role
    is taught first; sft.judge_examples only with it."""
    from selfplay.tasks.judges import rating_prompt

    t = cfg.task
    if t.judge != "self":
        for name in ("sft.judge_examples", "sft.judge_replay"):
            if _get(cfg, name):
                raise ConfigError(f"{name}: teaches the judge role of task.judge self; set it, or 0")
        return
    if not 0 <= cfg.sft.judge_replay < 1:
        raise ConfigError(f"sft.judge_replay: must be in [0, 1), got {cfg.sft.judge_replay}")
    if getattr(task, "principles", None) is None:
        raise ConfigError(
            f"task.judge: self rates on a constitution's scale; task {t.name} has no principles"
        )
    if t.judge_temperature == 0 and t.judge_samples > 1:
        raise ConfigError(
            f"task.judge_samples: greedy verdicts (task.judge_temperature 0) repeat; set 1, got {t.judge_samples}"
        )
    if not (cfg.sft.steps and cfg.sft.judge_examples):
        raise ConfigError(
            "sft.judge_examples: task.judge self needs the judge role taught first; "
            "set sft.steps > 0 and sft.judge_examples > 0"
        )
    context = cfg.model.max_model_len
    longest = max(len(p.prompt) for p in task.held_out(t.held_out))  # a character is at least a token
    marks = len(task.principles.principles) + 1  # a mark per principle, then the end of sequence
    needed = 1 + len(rating_prompt("x" * longest, "x" * task.max_reply_chars)) + marks  # after a bos
    if context is not None and needed > context:
        raise ConfigError(
            f"model.max_model_len: a judge prompt with the longest reply takes up to {needed} tokens, "
            f"more than {context}"
        )


def validate_reward_model(cfg: RunConfig, task) -> None:
    """A reward model trained in the run (reward_model.pairs > 0) is labelled, drawable from
    the task and judged by; a reward_model principle without a path has one to judge by."""
    from selfplay.tasks.judges import NO_REWARD_MODEL, Constitution, awaits_reward_model

    rm = cfg.reward_model
    unpathed = any(map(awaits_reward_model, cfg.task.principles))
    if not rm.pairs:
        if unpathed:
            raise ConfigError(NO_REWARD_MODEL)
        return
    if not unpathed:
        raise ConfigError(
            "reward_model.pairs: the run would train a reward model that nothing judges by; "
            "list {name: reward_model} (without a path) in task.principles"
        )
    if not rm.labeler:
        raise ConfigError("reward_model.labeler: list the principles that label the pairs")
    try:
        Constitution.from_config(rm.labeler, where="reward_model.labeler")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if not hasattr(task, "demonstration"):
        raise ConfigError(f"reward_model.pairs: task {cfg.task.name} draws no demonstrations to pair")
    try:
        task.held_out(rm.held_out_pairs)
    except ValueError as err:
        raise ConfigError(f"reward_model.held_out_pairs: {err}") from None
    if rm.pairs < rm.batch_size:
        raise ConfigError(
            f"reward_model.pairs: must be >= reward_model.batch_size ({rm.batch_size}), got {rm.pairs}"
        )


def validate_opponents(cfg: RunConfig) -> None:
    from selfplay.games import scripted_players

    shares = cfg.generator.opponents
    for name, share in shares.items():
        if not (math.isfinite(share) and share > 0):
            raise ConfigError(f"generator.opponents.{name}: share must be > 0, got {share!r}")
        lacking = [g for g in cfg.games if name not in scripted_players(g)]
        if lacking:
            raise ConfigError(f"generator.opponents.{name}: no scripted player {name!r} in game {lacking[0]}")
    if sum(shares.values()) > 1:
        raise ConfigError(f"generator.opponents: shares add up to {sum(shares.values()):g}, more than 1")
    if cfg.generator.opening_moves_min > cfg.generator.opening_moves:
        raise ConfigError(
            f"generator.opening_moves_min: {cfg.generator.opening_moves_min} is more than "
            f"generator.opening_moves ({cfg.generator.opening_moves})"
        )
    lacking = [g for g in cfg.games if "random" not in scripted_players(g)]
    for name in ("opening_moves", "blunder_share"):  # both move with the game's random player
        if getattr(cfg.generator, name) and lacking:
            raise ConfigError(f"generator.{name}: game {lacking[0]} has no `random` player to move with")
    if cfg.generator.board_symmetries and "tictactoe" not in cfg.games:
        raise ConfigError("generator.board_symmetries: only TicTacToe has them, and games has no tictactoe")


def validate_games(cfg: RunConfig) -> None:
    from selfplay.games import GAMES, TEXTARENA, make_game, scripted_players

    if not cfg.games:
        raise ConfigError("games: give at least one game, e.g. {tictactoe: 1.0}")
    for name, weight in cfg.games.items():
        if not name.startswith(TEXTARENA):
            try:
                make_game(name)
            except ValueError as err:
                raise ConfigError(f"games.{name}: {err}") from None
        if not (math.isfinite(weight) and weight > 0):
            raise ConfigError(f"games.{name}: mix weight must be > 0, got {weight!r}")
    known = {p for g in GAMES for p in scripted_players(g)}
    for i, opp in enumerate(cfg.eval.opponents):
        if opp not in known:
            raise ConfigError(
                f"eval.opponents[{i}]: unknown scripted player {opp!r} (known: {sorted(known)})"
            )


def string_override(key: str, value: str) -> str:
    """An override `key=value` that sets `value` as the string it is (a path or address a
    person typed: YAML would read '#' as a comment, ': ' as a mapping)."""
    return f"{key}={json.dumps(value)}"  # a JSON string is a YAML double-quoted scalar


def parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. learner.lr=1e-4")
    key, raw = text.split("=", 1)
    try:
        return key.strip().split("."), yaml.safe_load(raw)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(f"{key.strip()}: cannot read {raw!r} as a YAML value ({problem})") from None


def load_config(path: str | Path | None = None, overrides: list[str] = (), resolve: bool = True) -> RunConfig:
    """The run config at `path` (YAML; None: the defaults) with `overrides` (a.b=c), validated;
    `resolve` as validate's (a config submitted to a cluster resolves there, not here)."""
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{'.'.join(keys)}: {k} is not a section")
        node[keys[-1]] = value
    if "game" in data:  # configs written before multi-game training
        raise ConfigError(
            f"game: replaced by games, a mix of name -> weight; write games: {{{data['game']}: 1.0}}"
        )
    return validate(build(RunConfig, data), resolve)


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    write_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
