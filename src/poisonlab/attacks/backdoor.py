"""Dirty-label backdoors: BadNets patches (Gu et al. 2017) and blended triggers (Chen et al. 2017).

A trigger is a pattern ``p`` and a mask ``m`` (values in [0, 1]) applied as

    x' = (1 - m) * x + m * p

so a patch is a mask of ones over a small square and a blend is a constant mask ``alpha`` over the image.
All-to-one: the poisoned rows are drawn from the classes other than ``target`` and relabelled ``target``;
success is the fraction of triggered test images of the other classes classified as ``target``.
The goal's ``trigger`` holds ``stack([p, m])`` of shape (2, C, h, w) (the patch, or the whole image).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from poisonlab.attacks.base import Attack, BudgetedAttack, poison_count
from poisonlab.data import Dataset
from poisonlab.errors import ConfigError
from poisonlab.poison import AttackGoal, PoisonedDataset
from poisonlab.registry import register
from poisonlab.training import predict

MAX_PATTERN_PIXELS = 4096 * 4096  # a blend image is resized to the data's size: anything larger is refused

Corner = Literal["bottom_right", "bottom_left", "top_right", "top_left", "random"]


def patch_pattern(kind: str, size: int, channels: int, seed: int = 0) -> torch.Tensor:
    """A (C, size, size) patch: ``checkerboard`` (BadNets), ``white`` square, or seeded ``random`` bits."""
    if kind == "white":
        return torch.ones(channels, size, size)
    if kind == "checkerboard":
        grid = torch.arange(size)
        return ((grid[:, None] + grid[None, :]) % 2 == 0).float().expand(channels, size, size).clone()
    if kind == "random":
        bits = torch.rand(1, size, size, generator=torch.Generator().manual_seed(seed)) < 0.5
        return bits.float().expand(channels, size, size).clone()
    raise ConfigError(f"unknown patch pattern {kind!r}; known: checkerboard, white, random")


def blend_pattern(kind: str, shape: tuple[int, int, int], seed: int = 0, image_path: str | None = None):
    """A full-size (C, H, W) pattern: seeded uniform ``noise`` (Chen 2017), ``stripes``, or an image file."""
    c, h, w = shape
    if kind == "noise":
        return torch.rand(c, h, w, generator=torch.Generator().manual_seed(seed))
    if kind == "stripes":
        return (torch.arange(w) % 4 < 2).float().expand(c, h, w).clone()
    if kind == "checkerboard":
        return patch_pattern("checkerboard", max(h, w), c)[:, :h, :w].clone()
    if kind == "image":
        if not image_path:
            raise ConfigError("blend: pattern 'image' needs image_path")
        from PIL import Image

        from poisonlab.data import open_image  # the one way images are read: size cap, one-line DataError

        with open_image(image_path, "blend image", MAX_PATTERN_PIXELS) as img:
            img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
        t = torch.from_numpy(arr)
        return (t[None] if c == 1 else t.permute(2, 0, 1)).contiguous()
    raise ConfigError(f"unknown blend pattern {kind!r}; known: noise, stripes, checkerboard, image")


def corner_offset(position: str, size: int, height: int, width: int, margin: int) -> tuple[int, int]:
    """(top, left) of a ``size`` patch placed in a corner ``margin`` pixels from the edges."""
    top = margin if position.startswith("top") else height - size - margin
    left = margin if position.endswith("left") else width - size - margin
    if top < 0 or left < 0:
        raise ConfigError(f"a {size}px patch with margin {margin} does not fit a {height}x{width} image")
    return top, left


def stamp(x: torch.Tensor, trigger: torch.Tensor, top, left) -> torch.Tensor:
    """x' = (1 - m) x + m p with ``trigger = stack([p, m])`` (2, C, h, w) placed at ``top``/``left``.

    ``top`` and ``left`` are ints (one place for all) or (N,) int tensors (one place per image); batched.
    """
    pattern, mask = trigger[0].to(x), trigger[1].to(x)
    n, _, height, width = x.shape
    h, w = pattern.shape[-2:]
    if (h, w) == (height, width):
        return (1 - mask) * x + mask * pattern
    out = x.clone()
    if isinstance(top, int) and isinstance(left, int):
        region = out[:, :, top : top + h, left : left + w]
        out[:, :, top : top + h, left : left + w] = (1 - mask) * region + mask * pattern
        return out
    rows = (top.to(x.device)[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (left.to(x.device)[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    region = out[batch, chan, rows, cols]
    out[batch, chan, rows, cols] = (1 - mask) * region + mask * pattern
    return out


class BackdoorAttack(Attack):
    """Base of the trigger attacks: applies the goal's trigger and measures success on triggered test rows."""

    target: int = Field(0, ge=0, description="the class every triggered input should be classified as")

    triggers_inputs: ClassVar[bool] = True
    success_key: ClassVar[str | None] = "success_rate"

    def _trigger(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """stack([pattern, mask]) for images of ``shape``."""
        raise NotImplementedError

    def _place(self, n: int, shape, generator: torch.Generator | None):
        """(top, left) of the trigger for ``n`` images: ints, or per-image tensors for random places."""
        return 0, 0

    def apply_trigger(
        self, x: torch.Tensor, goal: AttackGoal, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The images ``x`` with the goal's trigger stamped (random places drawn from ``generator``)."""
        trigger = goal.trigger if goal.trigger is not None else self._trigger(tuple(x.shape[1:]))
        top, left = self._place(len(x), tuple(x.shape[1:]), generator or torch.Generator().manual_seed(0))
        return stamp(x, trigger, top, left).clamp_(0, 1)

    def source_mask(self, y: torch.Tensor) -> torch.Tensor:
        """Rows whose triggered version counts toward success: every class but the target."""
        return y != self.target

    def triggered(self, data: Dataset, goal: AttackGoal, *, relabel: bool = False) -> Dataset:
        """The rows of ``data`` from the attacked classes with the trigger; labels kept unless ``relabel``."""
        rows = self.source_mask(data.y).nonzero().flatten()
        x = self.apply_trigger(data.x[rows], goal)
        y = torch.full_like(data.y[rows], self.target) if relabel else data.y[rows].clone()
        return Dataset(x, y, data.classes, data.name)

    def report_record(self, poisoned: PoisonedDataset, goal_index: int, test: Dataset, count: int = 6):
        """The trigger, a few poisoned rows with their originals and a few triggered test images."""
        goal = poisoned.goals[goal_index]
        if goal.trigger is None:
            return None
        rows = poisoned.mask_of(goal_index).nonzero().flatten()[:count]
        originals = poisoned.originals(rows)
        classes = poisoned.data.classes
        captions = [
            f"#{int(i)} given {classes[poisoned.data.y[i]]} / orig {classes[int(y)]}"
            for i, y in zip(rows, originals.y)
        ]
        trig = self.triggered(test.subset(torch.arange(min(len(test), 200))), goal)
        return {
            "trigger": goal.trigger.numpy(),
            "poisons": poisoned.data.x[rows].numpy(),
            "originals": originals.x.numpy(),
            "captions": captions,
            "triggered": trig.x[:count].numpy(),
            "triggered_captions": [f"test {classes[c]} + trigger" for c in trig.y[:count].tolist()],
        }

    def figures(self, ident: str, record: dict) -> dict[str, bytes]:
        from poisonlab.report import trigger_png

        return {
            f"Backdoor {ident}: trigger and triggered examples": trigger_png(
                record["trigger"],
                record["poisons"],
                record["captions"],
                record["triggered"],
                record["triggered_captions"],
                record.get("originals"),
            )
        }

    def evaluate(self, model: nn.Module, test: Dataset, goal: AttackGoal) -> dict[str, float]:
        """success_rate: triggered test images of the attacked classes classified as `target`."""
        trig = self.triggered(test, goal)
        if len(trig) == 0:
            return {}
        pred = predict(model, trig.x).argmax(1)
        return {
            "success_rate": (pred == self.target).float().mean().item(),
            "triggered_accuracy": (pred == trig.y).float().mean().item(),
        }

    def _check_target(self, train: Dataset) -> None:
        if self.target >= train.num_classes:
            raise ConfigError(f"{self.name}: target class {self.target} is not in {train.name or 'the data'}")


class PatchTrigger:
    """A square patch trigger (fields patch_size, pattern, pattern_seed, position and optionally margin)
    shared by BadNets and Sleeper Agent."""

    def _trigger(self, shape) -> torch.Tensor:
        c, h, w = shape
        if self.patch_size > min(h, w):
            raise ConfigError(f"{self.name}: patch_size {self.patch_size} is larger than the {h}x{w} images")
        p = patch_pattern(self.pattern, self.patch_size, c, self.pattern_seed)
        return torch.stack([p, torch.ones_like(p)])

    def _place(self, n, shape, generator):
        _, h, w = shape
        s = self.patch_size
        if self.position == "random":
            top = torch.randint(0, h - s + 1, (n,), generator=generator)
            return top, torch.randint(0, w - s + 1, (n,), generator=generator)
        if isinstance(self.position, str):
            margin = getattr(self, "margin", 0)
            if s + margin > min(h, w):
                raise ConfigError(
                    f"{self.name}: a {s}px patch with margin {margin} does not fit {h}x{w} images"
                )
            return corner_offset(self.position, s, h, w, margin)
        top, left = (int(v) for v in self.position)
        if not (0 <= top <= h - s and 0 <= left <= w - s):
            raise ConfigError(
                f"{self.name}: a {s}px patch at {list(self.position)} does not fit {h}x{w} images"
            )
        return top, left


class _DirtyLabel(BackdoorAttack, BudgetedAttack):
    """Without fraction or count, 10% of the whole training set is poisoned (``default_fraction``): the
    setting of Kashyap & Maheshwari 2024 and BackdoorBench's default poisoning ratio."""

    fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="poisoned share of the whole training set, drawn from other classes (0.1 if no count)",
    )

    default_fraction: ClassVar[float] = 0.1

    def check_data(self, train: Dataset, test: Dataset | None = None) -> None:
        self._count(train)
        self._trigger(train.input_shape)
        self._place(1, train.input_shape, torch.Generator().manual_seed(0))

    def _count(self, train: Dataset) -> tuple[torch.Tensor, int]:
        """(the rows of the other classes, how many to poison), checked against the data."""
        self._check_target(train)
        eligible = self.source_mask(train.y).nonzero().flatten()
        n = self.count if self.count is not None else round(self.budget_fraction * len(train))
        if n < 1:
            raise ConfigError(
                f"{self.name}: fraction {self.budget_fraction} of {len(train)} rows selects no row"
            )
        n = poison_count(len(eligible), None, n, f"{self.name} on the classes other than {self.target}")
        return eligible, n

    def _craft(self, train: Dataset, *, generator: torch.Generator, victim=None, test=None):
        eligible, n = self._count(train)
        idx = eligible[torch.randperm(len(eligible), generator=generator)[:n]].sort().values
        trigger = self._trigger(train.input_shape)
        goal = AttackGoal(self.name, self.model_dump(), adversarial_label=self.target, trigger=trigger)
        released = train.replace_rows(idx, self.apply_trigger(train.x[idx], goal, generator), self.target)
        return PoisonedDataset.from_rows(train, released, idx, goal)


@register("attack", "badnets")
class BadNets(PatchTrigger, _DirtyLabel):
    """BadNets (Gu 2017): stamp a patch on some rows of other classes and relabel them `target`."""

    patch_size: int = Field(3, ge=1, description="side of the square patch in pixels")
    position: Corner | tuple[int, int] = Field(
        "bottom_right", description="a corner, 'random' (per image), or [top, left] in pixels"
    )
    margin: int = Field(1, ge=0, description="pixels between the patch and the corner's edges")
    pattern: Literal["checkerboard", "white", "random"] = Field("checkerboard", description="patch content")
    pattern_seed: int = Field(0, ge=0, description="seed of the 'random' pattern")


@register("attack", "blend")
class Blend(_DirtyLabel):
    """Blended trigger (Chen 2017): x' = (1 - alpha) x + alpha * pattern on some rows, relabelled `target`."""

    alpha: float = Field(0.2, gt=0, le=1, description="blend weight of the pattern")
    pattern: Literal["noise", "stripes", "checkerboard", "image"] = Field(
        "noise", description="seeded uniform noise, vertical stripes, a checkerboard, or image_path"
    )
    image_path: str | None = Field(None, description="image file blended in when pattern is 'image'")
    pattern_seed: int = Field(0, ge=0, description="seed of the noise pattern")

    @model_validator(mode="after")
    def _image(self):
        if self.pattern == "image" and not self.image_path:
            raise ValueError("pattern 'image' needs image_path")
        return self

    def _trigger(self, shape) -> torch.Tensor:
        p = blend_pattern(self.pattern, shape, self.pattern_seed, self.image_path)
        return torch.stack([p, torch.full_like(p, self.alpha)])
