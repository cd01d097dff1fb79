"""Fast exact TracInCP (Pruthi et al. 2020; Yacoubou 2024, section 3.2):

    TracInCP(z, z') = sum_i eta_i * grad_w l(w_i, z) . grad_w l(w_i, z')

Per-sample gradients come from one batched forward/backward pass per tile, with hooks that keep each
layer's inputs ``u`` and output gradients ``d`` (the model in eval mode, loss summed over the batch, so
row b of ``d`` is sample b's own gradient). A Linear or Conv2d layer's per-sample weight gradient is
``sum_l d_l u_l^T`` over its L positions (L = 1 for Linear), so it is never needed explicitly:

* factorised (L = 1): <d (x) u, d' (x) u'> = (u . u')(d . d'), cost Din + Dout per pair;
* materialised: G = D^T U per sample, then plain products, cost Din * Dout per pair;

and each layer takes the cheaper for the sizes at hand. Batch-norm affine parameters have closed-form
per-sample gradients; any other parameter falls back to ``torch.func`` (vmap over grad). Each checkpoint
is loaded once; training rows are tiled so that peak memory stays under ``memory_budget`` (and a tile
near ``FAST_TILE_BYTES``, the fastest size measured on CPU, unless ``batch_size`` fixes the rows per tile).
An optional seeded random projection maps each layer's (u, d) to (R_u u, R_d d), an unbiased sketch of the
products whose relative error against the exact scores on a probe subset is reported in
``last_projection_error``.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.grad import conv2d_weight

from poisonlab.checks import (
    check_checkpoints,
    check_dataset,
    check_int,
    check_model,
    check_model_fits,
    check_same_space,
    check_seed,
)
from poisonlab.data import Dataset
from poisonlab.errors import ConfigError
from poisonlab.training import Checkpoint

# Rows per tile are also capped so that a tile's working memory stays near this size: larger tiles fall out
# of cache and run up to 2x slower per row on CPU (measured on 4 models, 28x28 and 32x32 inputs, tiles of
# 32 to 2,048 rows: the fastest tiles held 0.3-1 GB; benchmarks/results/tracin_vs_captum.md).
FAST_TILE_BYTES = 512 * 2**20

_UNITS = {"": 1, "b": 1, "kb": 2**10, "k": 2**10, "mb": 2**20, "m": 2**20, "gb": 2**30, "g": 2**30}


def parse_bytes(value: int | float | str) -> int:
    """``2**30``, ``"512MB"`` or ``"2 GiB"`` -> bytes."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"memory_budget {value!r} is not a size such as '2GB' or '512MB'")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"memory_budget must be a finite number of bytes >= 0, got {value!r}")
        return int(value)
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([kmg]?)i?b?\s*", value.lower())
    if not match:
        raise ConfigError(f"memory_budget {value!r} is not a size such as '2GB' or '512MB'")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def parameter_names(model: nn.Module, layers: Sequence[str] | None = None) -> list[str]:
    """Names of the trainable parameters of ``layers`` (module-name prefixes such as ``"head"``), or all."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if layers is None:
        return names

    def inside(name, layer):
        return name == layer or name.startswith(layer + ".")

    unknown = [layer for layer in layers if not any(inside(n, layer) for n in names)]
    if unknown:
        modules = sorted({n.rsplit(".", 1)[0] for n in names})
        raise ConfigError(f"unknown layer(s) {unknown}; layers with parameters: {', '.join(modules)}")
    return [n for n in names if any(inside(n, layer) for layer in layers)]


def last_layer(model: nn.Module) -> str:
    """Name of the last Linear module (the classifier head)."""
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ConfigError("last_layer_only needs a model with an nn.Linear layer")
    return linear[-1]


def per_sample_grads(
    model: nn.Module, state: dict[str, torch.Tensor], names: Sequence[str], x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Flattened per-sample loss gradients w.r.t. parameters ``names`` by vmap over grad, (len(x), P)."""
    params = {n: state[n] for n in names}
    rest = {k: v for k, v in state.items() if k not in params}

    def loss(p, xi, yi):
        out = functional_call(model, {**rest, **p}, (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    g = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([g[n].reshape(len(x), -1) for n in names], dim=1)


@dataclass
class _Layer:
    """How one module's selected parameters get their per-sample gradients."""

    name: str
    module: nn.Module
    kind: str  # "linear", "conv", "bn"
    weight: bool
    bias: bool
    din: int = 0  # columns of u (with a ones column for the bias)
    dout: int = 0
    positions: int = 1  # L
    mode: str = "materialise"  # or "factorise"


@dataclass
class _Piece:
    """One layer's per-sample gradients for a tile: materialised ``g`` (B, P) or factors (B, L, D)."""

    g: torch.Tensor | None = None
    u: torch.Tensor | None = None
    d: torch.Tensor | None = None


def _dot(a: _Piece, b: _Piece) -> torch.Tensor:
    """(len(a), len(b)) gradient inner products."""
    if a.g is not None:
        return a.g @ b.g.T
    if a.u.shape[1] == 1 and b.u.shape[1] == 1:
        return (a.u[:, 0] @ b.u[:, 0].T) * (a.d[:, 0] @ b.d[:, 0].T)
    return torch.einsum("ilx,jmx,ild,jmd->ij", a.u, b.u, a.d, b.d)


def _sq_norm(a: _Piece) -> torch.Tensor:
    if a.g is not None:
        return a.g.pow(2).sum(1)
    if a.u.shape[1] == 1:
        return a.u[:, 0].pow(2).sum(1) * a.d[:, 0].pow(2).sum(1)
    return (torch.einsum("blx,bmx->blm", a.u, a.u) * torch.einsum("bld,bmd->blm", a.d, a.d)).sum((1, 2))


def _total(a: _Piece) -> torch.Tensor:
    """Sum over the tile's samples of the per-sample gradient, flattened (materialised form)."""
    if a.g is not None:
        return a.g.sum(0)
    return torch.einsum("bld,blx->dx", a.d, a.u).flatten()


def _dot_total(a: _Piece, total: torch.Tensor) -> torch.Tensor:
    if a.g is not None:
        return a.g @ total
    g = total.view(a.d.shape[2], a.u.shape[2])
    return torch.einsum("bld,dx,blx->b", a.d, g, a.u)


class TracInCP:
    """Exact, batched, memory-bounded TracInCP over checkpoints of ``model``.

    ``layers``: module-name prefixes whose parameters count (all by default); ``last_layer_only`` keeps
    only the final Linear layer. ``memory_budget`` (bytes or "2GB") bounds the working memory of a tile
    (the returned scores are extra). ``projection_dim``: project each layer's gradient to at most that
    many dimensions with a seeded Gaussian sketch (approximate; error in ``last_projection_error``).
    """

    def __init__(
        self,
        model: nn.Module,
        checkpoints: Sequence[Checkpoint],
        *,
        layers: Sequence[str] | None = None,
        last_layer_only: bool = False,
        memory_budget: int | str = "2GB",
        projection_dim: int | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        batch_size: int | None = None,
    ):
        check_model(model, "TracInCP", "model")
        if not check_checkpoints(model, checkpoints, "TracInCP", "checkpoints"):
            raise ConfigError("TracInCP needs at least one checkpoint (train with checkpoint_every)")
        if projection_dim is not None:
            check_int(projection_dim, "TracInCP: projection_dim", minimum=1)
        check_seed(seed, "TracInCP: seed")
        if batch_size is not None:
            check_int(batch_size, "TracInCP: batch_size", minimum=1)
        if dtype not in (torch.float32, torch.float64):
            raise ConfigError(f"TracInCP: dtype must be torch.float32 or torch.float64, got {dtype!r}")
        if layers is not None and (isinstance(layers, str) or not isinstance(layers, Sequence)):
            raise ConfigError(f"TracInCP: layers must be a list of module names, got {layers!r}")
        self.model = copy.deepcopy(model).to(dtype).eval()
        self.device = next(self.model.parameters()).device
        self.checkpoints = list(checkpoints)
        self.names = parameter_names(self.model, [last_layer(self.model)] if last_layer_only else layers)
        self.memory_budget = parse_bytes(memory_budget)
        self.projection_dim = projection_dim
        self.seed = seed
        self.dtype = dtype
        self.batch_size = batch_size
        self.last_projection_error: float | None = None
        self._layers, self._fallback = self._plan_layers()
        self._projections: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]] = {}

    # ----- planning -------------------------------------------------------------------------------
    def _plan_layers(self) -> tuple[list[_Layer], list[str]]:
        chosen = set(self.names)
        layers, covered = [], set()
        counts: dict[int, int] = {}
        for _, module in self.model.named_modules(remove_duplicate=False):
            counts[id(module)] = counts.get(id(module), 0) + 1
        for name, module in self.model.named_modules():
            prefix = f"{name}." if name else ""
            w, b = f"{prefix}weight", f"{prefix}bias"
            has_w, has_b = w in chosen, b in chosen
            if not (has_w or has_b) or counts[id(module)] > 1:
                continue
            if isinstance(module, nn.Linear):
                layer = _Layer(name, module, "linear", has_w, has_b, module.in_features, module.out_features)
            elif (
                isinstance(module, nn.Conv2d)
                and module.groups == 1
                and module.padding_mode == "zeros"
                and not isinstance(module.padding, str)
            ):
                din = module.in_channels * math.prod(module.kernel_size)
                layer = _Layer(name, module, "conv", has_w, has_b, din, module.out_channels)
            elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d) and module.track_running_stats:
                layer = _Layer(name, module, "bn", has_w, has_b, has_w + has_b, module.num_features)
            else:
                continue
            if layer.kind != "bn" and not has_w:
                layer.din = 0  # bias only: its per-sample gradient is d summed over positions
            layers.append(layer)
            covered |= {w, b} & chosen
        fallback = [n for n in self.names if n not in covered]
        return layers, fallback

    def _setup(self, data: Dataset, n_test: int) -> None:
        """Measure each layer's positions on one row, then factorise a layer when its per-pair cost
        beats materialising its gradient."""
        self._measure_positions(data.x[:1].to(self.device, self.dtype))
        for layer in self._layers:
            if layer.kind == "bn":
                continue
            din, dout = self._projected_dims(layer)
            if not layer.weight:
                continue
            materialise = layer.positions * din * dout + max(n_test, 1) * din * dout
            factorise = max(n_test, 1) * layer.positions**2 * (din + dout)
            layer.mode = "factorise" if factorise < materialise else "materialise"

    def _projected_dims(self, layer: _Layer) -> tuple[int, int]:
        if self.projection_dim is None or layer.kind == "bn":
            return layer.din, layer.dout
        k = math.ceil(math.sqrt(self.projection_dim))
        return min(layer.din, k), min(layer.dout, k)

    def _projection(self, layer: _Layer) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if layer.name not in self._projections:
            index = next(i for i, other in enumerate(self._layers) if other is layer)
            gen = torch.Generator().manual_seed(self.seed + 7919 * index)
            k_in, k_out = self._projected_dims(layer)
            r_in = r_out = None
            if layer.kind == "bn":
                size = layer.din * layer.dout
                k = min(size, self.projection_dim)
                if k < size:
                    r_in = torch.randn(size, k, generator=gen, dtype=self.dtype) / math.sqrt(k)
            else:
                if k_in < layer.din:
                    r_in = torch.randn(layer.din, k_in, generator=gen, dtype=self.dtype) / math.sqrt(k_in)
                if k_out < layer.dout:
                    r_out = torch.randn(layer.dout, k_out, generator=gen, dtype=self.dtype) / math.sqrt(k_out)
            self._projections[layer.name] = tuple(
                None if r is None else r.to(self.device) for r in (r_in, r_out)
            )
        return self._projections[layer.name]

    # ----- per-sample gradients of one tile -------------------------------------------------------
    def _pieces(self, x: torch.Tensor, y: torch.Tensor, state, project: bool) -> list[_Piece]:
        captured: dict[str, list] = {layer.name: [] for layer in self._layers}
        handles = [
            layer.module.register_forward_hook(
                lambda m, i, o, name=layer.name: captured[name].append((i[0].detach(), o))
            )
            for layer in self._layers
        ]
        x = x.to(self.device, self.dtype)
        y = y.to(self.device)
        try:
            with torch.enable_grad():
                loss = F.cross_entropy(self.model(x), y, reduction="sum")
                outputs = [o for layer in self._layers for _, o in captured[layer.name]]
                grads = list(torch.autograd.grad(loss, outputs, allow_unused=True)) if outputs else []
        finally:
            for h in handles:
                h.remove()
        pieces = []
        for layer in self._layers:
            calls = []
            for inp, out in captured[layer.name]:
                g = grads.pop(0)
                calls.append(self._piece(layer, inp, torch.zeros_like(out) if g is None else g, project))
            for parts in zip(*calls):  # a module called several times: its gradients add up
                if parts[0].g is not None:
                    pieces.append(_Piece(g=sum(c.g for c in parts)))
                else:
                    u, d = torch.cat([c.u for c in parts], 1), torch.cat([c.d for c in parts], 1)
                    pieces.append(_Piece(u=u, d=d))
        if self._fallback:
            pieces.append(_Piece(g=per_sample_grads(self.model, state, self._fallback, x, y)))
        return pieces

    def _piece(self, layer: _Layer, inp: torch.Tensor, gout: torch.Tensor, project: bool) -> list[_Piece]:
        """The layer's weight piece (factors or materialised) and bias piece (d summed over positions)."""
        b = inp.shape[0]
        r_in, r_out = self._projection(layer) if project else (None, None)
        if layer.kind == "bn":
            m = layer.module
            shape = (1, -1) + (1,) * (inp.dim() - 2)
            xhat = (inp - m.running_mean.view(shape)) / torch.sqrt(m.running_var.view(shape) + m.eps)
            dims = tuple(range(2, inp.dim()))
            parts = []
            if layer.weight:
                parts.append((gout * xhat).sum(dims) if dims else gout * xhat)
            if layer.bias:
                parts.append(gout.sum(dims) if dims else gout)
            g = torch.cat(parts, 1)
            return [_Piece(g=g @ r_in if r_in is not None else g)]
        d = gout.flatten(2).transpose(1, 2) if layer.kind == "conv" else gout.reshape(b, -1, gout.shape[-1])
        if r_out is not None:
            d = d @ r_out
        pieces = []
        if (
            layer.weight
            and layer.kind == "conv"
            and layer.mode == "materialise"
            and layer.positions >= 64
            and r_in is None
            and r_out is None
        ):
            # per-sample weight gradients by one grouped weight-gradient convolution (batch as groups):
            # exact, and about 2x faster than unfold + batched matmul on CPU for maps of 8x8 and more
            # (slower on small maps, where the unfold path is kept)
            m = layer.module
            c, h, w = inp.shape[1:]
            g = conv2d_weight(
                inp.reshape(1, b * c, h, w), (b * m.out_channels, c, *m.kernel_size),
                gout.reshape(1, b * m.out_channels, *gout.shape[2:]), m.stride, m.padding, m.dilation, b,
            )  # fmt: skip
            pieces.append(_Piece(g=g.reshape(b, -1)))
        elif layer.weight:
            if layer.kind == "conv":
                m = layer.module
                u = F.unfold(inp, m.kernel_size, m.dilation, m.padding, m.stride).transpose(1, 2)
            else:
                u = inp.reshape(b, -1, inp.shape[-1])
            if r_in is not None:
                u = u @ r_in
            if layer.mode == "factorise":
                pieces.append(_Piece(u=u, d=d))
            else:
                pieces.append(_Piece(g=torch.einsum("bld,blx->bdx", d, u).flatten(1)))
        if layer.bias:
            pieces.append(_Piece(g=d.sum(1)))
        return pieces

    # ----- tiling ---------------------------------------------------------------------------------
    def _bytes_per_sample(self, data: Dataset, n_test: int) -> int:
        """Working memory of one training row: activations kept for backward, factors, gradients."""
        saved = 0

        def pack(t):
            nonlocal saved
            saved += t.numel() * t.element_size()
            return t

        probe_x = data.x[:1].to(self.device, self.dtype)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = self.model(probe_x)
            F.cross_entropy(out, data.y[:1].to(self.device), reduction="sum")
        size = torch.finfo(self.dtype).bits // 8
        per = 2 * saved + size * n_test
        for layer in self._layers:
            din, dout = self._projected_dims(layer)
            per += size * layer.positions * (layer.din + layer.dout + din + dout)
            if layer.mode == "materialise":
                per += 2 * size * din * dout
        if self._fallback:
            n_params = sum(self.model.get_parameter(n).numel() for n in self._fallback)
            per += 3 * size * n_params
        return per

    def _measure_positions(self, probe_x: torch.Tensor) -> None:
        shapes: dict[str, list] = {layer.name: [] for layer in self._layers}
        handles = [
            layer.module.register_forward_hook(lambda m, i, o, name=layer.name: shapes[name].append(o.shape))
            for layer in self._layers
        ]
        try:
            with torch.no_grad():
                self.model(probe_x)
        finally:
            for h in handles:
                h.remove()
        for layer in self._layers:
            if not shapes[layer.name]:
                raise ConfigError(f"layer {layer.name!r} is not used in the forward pass")
            layer.positions = sum(
                math.prod(shape[2:]) if layer.kind in ("conv", "bn") else math.prod(shape[1:-1])
                for shape in shapes[layer.name]
            )

    def _tile_size(self, data: Dataset, n_test: int, fixed: int) -> int:
        per = self._bytes_per_sample(data, n_test)
        free = self.memory_budget - fixed
        if free < per:
            raise ConfigError(
                f"memory_budget of {self.memory_budget / 2**20:.1f} MiB is too small: one tile of one row "
                f"needs {(per + max(fixed, 0)) / 2**20:.1f} MiB; raise it or restrict the layers"
            )
        tile = free // per if self.batch_size else min(free // per, max(1, FAST_TILE_BYTES // per))
        return int(min(tile, self.batch_size or tile, len(data)))

    def _test_side(self, test: Dataset, state) -> tuple[list[_Piece], int]:
        """Per-sample gradient pieces of every test row (kept for the whole checkpoint) and their bytes."""
        pieces: list[list[_Piece]] = []
        step = self.batch_size or 256
        for start in range(0, len(test), step):
            x, y = test.x[start : start + step], test.y[start : start + step]
            pieces.append(self._pieces(x, y, state, self.projection_dim is not None))
        merged = []
        for parts in zip(*pieces):
            if parts[0].g is not None:
                merged.append(_Piece(g=torch.cat([p.g for p in parts])))
            else:
                merged.append(_Piece(u=torch.cat([p.u for p in parts]), d=torch.cat([p.d for p in parts])))
        size = sum(t.numel() * t.element_size() for p in merged for t in (p.g, p.u, p.d) if t is not None)
        return merged, size

    def _checkpoints(self) -> Iterator[tuple[float, dict[str, torch.Tensor]]]:
        for ck in self.checkpoints:
            state = {
                k: v.to(self.device, self.dtype if v.is_floating_point() else v.dtype)
                for k, v in ck.state.items()
            }
            self.model.load_state_dict(state)
            yield ck.lr, state

    def _tiles(self, data: Dataset, tile: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        for start in range(0, len(data), tile):
            yield start, data.x[start : start + tile], data.y[start : start + tile]

    # ----- public API -----------------------------------------------------------------------------
    def _check(self, where: str, train: Dataset, test: Dataset | None = None) -> None:
        """``train`` (and ``test``) are non-empty data the model fits."""
        where = f"TracInCP.{where}"
        check_dataset(train, where, "train" if test is not None else "data")
        check_model_fits(self.model, train, where, "the model", "train" if test is not None else "data")
        if test is not None:
            check_dataset(test, where, "test")
            check_same_space(train, test, where, "train", "test")

    def influence(self, train: Dataset, test: Dataset) -> torch.Tensor:
        """The (len(train), len(test)) influence matrix."""
        self._check("influence", train, test)
        out = torch.zeros(len(train), len(test), dtype=self.dtype)
        self._over_pairs(train, test, lambda start, block: out[start : start + len(block)].add_(block))
        self._check_projection(train, test, out, "influence")
        return out

    def summed_influence(self, train: Dataset, test: Dataset) -> torch.Tensor:
        """Each training row's influence summed over the test rows (Yacoubou 2024, Algorithm 1)."""
        self._check("summed_influence", train, test)
        return self.self_and_summed_influence(train, test)[1]

    def self_and_summed_influence(self, train: Dataset, test: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """Self-influence and the influence summed over ``test`` of every training row, in one pass:
        sum_j g_i . g_j = g_i . (sum_j g_j), so the test rows only contribute their summed gradient."""
        self._check("self_and_summed_influence", train, test)
        self_scores, (summed,) = self.self_and_summed_influences(train, [test])
        return self_scores, summed

    def self_and_summed_influences(
        self, train: Dataset, tests: Sequence[Dataset]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Self-influence and, for each test set, the influence summed over it, all from one pass over the
        training rows' per-sample gradients (each test set contributes one summed gradient per checkpoint)."""
        for test in tests:
            self._check("self_and_summed_influences", train, test)
        self._setup(train, 0)
        project = self.projection_dim is not None
        summed = [torch.zeros(len(train), dtype=self.dtype) for _ in tests]
        self_scores = torch.zeros(len(train), dtype=self.dtype)
        tile = None
        step = self.batch_size or 256
        for lr, state in self._checkpoints():
            all_totals = []
            for test in tests:
                totals = None
                for start in range(0, len(test), step):
                    x, y = test.x[start : start + step], test.y[start : start + step]
                    part = [_total(p) for p in self._pieces(x, y, state, project)]
                    totals = part if totals is None else [a + b for a, b in zip(totals, part)]
                all_totals.append(totals)
            fixed = sum(t.numel() * t.element_size() for totals in all_totals for t in totals)
            tile = tile or self._tile_size(train, len(tests), fixed)
            for start, x, y in self._tiles(train, tile):
                pieces = self._pieces(x, y, state, project)
                for out, totals in zip(summed, all_totals):
                    out[start : start + len(x)] += (
                        lr * sum(_dot_total(p, t) for p, t in zip(pieces, totals)).cpu()
                    )
                self_scores[start : start + len(x)] += lr * sum(_sq_norm(p) for p in pieces).cpu()
        for test, out in zip(tests, summed):
            self._check_projection(train, test, out, "summed_influence")
        return self_scores, summed

    def self_influence(self, data: Dataset) -> torch.Tensor:
        """TracInCP(z, z) for every row: sum_i eta_i ||grad l(w_i, z)||^2."""
        self._check("self_influence", data)
        self._setup(data, 1)
        project = self.projection_dim is not None
        out = torch.zeros(len(data), dtype=self.dtype)
        tile = self._tile_size(data, 0, 0)
        for lr, state in self._checkpoints():
            for start, x, y in self._tiles(data, tile):
                score = sum(_sq_norm(p) for p in self._pieces(x, y, state, project))
                out[start : start + len(x)] += lr * score.cpu()
        self._check_projection(data, None, out, "self_influence")
        return out

    def top_k(self, train: Dataset, test: Dataset, k: int = 10) -> dict[str, torch.Tensor]:
        """The k strongest proponents and opponents among ``train`` of each test row.

        Returns ``proponents``/``opponents`` (len(test), k) training indices and their
        ``proponent_scores``/``opponent_scores`` (opponents: most negative first), from the full
        influence matrix (scores sum over checkpoints, so no row can be dropped before the last one).
        """
        k = check_int(k, "TracInCP.top_k: k", minimum=1)
        self._check("top_k", train, test)
        scores = self.influence(train, test)
        k = min(k, len(train))
        pro = scores.topk(k, dim=0)
        opp = (-scores).topk(k, dim=0)
        return {
            "proponents": pro.indices.T,
            "proponent_scores": pro.values.T,
            "opponents": opp.indices.T,
            "opponent_scores": -opp.values.T,
        }

    def _over_pairs(self, train: Dataset, test: Dataset, consume) -> None:
        self._setup(train, len(test))
        project = self.projection_dim is not None
        tile = None
        for lr, state in self._checkpoints():
            test_pieces, fixed = self._test_side(test, state)
            tile = tile or self._tile_size(train, len(test), fixed)
            for start, x, y in self._tiles(train, tile):
                pieces = self._pieces(x, y, state, project)
                block = sum(_dot(p, q) for p, q in zip(pieces, test_pieces))
                consume(start, lr * block.cpu())

    def _check_projection(
        self, train: Dataset, test: Dataset | None, approx: torch.Tensor, what: str
    ) -> None:
        """Relative error of the projected scores against exact ones on a probe subset."""
        if self.projection_dim is None:
            return
        n = min(len(train), 256)
        exact_engine = TracInCP(
            self.model, self.checkpoints, layers=self.names, memory_budget=self.memory_budget,
            dtype=self.dtype, batch_size=self.batch_size,
        )  # fmt: skip
        probe = train.subset(torch.arange(n))
        if what == "influence":
            m = min(len(test), 64)
            exact = exact_engine.influence(probe, test.subset(torch.arange(m)))
            approx = approx[:n, :m]
        elif what == "summed_influence":
            exact, approx = exact_engine.summed_influence(probe, test), approx[:n]
        else:
            exact, approx = exact_engine.self_influence(probe), approx[:n]
        self.last_projection_error = float((approx - exact).norm() / exact.norm().clamp_min(1e-30))
