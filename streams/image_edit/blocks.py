"""Per-model blocks after an account-state error (pure; the clock is passed in).

An overdue bill (``account_in_arrears``), a model the account has not bought
(``model_not_purchased``) or a used-up free quota (``quota_exhausted``) fails every
call to that model the same way, and each failed call is still a request.  So on
the first one the worker stops calling the model: jobs for it fail at once with the
code, except one *probe* call every :data:`PROBE_INTERVAL` seconds at most, whose
success lifts the block (work resumes by itself, no restart).

Blocks travel between workers as :class:`BlockEvent` JSON on the small internal
topic ``imagestream-upstream-blocks`` (:mod:`streams.image_edit.block_board`), so a
worker learns of a block without paying a request for it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["PROBE_INTERVAL", "Block", "BlockEvent", "ModelBlocks"]

#: Longest time between two probe calls of a blocked model (the issue: ≤ 30 s).
PROBE_INTERVAL = 30.0


@dataclass(frozen=True, slots=True)
class Block:
    model: str
    code: str
    message: str
    since: float  # epoch seconds of the first refusal


@dataclass(frozen=True, slots=True)
class BlockEvent:
    """A block set (``blocked=True``) or lifted, as it travels between workers."""

    model: str
    blocked: bool
    at: float
    code: str = ""
    message: str = ""
    since: float = 0.0

    def dumps(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def loads(cls, raw: bytes) -> BlockEvent:
        doc: Any = json.loads(raw)
        if not isinstance(doc, dict) or not isinstance(doc.get("model"), str):
            raise ValueError("a block event is a JSON object with a model")
        return cls(model=doc["model"], blocked=bool(doc.get("blocked")), at=float(doc.get("at", 0.0)),
                   code=str(doc.get("code", "")), message=str(doc.get("message", "")),
                   since=float(doc.get("since", 0.0)))


class ModelBlocks:
    """The models this worker must not call now, and when each may be probed next."""

    def __init__(self, *, probe_interval: float = PROBE_INTERVAL) -> None:
        self.probe_interval = probe_interval
        self._blocks: dict[str, Block] = {}
        self._next_probe: dict[str, float] = {}
        #: When the last change of each model was made (events older than it are stale).
        self._changed_at: dict[str, float] = {}

    def get(self, model: str) -> Block | None:
        return self._blocks.get(model)

    def all(self) -> list[Block]:
        return sorted(self._blocks.values(), key=lambda b: b.model)

    def block(self, model: str, code: str, message: str, now: float, *, since: float | None = None) -> bool:
        """Block ``model`` (or refresh its block after a failed probe); True if it is new."""
        current = self._blocks.get(model)
        new = current is None or current.code != code
        started = since if since is not None else (current.since if current and not new else now)
        self._blocks[model] = Block(model=model, code=code, message=message, since=started)
        self._next_probe[model] = now + self.probe_interval
        self._changed_at[model] = now
        return new

    def lift(self, model: str, now: float) -> bool:
        """Lift the block of ``model``; True if there was one."""
        self._next_probe.pop(model, None)
        self._changed_at[model] = now
        return self._blocks.pop(model, None) is not None

    def claim_probe(self, model: str, now: float) -> bool:
        """True (once per interval) when the caller may send the one probe call."""
        if model not in self._blocks or now < self._next_probe.get(model, 0.0):
            return False
        self._next_probe[model] = now + self.probe_interval
        return True

    def apply(self, event: BlockEvent, now: float) -> None:
        """Adopt another worker's change, unless this worker knows a newer one."""
        if event.at < self._changed_at.get(event.model, 0.0):
            return
        if event.blocked:
            self.block(event.model, event.code, event.message, now, since=event.since)
            self._changed_at[event.model] = event.at
        else:
            self.lift(event.model, event.at)
