"""The prompt policy: a deny list of terms checked where prompts enter the
system (Jobs at submit, the enhancer on its input) and on what the enhancer
writes, so an enhanced prompt cannot bring back what a user could not submit.

Terms come from settings (`PROMPT_DENY_LIST`, comma-separated, and/or
`PROMPT_DENY_LIST_FILE`, one term per line, `#` comments). A term matches
case-insensitively as whole words, with any run of spaces, hyphens or
underscores between its words, so "bad-word" and "Bad  Word" both match
"bad word" while "badwords" does not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ourvidz.errors import FieldViolation, InvalidArgument


def _pattern(term: str) -> re.Pattern[str]:
    words = [re.escape(w) for w in re.split(r"[\s_\-]+", term.strip()) if w]
    return re.compile(r"(?<!\w)" + r"[\s_\-]+".join(words) + r"(?!\w)", re.IGNORECASE)


def parse_terms(text: str, *, lines: bool = False) -> list[str]:
    """Terms from a comma-separated setting or (lines=True) a file's text."""
    parts = text.splitlines() if lines else text.split(",")
    terms = []
    for part in parts:
        term = part.split("#", 1)[0].strip() if lines else part.strip()
        if term and term.lower() not in (t.lower() for t in terms):
            terms.append(term)
    return terms


@dataclass(frozen=True)
class PromptPolicy:
    terms: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "_patterns", tuple((t, _pattern(t)) for t in self.terms))

    @classmethod
    def from_settings(cls, deny_list: str = "", deny_list_file: str = "") -> PromptPolicy:
        terms = parse_terms(deny_list)
        if deny_list_file:
            path = Path(deny_list_file)
            for term in parse_terms(path.read_text(encoding="utf-8"), lines=True):
                if term.lower() not in (t.lower() for t in terms):
                    terms.append(term)
        return cls(tuple(terms))

    def violations(self, text: str) -> list[str]:
        """The deny-listed terms found in `text`, in list order."""
        return [term for term, pattern in self._patterns if pattern.search(text or "")]

    def allows(self, text: str) -> bool:
        return not self.violations(text)

    def violation(self, text: str, field: str = "prompt") -> FieldViolation | None:
        """A field violation naming `field` and the terms found, or None."""
        found = self.violations(text)
        if not found:
            return None
        listed = ", ".join(repr(t) for t in found)
        return FieldViolation(field, f"contains terms the prompt policy does not allow: {listed}")

    def check(self, text: str, field: str = "prompt") -> None:
        """Raise InvalidArgument when `text` breaks the policy."""
        bad = self.violation(text, field)
        if bad is not None:
            raise InvalidArgument([bad])
