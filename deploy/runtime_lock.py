"""Print the runtime part of requirements.lock (hashes kept) for the images.

The repository has one lock, holding runtime and development packages. Images must not
carry pytest, mypy or testcontainers, so the build keeps only the packages that some
workspace member needs: a package is kept when one of its "# via" parents is a
workspace member (bastion-*) or another kept package. Development-group packages carry
no "via" line and are left out with everything only they pull in.
"""

from __future__ import annotations

import re
import sys

_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==")


def _blocks(text: str) -> list[tuple[str, list[str], list[str]]]:
    blocks: list[tuple[str, list[str], list[str]]] = []
    for line in text.splitlines():
        match = _NAME.match(line)
        if match:
            blocks.append((match.group(1).lower(), [line], []))
        elif blocks and line.startswith("    "):
            name, lines, parents = blocks[-1]
            lines.append(line)
            comment = line.strip().removeprefix("#").strip()
            if comment.startswith("via "):
                parents.append(comment.removeprefix("via ").strip())
            elif line.startswith("    #   "):
                parents.append(comment)
    return blocks


def runtime_subset(text: str) -> str:
    blocks = _blocks(text)
    keep: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, _lines, parents in blocks:
            if name in keep:
                continue
            roots = (p.split()[0].lower() for p in parents if p)
            if any(r.startswith("bastion-") or r in keep for r in roots):
                keep.add(name)
                changed = True
    out = [line for name, lines, _ in blocks if name in keep for line in lines]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(runtime_subset(sys.stdin.read()))
