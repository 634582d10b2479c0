"""Write one benchmark's section into docs/benchmarks.md, between its own markers."""
from __future__ import annotations

import datetime
import os
import platform
import re
import sys
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEach section is written by the script it names; rerun the command to refresh it.\n"


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} torch threads")


def write_section(name: str, title: str, command: str, body: str) -> None:
    text = DOC.read_text() if DOC.exists() else HEADER
    block = (f"<!-- {name}:start -->\n## {title}\n\n"
             f"- command: `{command}`\n- machine: {machine()}\n"
             f"- date: {datetime.date.today().isoformat()}\n\n{body.strip()}\n<!-- {name}:end -->")
    pattern = re.compile(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)
    print(block, file=sys.stderr)
