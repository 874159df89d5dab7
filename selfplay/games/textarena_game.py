"""Any two-player TextArena env (textarena==0.7.4) behind the game surface of
`selfplay.games`: `make_game("textarena:TicTacToe-v0", seed)`.

- Moves are free text. The env parses them itself when they are played (TicTacToe wants
  '[4]', KuhnPoker '[bet]'), through the action wrappers its id registers
  (ActionFormattingWrapper puts a bare reply in brackets: '4' -> '[4]'). So there is no
  list of legal actions: `legal_actions` raises, `parse_action` only strips whitespace,
  and `apply`/`apply_text` take the text.
- An invalid move loses at once: the error allowance is set to 0 after reset, as SPIRAL
  does (train_spiral.py), instead of TextArena's default of one (or more) retries. The
  mover is read from `game_info[mover]["invalid_move"]`, which every TextArena state sets
  when the allowance is spent, so this holds for envs whose state lets the game go on
  (the FFA state eliminates the player) too.
- `observation(player)` is the text the env id's registered observation wrapper renders
  for that player: LLMObservationWrapper for plain ids ('TicTacToe-v0': the whole message
  history as '[GAME] ...' / '[Player 1] ...' lines, what SPIRAL feeds its model),
  prompt + game messages + latest board for '-train' ids; ids with none ('-raw') get
  LLMObservationWrapper.
- Returns map TextArena's rewards to +1/-1/0 by comparing the two players' rewards.
- Replayable from (name, seed) plus the reply texts: TextArena's State seeds the global
  `random` at reset and envs draw from it at reset and while stepping (KuhnPoker deals
  every round inside `step`); a few draw from numpy's global RNG. Each game keeps its own
  copy of both global states and swaps it in around every call into TextArena, so games
  interleaved in one process do not disturb each other and the caller's RNG state is
  left as it was. (Not thread-safe: another thread drawing from `random` while a game
  steps would share the swapped-in state.)
Two-player envs that cannot run offline: DontSayIt, LetterAuction, WordChains and
SpellingBee fetch nltk corpora; Debate and ScenarioPlanning ask a hosted LLM judge."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import textarena as ta
from textarena.envs.registration import ENV_REGISTRY

from selfplay.games import TEXTARENA


class TextArenaGame:
    num_players = 2

    def __init__(self, env_id: str, seed: int = 0):
        if env_id not in ENV_REGISTRY:
            raise ValueError(
                f"textarena: unknown env id {env_id!r}; ids look like 'TicTacToe-v0', "
                f"see textarena.envs.registration.ENV_REGISTRY"
            )
        self.name = TEXTARENA + env_id
        self.seed = seed
        self.illegal_by: int | None = None
        self._rng = random.Random(seed).getstate(), np.random.RandomState(seed).get_state()
        with self._own_rng():
            self._env = ta.make(env_id)
            self._base, views = self._env, []
            while isinstance(self._base, ta.Wrapper):
                if isinstance(self._base, ta.ObservationWrapper):
                    views.append(self._base)
                self._base = self._base.env
            if len(views) > 1:
                raise ValueError(
                    f"textarena: {env_id} registers {len(views)} observation wrappers; "
                    f"one prompt per player needs at most one"
                )
            self._view = views[0] if views else ta.wrappers.LLMObservationWrapper(self._base)
            try:
                self._env.reset(num_players=2, seed=seed)
            except AssertionError as e:  # TextArena states assert their player count
                raise ValueError(f"textarena: {env_id} is not a two-player game: {e}") from None
        self._base.state.error_allowance = 0

    @contextlib.contextmanager
    def _own_rng(self):
        """Run TextArena with this game's global `random` and numpy states swapped in."""
        outer = random.getstate(), np.random.get_state()
        random.setstate(self._rng[0])
        np.random.set_state(self._rng[1])
        try:
            yield
        finally:
            self._rng = random.getstate(), np.random.get_state()
            random.setstate(outer[0])
            np.random.set_state(outer[1])

    @property
    def current_player(self) -> int:
        return self._base.state.current_player_id

    @property
    def is_terminal(self) -> bool:
        return self.illegal_by is not None or self._base.state.done

    @property
    def reason(self) -> str | None:
        """TextArena's words for how the game ended (None while it runs)."""
        return self._base.state.game_info[0].get("reason") if self.is_terminal else None

    def returns(self) -> list[float]:
        if self.illegal_by is not None:
            return [-1.0, 1.0] if self.illegal_by == 0 else [1.0, -1.0]
        if not self.is_terminal:
            raise ValueError(f"{self.name}: returns() asked before the game is over")
        rewards, _ = self._env.close()
        r0, r1 = rewards[0], rewards[1]
        return [0.0, 0.0] if r0 == r1 else [1.0, -1.0] if r0 > r1 else [-1.0, 1.0]

    def legal_actions(self) -> list[int]:
        raise NotImplementedError(
            f"{self.name}: TextArena moves are free text that the env judges only when played; "
            f"there is no list of legal actions, so scripted players cannot sit at this game"
        )

    def observation(self, player: int) -> str:
        """The prompt `player` would be shown now (see the module docstring)."""
        pending = self._base.state.observations[player]
        self._base.state.observations[player] = []
        return self._view.observation(player, pending)

    @staticmethod
    def parse_action(text: str) -> str:
        """A move is the reply itself (outer whitespace dropped); the env parses it."""
        return text.strip()

    @staticmethod
    def action_text(action: str) -> str:
        return action

    def apply(self, action: str) -> None:
        """Play `action` (text). TextArena can only judge a move by playing it, so an invalid
        one raises ValueError after ending the game (the mover has lost)."""
        if not self.apply_text(action):
            raise ValueError(
                f"{self.name}: invalid move {action!r} by player {self.illegal_by} "
                f"({self.reason}); the game is over"
            )

    def apply_text(self, text: str) -> bool:
        """Apply a model's reply. Returns False (and ends the game) if it is invalid."""
        if self.is_terminal:
            raise ValueError(f"{self.name}: game is over")
        mover = self.current_player
        with self._own_rng():
            self._env.step(self.parse_action(text))
        if self._base.state.game_info[mover]["invalid_move"]:
            self.illegal_by = mover
            return False
        return True
