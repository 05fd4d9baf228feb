"""Which decisions apply, and which action each one gets.

Pure. The stream asks LAPI for every decision (`dedup=false`, no filter) and selection
happens here, on the decisions that cover one client: LAPI's own filters run after its
dedup, so a longer unselected decision on a value would hide a shorter selected one
(crowdsec#2014), and a filter kept here also changes on SIGHUP without a resync.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .decisions import Decision

# policy.Action, a str enum: this module sits below policy (policy imports it), so it
# handles actions as their names, which compare and hash as the enum members do.
Action = str

# How severe an action is, across the decisions on one address: the highest wins. A 5xx
# is final where a 421 lets the client come back, so reject outranks drop.
RANK = {"accept": 0, "tag": 1, "tempfail": 2, "drop": 3, "reject": 4}


@dataclass(frozen=True)
class Selection:
    """--origins, --scenarios-containing, --scenarios-not-containing (all lower-cased)."""

    origins: frozenset[str] | None = None  # None: every origin
    containing: tuple[str, ...] = ()
    not_containing: tuple[str, ...] = ()

    @classmethod
    def of(cls, origins: Iterable[str] | None, containing: Iterable[str] = (),
           not_containing: Iterable[str] = ()) -> Selection:
        return cls(frozenset(o.lower() for o in origins) if origins is not None else None,
                   tuple(w.lower() for w in containing), tuple(w.lower() for w in not_containing))

    @property
    def active(self) -> bool:
        return self.origins is not None or bool(self.containing or self.not_containing)

    def why_not(self, origin: str, scenario: str) -> str | None:
        """The option that drops a decision with this origin and scenario; None if kept."""
        if self.origins is not None and origin.lower() not in self.origins:
            return "--origins"
        lowered = scenario.lower()
        if self.containing and not any(w in lowered for w in self.containing):
            return "--scenarios-containing"
        if any(w in lowered for w in self.not_containing):
            return "--scenarios-not-containing"
        return None

    def selects(self, decision: Decision) -> bool:
        return self.why_not(decision.origin, decision.scenario) is None


@dataclass(frozen=True)
class ActionRules:
    """`--action` keys: `scenario:GLOB`, then `origin:NAME`, then `TYPE`, then the default;
    the most specific key that matches a decision gives its action."""

    types: Mapping[str, Action]
    origins: Mapping[str, Action]
    scenarios: tuple[tuple[str, Action], ...]
    default: Action

    @classmethod
    def of(cls, actions: Mapping[str, Action], default: Action) -> ActionRules:
        """From keys as cli.parse_actions gives them (lower-cased)."""
        types: dict[str, Action] = {}
        origins: dict[str, Action] = {}
        scenarios: list[tuple[str, Action]] = []
        for key, action in actions.items():
            kind, sep, name = key.partition(":")
            if sep and kind == "origin":
                origins[name] = action
            elif sep and kind == "scenario":
                scenarios.append((name, action))
            else:
                types[key] = action
        return cls(types, origins, tuple(scenarios), default)

    def action_for(self, decision: Decision) -> tuple[Action, str]:
        """The decision's action and the key that gave it ('--default-action' if none)."""
        scenario = decision.scenario.lower()
        for glob, action in self.scenarios:
            if fnmatch.fnmatchcase(scenario, glob):
                return action, f"scenario:{glob}"
        origin = decision.origin.lower()
        if origin in self.origins:
            return self.origins[origin], f"origin:{origin}"
        if decision.type in self.types:
            return self.types[decision.type], decision.type
        return self.default, "--default-action"

    @property
    def actions(self) -> set[Action]:
        return {*self.types.values(), *self.origins.values(),
                *(a for _, a in self.scenarios), self.default}

    @property
    def first_ban_decides(self) -> bool:
        """True when the first ban found settles the verdict (the index may stop there):
        only type keys, and a ban's action is the most severe one configured."""
        if self.origins or self.scenarios:
            return False
        ban = self.types.get("ban", self.default)
        return all(RANK[ban] >= RANK[a] for a in self.actions)
