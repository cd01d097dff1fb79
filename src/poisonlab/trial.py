"""One trial of an experiment: a :class:`Trial` record carried through short stages.

prepare (the transfer setting's frozen extractor) -> craft -> train (the victim and its clean twin) ->
evaluate the attacks -> train the defended victims (training-time defenses) -> detect -> record examples ->
defend -> purify. Each stage reads and writes the trial instead of a dozen arguments. Methods are built once
per trial from the validated config, and each contributes its own report records and figures through two
hooks (``Attack.report_record`` and ``Method.figures``), so no stage names a method family. One ``seed``
fixes every random choice: trial ``t`` uses ``seed + t`` for its models and data, and each method draws from
its own stream derived from that seed, its role and its id (:func:`method_seed`), so adding or reordering a
method never shifts another's draws.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from poisonlab.data import Dataset
from poisonlab.errors import ConfigError
from poisonlab.metrics import detection_metrics, mad_threshold
from poisonlab.models import build_model
from poisonlab.poison import PoisonedDataset
from poisonlab.registry import Method
from poisonlab.training import TrainHook, TrainRun, accuracy, predict, train, train_head

if TYPE_CHECKING:
    from poisonlab.experiment import ExperimentConfig


def method_seed(seed: int, role: str, ident: str) -> int:
    """The seed of one method's random stream in a trial: a hash of (trial seed, role, id) below 2^63."""
    digest = hashlib.sha256(f"{seed}/{role}/{ident}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


PER_ATTACK_DETECTION = ("auroc", "recall", "recall_at_1pct", "recall_at_5pct", "recall_at_budget")


@dataclass
class Methods:
    """Every configured method as (id, built method), built once from the validated config."""

    attacks: list[tuple[str, Any]]
    detectors: list[tuple[str, Any]]
    input_detectors: list[tuple[str, Any]]
    defenses: list[tuple[str, Any]]
    training_defenses: list[tuple[str, Any]]
    reference: Any
    purifiers: list[tuple[str, Any]]

    @classmethod
    def build(cls, config: ExperimentConfig) -> Methods:
        return cls(
            config.build_attacks(), config.build_detectors(), config.build_input_detectors(),
            config.build_defenses(), config.build_training_defenses(), config.build_reference(),
            config.build_purifiers(),
        )  # fmt: skip


@dataclass
class TrialArtifacts:
    """What one trial leaves for the report: the poisoned set, the detection run, the scores, and each
    method's records (``figure_sources``: (method, id, record), rendered by ``Method.figures``)."""

    poisoned: PoisonedDataset
    goal_ids: list[str]
    run: TrainRun  # the model the detectors read (detect_with)
    history: list[dict] = field(default_factory=list)  # the victim's training history
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    defenses: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-step tables (results.json)
    purification: dict[str, dict[str, Any]] = field(default_factory=dict)  # examples, critic values
    figure_sources: list[tuple[Method, str, dict[str, Any]]] = field(default_factory=list)

    def figures(self) -> dict[str, bytes]:
        """Every method's report figures (title -> PNG), in the order the stages ran."""
        out: dict[str, bytes] = {}
        for method, ident, record in self.figure_sources:
            out.update(method.figures(ident, record))
        return out


@dataclass
class Trial:
    """The state of one trial as it moves through the stages."""

    config: ExperimentConfig
    index: int
    train_set: Dataset
    test_set: Dataset
    holdout: Dataset | None = None
    progress: bool = False
    methods: Methods = None  # type: ignore[assignment]  # built in __post_init__
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    extractor: nn.Module | None = None  # transfer: the frozen clean model whose head the victim retrains
    poisoned: PoisonedDataset | None = None
    goal_ids: list[str] = field(default_factory=list)
    eval_set: Dataset | None = None  # the test set without targeted attacks' targets
    victim: TrainRun | None = None
    twin: TrainRun | None = None  # trained identically on the clean rows, for net effects
    twin_outcomes: dict[str, dict[str, float]] = field(default_factory=dict)
    run: TrainRun | None = None  # the model the detectors and the reference selection read
    artifacts: TrialArtifacts | None = None

    def __post_init__(self):
        self.seed = self.config.seed + self.index
        self._clean_twin: TrainRun | None = None
        if self.methods is None:
            self.methods = Methods.build(self.config)

    def stream(self, role: str, ident: str) -> torch.Generator:
        """A fresh generator on the method's own stream (:func:`method_seed`)."""
        return torch.Generator().manual_seed(method_seed(self.seed, role, ident))

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.timings[key] = time.perf_counter() - t0

    def clean_twin(self) -> TrainRun:
        """The model the victim would be without poisons (the clean rows, the same seed and schedule),
        trained once per trial: the twin of net effects and a white-box attack's clean model."""
        if self._clean_twin is None:
            with self.timed("train_twin"):
                self._clean_twin = self.fit(self.train_set, f"trial {self.index + 1}: twin without poisons")
        return self._clean_twin

    def fit(
        self, data: Dataset, desc: str = "", hook: TrainHook | None = None, epochs: int | None = None
    ) -> TrainRun:
        """Train a model as the victim is trained (its head only, in the transfer setting); a training-time
        defense's ``hook`` chooses the rows of each epoch and transforms the batches, and ``epochs`` cuts
        the schedule short (its first epochs, the milestones within them)."""
        config, seed = self.config, self.seed
        schedule = config.head_train or config.train if self.extractor is not None else config.train
        if epochs is not None and epochs < schedule.epochs:
            kept = tuple(m for m in schedule.milestones if m <= epochs)
            schedule = schedule.model_copy(update={"epochs": epochs, "milestones": kept})
        if self.extractor is not None:
            return train_head(
                self.extractor, data, schedule, seed=seed, eval_data=self.test_set, progress=self.progress,
                desc=desc, hook=hook,
            )  # fmt: skip
        model = build_model(config.model, data.input_shape, data.num_classes, seed=seed)
        return train(
            model, data, schedule, seed=seed, eval_data=self.test_set, progress=self.progress, desc=desc,
            hook=hook,
        )  # fmt: skip

    def evaluate_attacks(self, prefix: str, model: nn.Module) -> None:
        """Each attack's metrics on ``model`` under ``prefix.<id>.``, with ``twin_<key>`` (the same target or
        trigger on the twin) and, for the success keys, ``net_<key>`` (model minus twin)."""
        for (ident, attack), goal in zip(self.methods.attacks, self.poisoned.goals):
            values = attack.evaluate(model, self.test_set, goal)
            for key, value in values.items():
                self.metrics[f"{prefix}.{ident}.{key}"] = value
            if self.twin is None:
                continue
            base = self.twin_outcomes.get(ident)
            if base is None:
                base = self.twin_outcomes[ident] = attack.evaluate(self.twin.model, self.test_set, goal)
            for key, value in base.items():
                if prefix == "attack":  # once; the purifiers' net values subtract the same numbers
                    self.metrics[f"{prefix}.{ident}.twin_{key}"] = value
                if key == attack.success_key and key in values:
                    self.metrics[f"{prefix}.{ident}.net_{key}"] = values[key] - value

    def first_trigger_attack(self):
        """(attack, goal) of the config's first attack that stamps a trigger on inputs, or (None, None)."""
        for (_, attack), goal in zip(self.methods.attacks, self.poisoned.goals):
            if attack.triggers_inputs:
                return attack, goal
        return None, None


def without_targets(test_set: Dataset, goals) -> Dataset:
    """The test set without the targets of targeted attacks (Huang 2023: accuracy excludes the target)."""
    rows = sorted({g.target_index for g in goals if g.target_index is not None})
    if not rows:
        return test_set
    keep = torch.ones(len(test_set), dtype=torch.bool)
    keep[rows] = False
    return test_set.subset(keep)


# ------------------------------------------------------------------------------------------- stages


def prepare(t: Trial) -> None:
    """Transfer setting: the clean pretrained model, frozen but for its head."""
    if t.config.detect_with == "holdout" and t.holdout is None:
        raise ConfigError("detect_with: holdout needs the held-out rows (data.holdout_size)")
    if t.config.setting != "transfer":
        return
    with t.timed("train_extractor"):
        model = build_model(t.config.model, t.train_set.input_shape, t.train_set.num_classes, seed=t.seed)
        t.extractor = train(
            model, t.train_set, t.config.train, seed=t.seed, progress=t.progress, desc="extractor"
        ).model
        for name, p in t.extractor.named_parameters():
            p.requires_grad_(name.startswith("head."))


def craft(t: Trial) -> None:
    """Every attack in turn on the released set so far; poison counts and perturbation sizes. A white-box
    attack whose clean model matches the experiment's (``Attack.clean_model_spec``) gets the clean twin."""
    first = t.methods.attacks[0][1].clean_model_spec() if t.methods.attacks else None
    if t.extractor is None and first == (t.config.model, t.config.train):
        t.clean_twin()  # before the attack's clock starts
    with t.timed("attack"):
        train_set = t.train_set
        empty = torch.zeros(0, dtype=torch.int64)
        poisoned = PoisonedDataset(train_set, empty, train_set.subset([]), (), empty.clone())
        for ident, attack in t.methods.attacks:
            victim = t.extractor
            spec = attack.clean_model_spec()
            if victim is None and not len(poisoned.poison_idx) and spec == (t.config.model, t.config.train):
                victim = t.clean_twin().model  # white-box: the model the victim would train without poisons
            crafted = attack.craft(
                poisoned.data, generator=t.stream("attack", ident), victim=victim, test=t.test_set
            )
            poisoned = poisoned.then(crafted)
    t.poisoned, t.goal_ids = poisoned, [ident for ident, _ in t.methods.attacks]
    t.eval_set = without_targets(t.test_set, poisoned.goals)
    m = t.metrics
    if t.extractor is not None:
        m["extractor.clean_accuracy"] = accuracy(t.extractor, t.eval_set)
    m["attack.poison_count"] = float(len(poisoned.poison_idx))
    m["attack.poison_fraction"] = len(poisoned.poison_idx) / len(train_set)
    for gi, (ident, attack) in enumerate(t.methods.attacks):
        m[f"attack.{ident}.poison_count"] = float(poisoned.mask_of(gi).sum())
        for key, value in attack.craft_metrics(poisoned.goals[gi]).items():
            m[f"attack.{ident}.{key}"] = value
        linf, l2 = poisoned.perturbation(gi)
        if len(linf):  # measured from the clean originals
            m[f"attack.{ident}.perturbation_linf"] = float(linf.max())
            m[f"attack.{ident}.perturbation_l2"] = float(l2.mean())


def train_models(t: Trial) -> None:
    """The victim on the released rows and, for net effects, its twin on the clean rows."""
    m = t.metrics
    trainer = next((a for _, a in t.methods.attacks if a.trains_victim), None)
    with t.timed("train_victim"):
        if trainer is None:
            recorders = [
                d.recorder(len(t.poisoned.data)) for _, d in t.methods.detectors if d.records_training
            ]
            hook = recorders[0] if recorders else None  # one recorded training serves every such detector
            t.victim = t.fit(t.poisoned.data, f"trial {t.index + 1}: victim", hook=hook)
        else:  # outsourced training: the attacker's procedure, from the clean model
            clean = t.clean_twin().model
            t.victim = trainer.train_victim(
                t.poisoned.data, t.train_set.x, clean, t.config.train, seed=t.seed
            )
    m["victim.clean_accuracy"] = accuracy(t.victim.model, t.eval_set)
    m["victim.train_accuracy_released"] = accuracy(t.victim.model, t.poisoned.data)
    if t.config.baseline or t.config.detect_with == "oracle_clean":
        t.twin = t.clean_twin()  # poisoned.clean_data() holds the rows of train_set, in its order
        m["twin.clean_accuracy"] = accuracy(t.twin.model, t.eval_set)
        m["attack.accuracy_drop"] = m["twin.clean_accuracy"] - m["victim.clean_accuracy"]
    t.evaluate_attacks("attack", t.victim.model)


def train_defended(t: Trial) -> None:
    """Each training-time defense trains a defended victim on the released rows: its accuracy, every
    attack's success on it (net of the twin) and the rows it removed, scored against the poison mask."""
    poisoned, m = t.poisoned, t.metrics
    is_poison = poisoned.is_poisoned
    for ident, defense in t.methods.training_defenses:
        prefix = f"training_defense.{ident}"

        def fit(data: Dataset, hook=None, desc: str = "", epochs=None, _id: str = ident) -> TrainRun:
            return t.fit(data, f"trial {t.index + 1}: {_id} {desc}".rstrip(), hook=hook, epochs=epochs)

        with t.timed(prefix):
            truth = is_poison if defense.oracle() else None  # an evaluation-only oracle, marked as such
            out = defense.train(
                poisoned.data,
                fit,
                victim=t.victim,
                generator=t.stream("training_defense", ident),
                truth=truth,
            )
        m[f"{prefix}.clean_accuracy"] = accuracy(out.run.model, t.eval_set)
        m[f"{prefix}.accuracy_drop"] = m["victim.clean_accuracy"] - m[f"{prefix}.clean_accuracy"]
        m.update(
            _set_scores(
                prefix, ("removed_fraction", "removal_precision", "removal_recall"), out.removed, is_poison
            )
        )
        if out.weights is not None:  # a reweighting defense: the poisons' mean weight against the clean rows'
            m[f"{prefix}.poison_weight"] = (
                float(out.weights[is_poison].mean()) if is_poison.any() else math.nan
            )
            m[f"{prefix}.clean_weight"] = float(out.weights[~is_poison].mean())
            keys = ("downweighted_fraction", "downweighting_precision", "downweighting_recall")
            m.update(_set_scores(prefix, keys, out.weights < 0.5, is_poison))
        t.evaluate_attacks(prefix, out.run.model)
        record = {"name": defense.name, "history": out.run.history, **out.info}
        t.artifacts.figure_sources.append((defense, ident, record))


def _set_scores(
    prefix: str, keys: tuple[str, str, str], rows: torch.Tensor, is_poison: torch.Tensor
) -> dict[str, float]:
    """A set of rows a defense singled out, against the poison mask (evaluation only), under ``keys``: its
    share of all rows, the poisons among them (precision) and the poisons it holds (recall)."""
    share, precision, recall = (f"{prefix}.{k}" for k in keys)
    out = {
        share: float(rows.float().mean()),
        precision: float(is_poison[rows].float().mean()) if rows.any() else math.nan,
    }
    if is_poison.any():
        out[recall] = float(rows[is_poison].float().mean())
    return out


def detection_model(t: Trial) -> None:
    """The model whose checkpoints and features the detectors read (``detect_with``)."""
    with t.timed("detection_model"):
        how = t.config.detect_with
        if how == "victim":
            t.run = t.victim
        elif how == "oracle_clean":
            t.run = t.twin
        elif how == "holdout":
            t.run = t.fit(t.holdout, "holdout model")
        else:
            from poisonlab.purification.base import load_weights
            from poisonlab.training import Checkpoint

            data = t.poisoned.data
            model = build_model(t.config.model, data.input_shape, data.num_classes, seed=t.seed)
            model = load_weights(model, t.config.detect_weights, "detect_weights").eval()
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            t.run = TrainRun(model, [Checkpoint(epoch=0, lr=1.0, state=state)])  # one checkpoint, unit step
    t.artifacts = TrialArtifacts(t.poisoned, t.goal_ids, t.run, history=t.victim.history)


def detect(t: Trial) -> None:
    """Every detector's scores of the released rows, scored against the truth (and per attack)."""
    poisoned, art = t.poisoned, t.artifacts
    is_poison = poisoned.is_poisoned.numpy()
    for ident, detector in t.methods.detectors:  # announced first: shared passes serve every detector
        detector.plan(poisoned.data, t.run, test=t.test_set, generator=t.stream("detector", ident))
    for ident, detector in t.methods.detectors:
        with t.timed(f"detect.{ident}"):
            scores = detector.scores(
                poisoned.data, t.run, test=t.test_set, generator=t.stream("detector", ident)
            )
        scores = np.asarray(scores, dtype=np.float64)
        k = t.config.threshold_k
        thr = mad_threshold(scores, k) if t.config.threshold == "mad" else float(t.config.threshold)
        art.scores[ident], art.thresholds[ident] = scores, thr
        for key, value in detection_metrics(scores, is_poison, thr).items():
            t.metrics[f"detection.{ident}.{key}"] = value
        if len(poisoned.goals) > 1:  # each attack's poisons against the clean rows
            for gi, gid in enumerate(t.goal_ids):
                keep = ~is_poison | poisoned.mask_of(gi).numpy()
                per_attack = detection_metrics(scores[keep], is_poison[keep], thr)
                for key in PER_ATTACK_DETECTION:
                    if key in per_attack:
                        t.metrics[f"detection.{ident}.{gid}.{key}"] = per_attack[key]


def detector_agreement(t: Trial) -> None:
    """Spearman rank correlation of every pair of detectors' scores: ``detection.<a>.spearman_<b>``."""
    from scipy.stats import spearmanr

    ids = list(t.artifacts.scores)
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            rho = spearmanr(t.artifacts.scores[a], t.artifacts.scores[b]).statistic
            t.metrics[f"detection.{a}.spearman_{b}"] = float(rho)


def attack_examples(t: Trial) -> None:
    """Each attack's own record for the report (trigger, target and poisons, ...)."""
    for gi, (ident, attack) in enumerate(t.methods.attacks):
        record = attack.report_record(t.poisoned, gi, t.test_set)
        if record is not None:
            t.artifacts.figure_sources.append((attack, ident, record))


def defend(t: Trial) -> None:
    """Input detectors and model defenses on the victim, with a seeded defender's share of the test set,
    against the first attack that triggers inputs. ``defense.<id>.net_attack_success`` is the repaired
    model's success minus the twin's on the same rows."""
    config, methods, m = t.config, t.methods, t.metrics
    if not methods.defenses and not methods.input_detectors:
        return
    test_set = t.eval_set
    if len(test_set) < 4:
        raise ConfigError(f"defenses need a test set of at least 4 rows, got {len(test_set)}")
    perm = torch.randperm(len(test_set), generator=torch.Generator().manual_seed(t.seed))
    n_def = min(len(test_set) - 2, max(2, round(config.defender_fraction * len(test_set))))
    defender, held = test_set.subset(perm[:n_def]), test_set.subset(perm[n_def:])
    attack, goal = t.first_trigger_attack()
    trig_held = attack.triggered(held, goal).x if attack is not None else held.x[:0]
    for ident, detector in methods.input_detectors:
        with t.timed(f"input_detect.{ident}"):
            values, entropies = detector.evaluate(
                t.victim.model, defender, trig_held, t.stream("input_detector", ident)
            )
        for key, value in values.items():
            m[f"{ident}.{key}"] = value
        t.artifacts.figure_sources.append((detector, ident, {**values, **entropies}))
    on_victim: dict = {}  # each input detector's accept decisions with the victim: one for every defense
    for ident, defense in methods.defenses:
        with t.timed(f"defense.{ident}"):
            target = attack.target if attack is not None else None
            trig_def = attack.triggered(defender, goal).x if attack is not None else None
            seed = method_seed(t.seed, "defense", ident)
            repair = defense.repair(t.victim.model, defender, triggered=trig_def, target=target, seed=seed)
        prefix = f"defense.{ident}"
        for when, model in (("_before", t.victim.model), ("", repair.model)):
            m[f"{prefix}.clean_accuracy{when}"] = accuracy(model, held)
            if attack is not None:
                m[f"{prefix}.attack_success{when}"] = attack.evaluate(model, held, goal).get(
                    attack.success_key, float("nan")
                )
        m[f"{prefix}.accuracy_drop"] = m[f"{prefix}.clean_accuracy_before"] - m[f"{prefix}.clean_accuracy"]
        if attack is not None and t.twin is not None:
            on_twin = attack.evaluate(t.twin.model, held, goal).get(attack.success_key, float("nan"))
            m[f"{prefix}.twin_attack_success"] = on_twin
            m[f"{prefix}.net_attack_success"] = m[f"{prefix}.attack_success"] - on_twin
        kept = repair.steps[repair.info.get("kept_step", len(repair.steps) - 1)] if repair.steps else {}
        if "pruned_fraction" in kept:
            m[f"{prefix}.pruned_fraction"] = kept["pruned_fraction"]
        m[f"{prefix}.steps"] = float(max(0, len(repair.steps) - 1))
        if attack is not None and attack.target is not None and len(trig_held):
            guarded(t, ident, repair.model, defender, held, trig_held, attack.target, on_victim)
        record = {"name": defense.name, "steps": repair.steps, **repair.info}
        t.artifacts.defenses[ident] = record
        t.artifacts.figure_sources.append((defense, ident, record))


def guarded(
    t: Trial, ident: str, repaired: nn.Module, defender, held, trig_held, target: int, on_victim: dict
) -> None:
    """Each input detector in front of the repaired model (Kashyap & Maheshwari 2024's goal: STRIP, then the
    fine-pruned model): a rejected input gets no prediction. Keys ``defense.<id>.<measure>_with_<detector>``:
    ``guard_frr`` and ``guard_far`` of the guard, ``clean_accuracy`` (held-out clean rows accepted and
    classified correctly), ``attack_success`` (triggered rows accepted and classified as the target) and
    ``net_attack_success`` (minus the twin's unguarded success on the same rows); with the suffix
    ``_on_victim`` their code's variant: the guard reads the unrepaired victim (its decisions, kept in
    ``on_victim``, serve every defense), the repaired model classifies."""
    y_clean = predict(repaired, held.x).argmax(1)
    y_trig = predict(repaired, trig_held).argmax(1)
    twin = None
    if t.twin is not None:
        twin = (predict(t.twin.model, trig_held).argmax(1) == target).float().mean().item()
    m = t.metrics
    for det_id, detector in t.methods.input_detectors:
        inputs = [held.x, trig_held]
        mine = detector.screen(repaired, defender, inputs, t.stream("input_detector", f"{det_id}.{ident}"))
        if det_id not in on_victim:
            stream = t.stream("input_detector", f"{det_id}.victim")
            on_victim[det_id] = detector.screen(t.victim.model, defender, inputs, stream)
        for suffix, decisions in (
            (f"_with_{det_id}", mine),
            (f"_with_{det_id}_on_victim", on_victim[det_id]),
        ):
            ok_clean, ok_trig = (torch.as_tensor(ok) for ok in decisions)
            success = (ok_trig & (y_trig == target)).float().mean().item()
            m[f"defense.{ident}.guard_frr{suffix}"] = 1.0 - ok_clean.float().mean().item()
            m[f"defense.{ident}.guard_far{suffix}"] = ok_trig.float().mean().item()
            m[f"defense.{ident}.clean_accuracy{suffix}"] = (
                (ok_clean & (y_clean == held.y)).float().mean().item()
            )
            m[f"defense.{ident}.attack_success{suffix}"] = success
            if twin is not None:
                m[f"defense.{ident}.net_attack_success{suffix}"] = success - twin


def purify(t: Trial) -> None:
    """Mendata (Huang 2023): select a reference set, purify the rest with each purifier, retrain, measure.

    The reference detector reads the detection model's features (k-NN detectors) or, for the simulated
    oracle, the true poison mask. Each purifier gets the victim as its model and, when it accepts one
    (``Purifier.accepts_victim_extractor``), as its feature extractor. Metrics: ``purification.reference.*``
    (size, poisons, precision, recall), ``purification.<id>.clean_accuracy`` and
    ``purification.<id>.<attack id>.<key>`` (e.g. ``success_rate``).
    """
    from poisonlab.purification import reference_quality, select_reference

    if not t.methods.purifiers:
        return
    poisoned, m = t.poisoned, t.metrics
    with t.timed("purify.reference"):
        ref = select_reference(
            t.methods.reference, poisoned.data, run=t.run, is_poisoned=poisoned.is_poisoned,
            test=t.test_set, generator=t.stream("reference", "reference"),
        )  # fmt: skip
    for key, value in reference_quality(ref, poisoned.is_poisoned).items():
        m[f"purification.reference.{key}"] = value
    untrusted = (~ref).nonzero().flatten()
    flagged = poisoned.is_poisoned[untrusted]
    shown = torch.cat([untrusted[flagged], untrusted[~flagged]])[:6]  # poisoned untrusted rows first
    classes = poisoned.data.classes
    for ident, purifier in t.methods.purifiers:
        with t.timed(f"purify.{ident}"):
            extractor = t.victim.model if purifier.accepts_victim_extractor() else None
            out = purifier.purify(
                poisoned.data, ref, generator=t.stream("purifier", ident), model=t.victim.model,
                extractor=extractor,
            )  # fmt: skip
        with t.timed(f"purify.{ident}.retrain"):
            model = t.fit(out.data, f"purified: {ident}").model
        m[f"purification.{ident}.clean_accuracy"] = accuracy(model, t.eval_set)
        m[f"purification.{ident}.rows"] = float(len(out.data))
        t.evaluate_attacks(f"purification.{ident}", model)
        where = {int(r): i for i, r in enumerate(out.kept.tolist())}
        rows = [int(r) for r in shown if int(r) in where]
        record = {
            "name": purifier.name,
            "before": poisoned.data.x[rows].numpy(),
            "after": out.data.x[[where[r] for r in rows]].numpy() if rows else None,
            "captions": [
                f"#{r} {classes[poisoned.data.y[r]]}" + (" (poison)" if poisoned.is_poisoned[r] else "")
                for r in rows
            ],
            "critic_values": out.info.get("critic_values"),
        }
        t.artifacts.purification[ident] = record
        t.artifacts.figure_sources.append((purifier, ident, record))


STAGES = (
    prepare,
    craft,
    train_models,
    detection_model,
    train_defended,
    detect,
    detector_agreement,
    attack_examples,
    defend,
    purify,
)


def run_trial(
    config: ExperimentConfig, train_set, test_set, trial: int, *, holdout=None, progress: bool = False
) -> tuple[dict[str, float], dict[str, float], TrialArtifacts]:
    """One trial through every stage; (metrics, timings, artifacts). Accuracies are measured on the test
    set without the targets of targeted attacks; attack metrics come with the twin's and the net values."""
    t = Trial(config, trial, train_set, test_set, holdout=holdout, progress=progress)
    for stage in STAGES:
        stage(t)
    return t.metrics, t.timings, t.artifacts
