"""The package's shape: no import cycles, and a runner that names no method family."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import ClassVar

import pytest
import torch

import poisonlab
from poisonlab.registry import methods

SRC = Path(poisonlab.__file__).parent
KIND_BASES = {"Method", "Attack", "Detector", "InputDetector", "Defense", "Purifier"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node except the bodies of ``if TYPE_CHECKING:`` blocks (imports for annotations only)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports at run time (top level or inside functions); importing
    ``a.b.c`` also imports the packages ``a.b`` (their ``__init__``), except the importer's own parents."""
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")[: len(name.split(".")) - node.level + is_package]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                found = [module] + [f"{module}.{a.name}" for a in node.names]
            else:
                continue
            for target in found:
                parts = target.split(".")
                for k in range(2, len(parts) + 1):
                    prefix = ".".join(parts[:k])
                    if prefix in files and prefix != name and not name.startswith(prefix + "."):
                        targets.add(prefix)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "poisonlab.bench.output" in graph and "poisonlab.trial" in graph["poisonlab.experiment"]
    assert find_cycle(graph) is None


def _family_names() -> set[str]:
    """Class names of every registered method and of the family bases between it and its kind's base."""
    names: set[str] = set()
    for kind in ("attack", "detector", "input_detector", "defense", "purifier"):
        for cls in methods(kind).values():
            for base in inspect.getmro(cls):
                if base.__module__.startswith("poisonlab.") and base.__name__ not in KIND_BASES:
                    names.add(base.__name__)
    return names


@pytest.mark.parametrize("module", ["experiment.py", "trial.py"])
def test_the_runner_names_no_method_family(module):
    """Adding a method touches its own module only: the runner reads the kinds' hooks, never a family."""
    families = _family_names()
    assert {"BackdoorAttack", "TargetedAttack", "Strip", "FinePruning", "Mendata"} <= families
    tree = ast.parse((SRC / module).read_text())
    named = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    named |= {a.name.split(".")[-1] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not named & families


def test_a_new_attack_with_its_own_figure_plugs_in_from_its_own_module():
    """The README's contributor example: one registered class, nothing else changed, runs end to end with
    its net success and its own figure in the report."""

    from pydantic import Field

    from poisonlab.attacks.base import BudgetedAttack, poison_count
    from poisonlab.experiment import ExperimentConfig, report_figures, run_experiment
    from poisonlab.poison import AttackGoal, PoisonedDataset
    from poisonlab.registry import REGISTRY, register
    from poisonlab.training import predict

    @register("attack", "test_brighten")
    class Brighten(BudgetedAttack):
        """Brighten some rows and relabel them 0 (a test attack)."""

        default_fraction: ClassVar[float] = 0.2
        success_key: ClassVar[str | None] = "success_rate"
        strength: float = Field(0.5, gt=0)

        def _craft(self, train, *, generator, victim=None, test=None) -> PoisonedDataset:
            n = poison_count(len(train), self.budget_fraction, self.count, self.name)
            idx = torch.randperm(len(train), generator=generator)[:n]
            released = train.replace_rows(idx, (train.x[idx] + self.strength).clamp(0, 1), 0)
            return PoisonedDataset.from_rows(train, released, idx, AttackGoal(self.name, self.model_dump()))

        def evaluate(self, model, test, goal) -> dict[str, float]:
            bright = (test.x + self.strength).clamp(0, 1)
            return {"success_rate": float((predict(model, bright).argmax(1) == 0).float().mean())}

        def report_record(self, poisoned, goal_index, test):
            return {"count": int(poisoned.mask_of(goal_index).sum())}

        def figures(self, ident, record) -> dict[str, bytes]:
            return {f"{ident}: {record['count']} brightened rows": b"png"}

    try:
        train = {"epochs": 3, "checkpoint_every": 3}
        config = ExperimentConfig.model_validate(
            {"model": "logreg", "train": train, "attacks": [{"name": "test_brighten"}]}
        )
        result = run_experiment(config)
    finally:
        REGISTRY["attack"].pop("test_brighten")
    metrics = result.results["metrics"]
    assert metrics["attack.test_brighten.net_success_rate"] > 0.2  # brightened inputs go to class 0
    assert report_figures(result) == {"test_brighten: 270 brightened rows": b"png"}


def test_shared_run_values_are_keyed_by_the_data_object_not_its_id():
    """A freed dataset's id may be reused by another one: the cache must not hand over its features."""
    import weakref

    from poisonlab.data import Dataset
    from poisonlab.training import TrainRun

    def tiny() -> Dataset:
        return Dataset(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]), ("a", "b"))

    run = TrainRun(model=torch.nn.Identity(), checkpoints=[])
    calls = []
    first, other = tiny(), tiny()
    assert run.shared(("k",), first, lambda: calls.append(1) or "first") == "first"
    assert run.shared(("k",), first, lambda: calls.append(1) or "again") == "first" and calls == [1]
    # what an id reuse looks like: the slot of `other`'s id holds a value computed for another object
    run.cache[(("k",), id(other))] = (weakref.ref(first), "first")
    assert run.shared(("k",), other, lambda: "other") == "other"
    assert run.shared(("k",), other, lambda: "x", fits=lambda v: v == "never") == "x"  # fits refuses


