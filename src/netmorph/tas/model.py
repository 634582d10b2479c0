"""``TAS``: a network wrapped for Transformable Architecture Search (METHODS.md 2).

Rules of the forward pass (``tas(x)`` returns what the wrapped model returns):
- Widths: for every width distribution two candidates are sampled (:func:`gumbel.gumbel_top2`);
  every module output carrying the group's channels becomes ``sum_k w_k pad(CWI(x[:c_k], c_max), C)``
  (:func:`cwi.mix_widths`). The rewrite is done by forward hooks that exist only while ``tas`` runs,
  so the model's own code runs unchanged and the wrapped model stays a plain module.
- Depth (expected-depth mixing, a documented simplification of the paper's mixing of stage outputs):
  with Gumbel-softmax probabilities ``p`` over a stage's depths, block ``j``'s branch output ``b``
  becomes ``m_j * b + (1 - m_j) * k`` with ``m_j = P(depth > j) = sum_{d > j} p_d`` and ``k`` what the
  branch emits once removed (its BatchNorm applied to zeros; 0 without one). With one-hot ``p`` this
  is exactly the network with the first ``d`` blocks, as ``apply_structure`` builds it.
- ``mode = "argmax"`` replaces sampling by the argmax of every distribution: ``tas`` then computes
  exactly what the derived network computes.
The wrapped model is a deep copy (the original stays untouched, e.g. as the distillation teacher).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..graph import build_graph
from ..graph.record import as_input_tuple, input_shapes, unwrap
from ..resize import apply_structure
from ..structure import Structure
from .flops import FlopsTable
from .gumbel import gumbel_softmax, gumbel_top2
from .hooks import output_hook
from .space import DEFAULT_RATIOS, check_scope, stages, width_spaces

def initial_student(init: str, structure, build, teacher: nn.Module, searched: nn.Module | None, example_inputs,
                    seed: int = 0) -> nn.Module:
    """The found network's starting weights for distillation: ``"teacher"`` keeps the teacher's most
    important channels (largest |gamma|) with their trained weights, ``"keep"`` the first channels of
    ``searched`` (the searched supernet's model, ``tas.model``), ``"fresh"`` draws new weights the way
    ``build()`` initializes itself. ``seed`` seeds torch's generator first (fresh draws)."""
    torch.manual_seed(seed)
    if init == "teacher":
        return apply_structure(teacher, structure, init="keep", keep="importance", example_inputs=example_inputs)
    if init == "keep":
        if searched is None:
            raise ValueError("init='keep' starts from the searched supernet: pass searched=tas.model")
        return apply_structure(searched, structure, init="keep", keep="first", example_inputs=example_inputs)
    if init != "fresh":
        raise ValueError(f"init must be 'teacher', 'keep' or 'fresh', got {init!r}")
    return apply_structure(build(), structure, init="fresh", keep="first", example_inputs=example_inputs)


class TAS(nn.Module):
    """A BatchNorm conv network with a width distribution per changeable channel group and a depth
    distribution per stage of removable residual blocks, searched towards ``target_flops``
    (absolute, in the unit of ``netmorph.count_flops`` on ``example_inputs``)."""

    def __init__(self, model: nn.Module, example_inputs, target_flops: float, width_ratios=DEFAULT_RATIOS,
                 tolerance: float = 0.05, tau: float = 1.0, seed: int = 0):
        super().__init__()
        model = unwrap(model)                     # torch.compile / DDP: the module they wrap
        check_scope(model)
        if not 0 <= tolerance < 1:
            raise ValueError(f"tolerance must be in [0, 1), got {tolerance!r}")
        self.example_inputs = as_input_tuple(example_inputs)
        graph = build_graph(model, self.example_inputs)
        self.spaces = width_spaces(graph, model, width_ratios)
        self.stages = stages(graph, model)
        self.table = FlopsTable(graph)
        self.model = copy.deepcopy(model)
        self._group_width = [g.width for g in graph.groups]
        self.space_names = [graph.groups[s.group].producers[0] for s in self.spaces]
        self.stage_names = [f"stage of {', '.join(b.outputs[0] for b in st.blocks)}" for st in self.stages]
        self._layers = {n: (int(graph.group_of[l.out[0]]), l.width // graph.groups[int(graph.group_of[l.out[0]])].width,
                            l.width) for n, l in graph.layers.items()}
        self._hooks: dict[str, list[tuple]] = {}
        for s, stage in enumerate(self.stages):
            for j, block in enumerate(stage.blocks):
                for name in block.outputs:
                    self._hooks.setdefault(name, []).append(("depth", s, j))
        for i, space in enumerate(self.spaces):
            for site in space.sites:
                self._hooks.setdefault(site.module, []).append(("width", i, torch.as_tensor(site.positions), site.dim))
            for site in space.masks:
                self._hooks.setdefault(site.module, []).append(("mask", i, torch.as_tensor(site.positions), site.dim))
        ref = next(iter(self.model.parameters()))
        gen = torch.Generator().manual_seed(seed)
        init = lambda n: nn.Parameter((0.01 * torch.randn(n, generator=gen)).to(ref.device))  # noqa: E731
        self.alphas = nn.ParameterList([init(len(s.candidates)) for s in self.spaces])
        self.betas = nn.ParameterList([init(len(s.candidates)) for s in self.stages])
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.mode = "gumbel"
        self.set_tau(tau)
        self.tolerance = float(tolerance)
        self.full_flops = float(self.table(self._scale("full")))
        self.min_flops = float(self.table(self._scale("min")))
        if not (isinstance(target_flops, (int, float)) and self.min_flops <= target_flops <= self.full_flops):
            raise ValueError(f"target_flops must be between the smallest network of the search space "
                             f"({self.min_flops:,.0f}) and the full network ({self.full_flops:,.0f}) FLOPs, "
                             f"got {target_flops!r}")
        self.target_flops = float(target_flops)

    # -- parameters -------------------------------------------------------------------------
    def set_tau(self, tau: float) -> None:
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau!r}")
        self.tau = float(tau)

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas) + list(self.betas)

    # -- forward ------------------------------------------------------------------------------
    def _reach(self, stage, probs: torch.Tensor) -> torch.Tensor:
        """``P(depth > j)`` for every block ``j`` of ``stage``."""
        beyond = torch.tensor([[float(d > j) for d in stage.candidates] for j in range(len(stage.blocks))],
                              dtype=probs.dtype, device=probs.device)
        return beyond @ probs

    def _sample(self):
        widths, depths = [], []
        for space, alpha in zip(self.spaces, self.alphas):
            if self.mode == "argmax":
                widths.append(([space.candidates[int(alpha.argmax())]], alpha.new_ones(1)))
            else:
                index, weight = gumbel_top2(alpha, self.tau, self.generator)
                widths.append(([space.candidates[k] for k in index.tolist()], weight))
        for stage, beta in zip(self.stages, self.betas):
            probs = (nn.functional.one_hot(beta.argmax(), len(beta)).to(beta.dtype) if self.mode == "argmax"
                     else gumbel_softmax(beta, self.tau, self.generator))
            depths.append(self._reach(stage, probs))
        return widths, depths

    def forward(self, *inputs):
        widths, depths = self._sample()
        handles = [self.model.get_submodule(name).register_forward_hook(output_hook(ops, widths, depths))
                   for name, ops in self._hooks.items()]
        try:
            return self.model(*inputs)
        finally:
            for h in handles:
                h.remove()

    # -- FLOPs --------------------------------------------------------------------------------
    @staticmethod
    def _probs(logits: torch.Tensor, kind: str) -> torch.Tensor:
        """float64 probabilities of one distribution: "expected" (softmax), "argmax", "full", "min"."""
        if kind == "expected":
            return torch.softmax(logits.double(), 0)
        k = {"argmax": int(logits.argmax()), "full": len(logits) - 1, "min": 0}[kind]
        return nn.functional.one_hot(torch.tensor(k, device=logits.device), len(logits)).double()

    def _scale(self, kind: str) -> torch.Tensor:
        """Per group: new width over full width (see :mod:`.flops`)."""
        ref = self.alphas[0]
        scale = [ref.new_ones((), dtype=torch.float64) for _ in self._group_width]
        for space, alpha in zip(self.spaces, self.alphas):
            cands = torch.tensor(space.candidates, dtype=torch.float64, device=alpha.device)
            scale[space.group] = (self._probs(alpha, kind) * cands).sum() / space.width
        for stage, beta in zip(self.stages, self.betas):
            reach = self._reach(stage, self._probs(beta, kind))
            for j, block in enumerate(stage.blocks):
                for g in block.groups:
                    scale[g] = scale[g] * reach[j]
        return torch.stack(scale)

    def expected_flops(self) -> torch.Tensor:
        """``E[FLOPs]`` under the plain softmax of every distribution (differentiable, float64)."""
        return self.table(self._scale("expected"))

    def flops(self) -> float:
        """FLOPs of the current argmax architecture (the network :meth:`derive` describes)."""
        with torch.no_grad():
            return float(self.table(self._scale("argmax")))

    def flops_loss(self) -> torch.Tensor:
        """``log E[F]`` above ``(1 + t) R``, ``-log E[F]`` below ``(1 - t) R``, else 0 (F: argmax FLOPs)."""
        f, r, t = self.flops(), self.target_flops, self.tolerance
        expected = self.expected_flops()
        if f > (1 + t) * r:
            return expected.log().float()
        if f < (1 - t) * r:
            return -expected.log().float()
        return expected.new_zeros((), dtype=torch.float32)

    def diagnostics(self) -> list[dict]:
        """Per distribution (widths first, then depths): its name (a layer making the group, or the
        stage's blocks), kind, candidates, softmax probabilities, top-1 probability, top-1 minus top-2
        margin and entropy over ``log(#candidates)`` (1: uniform, 0: decided)."""
        import math
        rows = []
        named = ([("width", n, s.candidates, a) for n, s, a in zip(self.space_names, self.spaces, self.alphas)] +
                 [("depth", n, s.candidates, b) for n, s, b in zip(self.stage_names, self.stages, self.betas)])
        for kind, name, cands, logits in named:
            p = torch.softmax(logits.detach().double(), 0).cpu()
            top = p.topk(min(2, len(p))).values.tolist() + [0.0]
            ent = float(-(p * p.clamp_min(1e-30).log()).sum()) / math.log(len(p)) if len(p) > 1 else 0.0
            rows.append({"kind": kind, "name": name, "candidates": list(cands), "probs": [round(v, 4) for v in p.tolist()],
                         "top1": top[0], "margin": top[0] - top[1], "entropy": ent})
        return rows

    # -- the found network --------------------------------------------------------------------
    def derive(self) -> Structure:
        """Argmax width of every layer; the layers of dropped blocks' branches at width 0."""
        chosen = {s.group: s.candidates[int(a.argmax())] for s, a in zip(self.spaces, self.alphas)}
        dropped = {g for stage, beta in zip(self.stages, self.betas)
                   for j, block in enumerate(stage.blocks) if j >= stage.candidates[int(beta.argmax())]
                   for g in block.groups}
        widths = {name: 0 if g in dropped else mult * chosen.get(g, self._group_width[g])
                  for name, (g, mult, _) in self._layers.items()}
        return Structure(widths, original={n: w for n, (_, _, w) in self._layers.items()},
                         input_shapes=input_shapes(self.example_inputs))

    def derive_model(self, init: str = "keep") -> nn.Module:
        """The derived network built from the searched weights (the first channels of every layer)."""
        return apply_structure(self.model, self.derive(), init=init, keep="first", example_inputs=self.example_inputs)

    def extra_repr(self) -> str:
        return (f"{len(self.spaces)} width distributions, {len(self.stages)} depth distributions, "
                f"target {self.target_flops:,.0f} of {self.full_flops:,.0f} FLOPs (tolerance {self.tolerance:g})")
