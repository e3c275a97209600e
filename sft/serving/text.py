"""A sequence's reply text as its tokens arrive: cut at the first stop string, and released piece by piece
only once no later token can change or cut it, so a stream never sends text it would have to take back.
"""

from __future__ import annotations

import re

# Held back at the end of the text: whitespace (the reply is stripped at the end, and a tokenizer's
# clean-up may drop a space before punctuation that is still to come) and U+FFFD (an incomplete UTF-8
# character whose remaining bytes are still to come).
_UNSETTLED = re.compile(r"[\s\ufffd]+\Z")


class ReplyText:
    """Decodes growing token ids; `update` gives the newly settled text and whether a stop ended it."""

    def __init__(self, tokenizer, stops: list[str], strip: bool) -> None:
        self.tokenizer, self.stops, self.strip = tokenizer, stops, strip
        self.sent = ""  # what has been released: always a prefix of the final text
        self.final: str | None = None  # the whole reply, once generation has ended

    def decode(self, ids: list[int]) -> str:
        """The text of `ids`, special tokens left out (the end-of-turn token is not reply text)."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def update(self, ids: list[int]) -> tuple[str, bool]:
        """(newly settled text, True when a stop string has appeared: the text ends before it)."""
        text = self.decode(ids)
        cuts = [i for i in (text.find(stop) for stop in self.stops) if i >= 0]
        if cuts:
            return self._release(text[: min(cuts)], final=True), True
        return self._release(text, final=False), False

    def finish(self, ids: list[int]) -> str:
        """The rest of the text once generation has ended without a stop string."""
        return self._release(self.decode(ids), final=True)

    def _held(self, text: str) -> int:
        """How many characters at the end could still become the start of a stop string."""
        longest = max((len(stop) for stop in self.stops), default=1) - 1
        for size in range(min(longest, len(text)), 0, -1):
            if any(stop.startswith(text[-size:]) for stop in self.stops):
                return size
        return 0

    def _settled(self, text: str) -> str:
        """`text` without its unsettled end: alternately, because cutting one kind can uncover the other
        (an incomplete character after the start of a stop string)."""
        while True:
            text = _UNSETTLED.sub("", text)
            held = self._held(text)
            if not held:
                return text
            text = text[:-held]

    def _release(self, text: str, final: bool) -> str:
        """The part of `text` (raw decoded text) not released yet, up to what is settled."""
        if final:
            visible = self.final = text.strip() if self.strip else text
        else:
            settled = self._settled(text)
            visible = settled.lstrip() if self.strip else settled
        if not visible.startswith(self.sent):  # decoding changed released text: wait until it agrees again
            return ""
        delta, self.sent = visible[len(self.sent) :], visible
        return delta
