"""Training of the optional fracture classifier (spinefrac.assessment.classifier): labelled
per-vertebra crops from a graded data set, a case-wise train/validation split, temperature scaling
fitted on the held-out cases, and the model package the classifier loads.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from spinefrac.assessment.classifier import ClassifierManifest, CropGeometry, NetworkConfig, build_network, level_crops
from spinefrac.errors import InputError
from spinefrac.io.filenames import MODEL_MANIFEST_FILE, MODEL_WEIGHTS_FILE
from spinefrac.io.model_packages import require_torch, write_model_package

# -- training -------------------------------------------------------------------------------


@dataclass
class TrainingExample:
    case: str
    level: str
    crop: np.ndarray
    fractured: bool


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature minimising the held-out negative log-likelihood (searched on a log grid)."""
    if len(logits) == 0 or labels.min() == labels.max():
        return 1.0
    candidates = np.exp(np.linspace(np.log(0.05), np.log(20.0), 200))

    def nll(t: float) -> float:
        p = 1.0 / (1.0 + np.exp(-logits / t))
        p = np.clip(p, 1e-7, 1 - 1e-7)
        return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))

    return float(min(candidates, key=nll))


def train_classifier(examples: list[TrainingExample], output: Path, epochs: int = 20, batch_size: int = 8,
                     learning_rate: float = 1e-3, network_config: NetworkConfig | None = None,
                     crop: CropGeometry | None = None, validation_fraction: float = 0.25, seed: int = 0,
                     device: str = "cpu", log=print, name: str = "fracture-classifier") -> dict:
    """Train on labelled crops, split by case; writes a model package; returns the history."""
    require_torch()
    import torch

    if len({e.fractured for e in examples}) < 2:
        raise InputError("training needs both fractured and normal vertebrae")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    cases = sorted({e.case for e in examples})
    random.shuffle(cases)
    held_out = set(cases[: max(1, round(validation_fraction * len(cases)))]) if len(cases) > 1 else set()
    train = [e for e in examples if e.case not in held_out]
    valid = [e for e in examples if e.case in held_out] or train
    config = network_config or NetworkConfig()
    network = build_network(config).to(device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
    positives = sum(e.fractured for e in train)
    pos_weight = torch.tensor([(len(train) - positives) / max(positives, 1)], device=device)
    loss_function = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    history = {"train_loss": [], "valid_loss": [], "valid_accuracy": []}
    for epoch in range(epochs):
        network.train()
        order = np.random.permutation(len(train))
        epoch_loss = 0.0
        for start in range(0, len(order), batch_size):
            chosen = [train[i] for i in order[start:start + batch_size]]
            crops = torch.from_numpy(np.stack([_augment(e.crop) for e in chosen])).to(device)
            targets = torch.tensor([[float(e.fractured)] for e in chosen], device=device)
            optimiser.zero_grad()
            loss = loss_function(network(crops), targets)
            loss.backward()
            optimiser.step()
            epoch_loss += float(loss.detach()) * len(chosen)
        valid_logits, valid_labels = _predict(network, valid, device)
        valid_loss = float(torch.nn.functional.binary_cross_entropy_with_logits(
            torch.from_numpy(valid_logits), torch.from_numpy(valid_labels)))
        history["train_loss"].append(epoch_loss / len(train))
        history["valid_loss"].append(valid_loss)
        history["valid_accuracy"].append(float(np.mean((valid_logits > 0) == (valid_labels > 0.5))))
        log(f"epoch {epoch + 1}/{epochs}: train loss {history['train_loss'][-1]:.4f}, "
            f"validation loss {valid_loss:.4f}, accuracy {history['valid_accuracy'][-1]:.2f}")
    valid_logits, valid_labels = _predict(network, valid, device)
    temperature = fit_temperature(valid_logits, valid_labels)
    manifest = ClassifierManifest(
        name=name, network_config=config, crop=crop or CropGeometry(), temperature=temperature,
        training={"examples": len(train), "validation_examples": len(valid), "cases": len(cases),
                  "held_out_cases": sorted(held_out), "epochs": epochs, "history": history,
                  "positives": positives},
        licence="trained by the user on their own data; see the data's licence",
    )
    write_package(network, manifest, output)
    return history


def _augment(crop: np.ndarray) -> np.ndarray:
    """Left-right mirroring (anatomy is symmetric) and a small intensity jitter."""
    out = crop[:, :, :, ::-1] if np.random.rand() < 0.5 else crop
    out = out.copy()
    out[0] = np.clip(out[0] * np.random.uniform(0.95, 1.05) + np.random.normal(0, 0.01), 0, 1)
    return out


def _predict(network, examples: list[TrainingExample], device: str) -> tuple[np.ndarray, np.ndarray]:
    import torch

    network.eval()
    with torch.no_grad():
        logits = network(torch.from_numpy(np.stack([e.crop for e in examples])).to(device)).cpu().numpy().ravel()
    return logits.astype(np.float64), np.array([float(e.fractured) for e in examples])


def write_package(network, manifest: ClassifierManifest, output: Path) -> Path:
    return write_model_package(network, manifest, output, MODEL_WEIGHTS_FILE, MODEL_MANIFEST_FILE)


def examples_from_dataset(root: Path | str, crop: CropGeometry | None = None, log=print,
                          simulated_per_case: int = 0, seed: int = 0) -> list[TrainingExample]:
    """Labelled crops from a data set (VerSe layout or CT + label pairs) with Genant grade files
    (NAME_genant.csv beside each label map: level,genant_grade). Ungraded levels are skipped.
    ``simulated_per_case`` > 0 adds that many fractured crops per case, each a grade-0 level of
    the case compressed (spinefrac.synthetic.fracture_simulation: random type, 25-50 % loss);
    they stay with their case in the case-wise train/validation split."""
    from spinefrac.assessment.measurement import measure_vertebrae
    from spinefrac.assessment.morphometry import measure_morphometry
    from spinefrac.io.datasets import read_dataset
    from spinefrac.io.grades import grade_file, read_gradings
    from spinefrac.io.images import load_ct
    from spinefrac.segmentation.label_maps import ExistingLabelMap

    crop = crop or CropGeometry()
    rng = np.random.default_rng(seed)
    examples = []
    for case in read_dataset(root):
        grades_path = grade_file(case.label_path.parent, f"{case.name}_")
        if grades_path is None:
            log(f"{case.name}: no {case.name}_genant.csv beside {case.label_path.name}; skipped")
            continue
        grades = read_gradings(grades_path)
        ct = load_ct(case.ct_path)
        segmentation = ExistingLabelMap(case.label_path).segment(ct)
        morphometry = measure_morphometry(ct, segmentation, measure_vertebrae(ct, segmentation))
        crops = level_crops(ct, segmentation, morphometry, crop)
        for m in morphometry.vertebrae:
            grading = grades.get(m.level.verse_id)
            if grading is None or grading.genant_grade is None or m.level.name not in crops:
                continue
            examples.append(TrainingExample(case.name, m.level.name, crops[m.level.name], grading.genant_grade >= 1))
        normal = [m for m in morphometry.vertebrae if m.heights is not None and m.level.name in crops
                  and getattr(grades.get(m.level.verse_id), "genant_grade", None) == 0]
        examples += simulated_examples(case.name, ct, segmentation, normal, simulated_per_case, rng, crop)
        log(f"{case.name}: {sum(e.case == case.name for e in examples)} graded vertebrae")
    if not examples:
        raise InputError(f"no graded vertebrae found under {root} (grade files: NAME_genant.csv, level,genant_grade)")
    return examples


SIMULATED_LOSS_RANGE = (0.25, 0.5)


def simulated_examples(case_name: str, ct, segmentation, normal_levels: list, count: int, rng,
                       crop: CropGeometry) -> list[TrainingExample]:
    """Fractured crops made by compressing ``count`` of the case's normal levels, one at a time."""
    from spinefrac.assessment.measurement import measure_vertebrae
    from spinefrac.assessment.morphometry import measure_morphometry
    from spinefrac.synthetic.fracture_simulation import KINDS, SimulatedFracture, simulate_fracture
    from spinefrac.synthetic.real_data_cases import segmentation_of

    examples = []
    for m in rng.permutation(np.array(normal_levels, dtype=object))[:count]:
        fracture = SimulatedFracture(m.level.name, str(rng.choice(KINDS)), float(rng.uniform(*SIMULATED_LOSS_RANGE)))
        image, labels = simulate_fracture(ct.image, segmentation.label_map, m, fracture)
        fractured_ct = replace(ct, image=image, source_description="simulated fracture", warnings=[])
        fractured_segmentation = segmentation_of(labels, f"simulated {fracture.kind} of {fracture.level}")
        morphometry = measure_morphometry(fractured_ct, fractured_segmentation,
                                          measure_vertebrae(fractured_ct, fractured_segmentation))
        crops = level_crops(fractured_ct, fractured_segmentation, morphometry, crop)
        if fracture.level in crops:
            examples.append(TrainingExample(case_name, fracture.level, crops[fracture.level], True))
    return examples
