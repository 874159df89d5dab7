"""Two-player zero-sum text games. `make_game(name, seed)` is the one way in.

Every game has the same small surface, which the generator, verifier and evals use:
  name, num_players (2), seed, current_player, is_terminal, illegal_by,
  returns() -> [r0, r1] (zero-sum), legal_actions() -> [int],
  observation(player) -> str (the prompt), parse_action(text) -> int | None,
  action_text(action) -> str, apply(action) (ValueError if illegal),
  apply_text(text) -> bool (False: illegal, the mover loses, the game ends).
A game is replayable from (name, seed) plus the reply texts: chance (a card deal, item
valuations) is drawn from the seed at construction.
Each game module's SCRIPTED maps a scripted player's name to its class
(`cls(seed).act(game) -> action`)."""

from __future__ import annotations

from selfplay.games import kuhn, negotiation, tictactoe

MODULES = {"tictactoe": tictactoe, "kuhn": kuhn, "negotiation": negotiation}
GAMES = {name: module.GAME for name, module in MODULES.items()}


TEXTARENA = "textarena:"  # prefix: "textarena:TicTacToe-v0" runs that TextArena env


def make_game(name: str, seed: int = 0, symmetric_views: bool = False):
    """`symmetric_views`: a game with board symmetries (TicTacToe) shows each turn's board in
    one of its symmetric orientations, drawn from the seed (generator.board_symmetries);
    other games have none and are made as they are."""
    if symmetric_views and name == tictactoe.GAME.name:
        return tictactoe.ViewedTicTacToe(seed=seed)
    if name.startswith(TEXTARENA):
        from selfplay.games.textarena_game import TextArenaGame

        return TextArenaGame(name[len(TEXTARENA) :], seed=seed)
    if name not in GAMES:
        raise ValueError(f"game: unknown game {name!r}; known: {sorted(GAMES)}")
    return GAMES[name](seed=seed)


def scripted_players(name: str) -> dict[str, type]:
    """Scripted opponents available for game `name` ('random' for every built-in game;
    none for TextArena games, whose moves are free text)."""
    if name.startswith(TEXTARENA):
        return {}
    if name not in MODULES:
        raise ValueError(f"game: unknown game {name!r}; known: {sorted(GAMES)}")
    return MODULES[name].SCRIPTED
