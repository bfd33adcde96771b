"""Reading the inputs written in ``shared/cases/NN-*.md`` (used by several test files)."""

from __future__ import annotations

import ast
import codecs
import re
from pathlib import Path


def case_blocks(cases_dir: Path, number: str) -> list[list[bytes]]:
    """Every fenced block of case ``number``, one bytes item per non-empty line.

    Blocks written as ``b"..."`` lines are Python literals; other blocks are wire
    text with ``\\r\\n`` escapes (a real line break only separates two messages).
    """
    path = next(cases_dir.glob(f"{number}-*.md"))
    blocks = []
    for body in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), re.S):
        lines = [line for line in body.splitlines() if line.strip()]
        if all(line.startswith('b"') for line in lines):
            blocks.append([ast.literal_eval(line) for line in lines])
        else:
            blocks.append([codecs.escape_decode(line.encode())[0] for line in lines])
    return blocks