def test_a_new_detector_with_its_own_reference_rule_plugs_in_from_its_own_module():
    """A detector brings its own reference selection (``reference_mask``); the purification stage uses it."""
    import numpy as np

    from poisonlab.detection.base import Detector
    from poisonlab.experiment import ExperimentConfig, run_experiment
    from poisonlab.registry import REGISTRY, register

    @register("detector", "test_first_rows")
    class FirstRows(Detector):
        """Trust the first 300 rows (a test detector)."""

        needs_run: ClassVar[bool] = False

        def _scores(self, data, run, *, test=None, generator=None) -> np.ndarray:
            return (np.arange(len(data)) % 2).astype(float)

        def reference_mask(self, data, *, run, features, is_poisoned, test, generator, keep_fraction=0.5):
            return torch.arange(len(data)) < 300  # not what the default rule (half per class) would keep

    try:
        config = ExperimentConfig.model_validate(
            {
                "model": "logreg",
                "train": {"epochs": 2, "checkpoint_every": 2},
                "attacks": [{"name": "label_flip_random", "fraction": 0.1}],
                "reference": {"name": "test_first_rows"},
                "purifiers": [{"name": "ref"}],
            }  # fmt: skip
        )
        metrics = run_experiment(config).results["metrics"]
    finally:
        REGISTRY["detector"].pop("test_first_rows")
    assert metrics["purification.reference.size"] == 300
    assert metrics["purification.ref.rows"] == 300


def test_each_method_draws_from_its_own_stream():
    """Adding a detector before another, or an attack after another, leaves the other's draws unchanged;
    the stream depends on the method's id, not its position."""
    from poisonlab.experiment import ExperimentConfig, run_experiment
    from poisonlab.trial import method_seed

    def run(attacks, detectors):
        config = ExperimentConfig.model_validate(
            {
                "model": "logreg",
                "train": {"epochs": 2, "checkpoint_every": 2},
                "attacks": attacks,
                "detectors": detectors,
                "baseline": False,
            }  # fmt: skip
        )
        return run_experiment(config)

    flip = {"id": "flip", "name": "label_flip_random", "fraction": 0.05}
    probe = {"id": "probe", "name": "tracin_test", "num_test": 3}  # draws its test points
    alone = run([flip], [probe])
    crowded = run([flip], [{"id": "first", "name": "tracin_test", "num_test": 3}, probe])
    a, b = alone.first.scores["probe"], crowded.first.scores["probe"]
    assert (a == b).all()
    # the first attack's rows do not move when a second attack joins after it
    later = run([flip, {"id": "more", "name": "label_flip_random", "fraction": 0.05}], [probe])
    first = alone.first.poisoned.poison_idx
    assert set(first.tolist()) <= set(later.first.poisoned.poison_idx.tolist())
    seeds = {method_seed(s, "detector", m) for s, m in ((0, "a"), (0, "b"), (1, "b"))}
    assert len(seeds) == 3


def test_an_attack_reports_what_its_crafting_measured():
    """``goal_metrics`` names the goal's numbers that reach results as attack.<id>.<name>."""
    from poisonlab.experiment import ExperimentConfig, run_experiment

    config = ExperimentConfig.model_validate(
        {
            "model": "cnn",
            "train": {"epochs": 1, "checkpoint_every": 1},
            "baseline": False,
            "attacks": [{"id": "fc", "name": "feature_collision", "count": 3, "steps": 5}],
        }  # fmt: skip
    )
    result = run_experiment(config)
    metrics, goal = result.results["metrics"], result.first.poisoned.goals[0]
    assert metrics["attack.fc.beta"] == goal.params["beta"] > 0
    assert metrics["attack.fc.feature_distance"] == goal.params["feature_distance"]
    assert metrics["attack.fc.objective_last"] == goal.params["objective"]["last"]


def test_an_input_time_detector_gives_only_its_scores_and_gets_the_frr_far_protocol():
    """The base fits the boundary on part of the clean rows, measures FRR on the rest and FAR on triggered
    inputs: a detector scoring triggered inputs lowest rejects them all at the fitted FRR."""
    import numpy as np

    from poisonlab.data import Dataset
    from poisonlab.detection import InputDetector

    class Brightness(InputDetector):
        """Mean pixel value (a test detector: the 'trigger' is a dark image)."""

        def input_scores(self, model, x, pool, generator) -> np.ndarray:
            return x.flatten(1).mean(1).numpy()

    gen = torch.Generator().manual_seed(0)
    clean = Dataset(0.5 + 0.5 * torch.rand(200, 1, 4, 4, generator=gen), torch.arange(200) % 2, ("a", "b"))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    metrics, scores = Brightness(frr=0.05).evaluate(model, clean, torch.zeros(30, 1, 4, 4), gen)
    assert metrics["far"] == 0.0 and metrics["auroc"] == 1.0
    assert metrics["frr_fit"] == pytest.approx(0.05) and metrics["frr"] < 0.2
    assert len(scores["clean"]) == 200 and len(scores["triggered"]) == 30
