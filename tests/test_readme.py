"""The README's Python blocks of "Using it" run as written (with a two-batch ``loader`` standing in for
the user's data), and what their comments promise holds."""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(after: str, count: int) -> list[str]:
    text = README.read_text()
    text = text[text.index(after):]
    return re.findall(r"```python\n(.*?)```", text, re.S)[:count]


def test_the_using_it_blocks_run_as_written(one_thread):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    loader = [(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(2)]
    scope = {"loader": loader}
    for block in python_blocks("## Using it", 2):
        exec(compile(block, str(README), "exec"), scope)            # noqa: S102 - our own README
    netmorph, model, example = scope["netmorph"], scope["model"], scope["example"]
    assert netmorph.count_flops(scope["resnet20"](), example) == 81_626_368          # as its comment says
    assert netmorph.count_params(scope["resnet20"]()) == 272_474
    assert netmorph.count_flops(scope["small"], example) == scope["reg"].cost()
    assert scope["big"].cost <= netmorph.count_flops(model, example) and scope["big"].omega >= 1
    assert scope["narrow"].layer1[0].conv1.out_channels == 8
