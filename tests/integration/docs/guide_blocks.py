"""The shell blocks of the user guide (docs/guide/*.md) and their markers, for the docs tests.

Every ```bash or ```console block of a guide page is preceded by a marker comment that says what
the docs test does with it:

    <!-- docs-test: run expect="Sharpe (net)" expect="Report" -->
    <!-- docs-test: skip reason="needs a Kubernetes cluster with the operator (make dev-cluster)" -->

``run`` blocks are executed in order, in one scratch folder per page, and must exit 0 and print
every ``expect`` string; ``skip`` blocks are reported as skipped with their reason. A block without
a marker is an error, so a new command cannot slip in untested.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[3] / "docs" / "guide"
SHELLS = ("bash", "console")
_MARKER = re.compile(r"^<!--\s*docs-test:\s*(?P<body>.*?)\s*-->\s*$")
_FENCE = re.compile(r"^(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")


@dataclass(frozen=True)
class Block:
    """One shell block of a page, with what its marker asks."""

    page: str
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    action: str  # run | skip
    expect: tuple[str, ...] = ()
    reason: str = ""
    timeout: int = 900

    @property
    def script(self) -> str:
        """The commands: a bash block as it is; a console block's ``$ `` lines."""
        if self.lang == "bash":
            return self.text
        return "\n".join(line[2:] for line in self.text.splitlines() if line.startswith("$ "))


@dataclass
class Page:
    name: str
    blocks: list[Block] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _parse_marker(body: str, where: str) -> tuple[dict[str, list[str]], str | None]:
    words = shlex.split(body)
    if not words or words[0] not in ("run", "skip"):
        return {}, f"{where}: a docs-test marker starts with run or skip, not {body!r}"
    options: dict[str, list[str]] = {"action": [words[0]]}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep or key not in ("expect", "reason", "timeout"):
            return {}, f"{where}: unknown docs-test option {word!r} (expect=, reason=, timeout=)"
        options.setdefault(key, []).append(value)
    if words[0] == "skip" and not options.get("reason"):
        return {}, f'{where}: a skipped block needs reason="…"'
    return options, None


def read_page(path: Path) -> Page:
    """The shell blocks of one page and any marker errors."""
    page = Page(path.name)
    lines = path.read_text().splitlines()
    marker: tuple[dict[str, list[str]], int] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        found = _MARKER.match(line)
        if found:
            options, error = _parse_marker(found["body"], f"{path.name}:{i + 1}")
            if error:
                page.errors.append(error)
            marker = (options, i + 1) if not error else None
            i += 1
            continue
        fence = _FENCE.match(line)
        if not fence:
            if line.strip():
                marker = None  # a marker applies to the block right below it
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith(fence["fence"])), len(lines))
        lang, text = fence["lang"], "\n".join(lines[i + 1 : end])
        if lang in SHELLS:
            if marker is None:
                page.errors.append(
                    f"{path.name}:{i + 1}: a ```{lang} block without a <!-- docs-test: run|skip --> marker"
                )
            else:
                options = marker[0]
                page.blocks.append(
                    Block(
                        page=path.name,
                        line=i + 1,
                        lang=lang,
                        text=text,
                        action=options["action"][0],
                        expect=tuple(options.get("expect", ())),
                        reason=(options.get("reason") or [""])[0],
                        timeout=int((options.get("timeout") or ["900"])[0]),
                    )
                )
        marker = None
        i = end + 1
    return page


def guide_pages() -> list[Path]:
    """Every page of the user guide, in name order."""
    return sorted(GUIDE.glob("*.md"))
