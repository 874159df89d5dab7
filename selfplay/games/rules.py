"""The rule every built-in game shares for model replies."""

from __future__ import annotations


class IllegalReplyLoses:
    """Mixin: `apply_text` applies a model's reply; a reply that does not parse to a legal
    move sets `illegal_by`, which ends the game with the mover losing, and returns False."""

    def apply_text(self, text: str) -> bool:
        if self.is_terminal:
            raise ValueError("game is over")
        action = self.parse_action(text)
        if action is None or action not in self.legal_actions():
            self.illegal_by = self.current_player
            return False
        self.apply(action)
        return True
