"""What a level's heights would be without a fracture: physiological wedging by level and the
expected anterior, middle and posterior heights from undeformed neighbours.

Physiological wedging: the sagittal wedge angle between a normal body's endplates, mean of the
female and male means of Masharawi Y et al., Eur Spine J 2010;19(5):768-773
(doi:10.1007/s00586-009-1256-6), Table 1, 240 adults (positive: anterior height smaller, the
thoracic kyphotic wedge; negative: posterior height smaller, the lower lumbar reverse wedge).
The table covers T9-L5; T1-T8 take T9's value, T13 T12's, L6 L5's, cervical levels none.
Over a body whose anterior and posterior height points lie d mm apart, the wedge angle makes
the anterior height d * tan(angle) smaller than the posterior one without any fracture.

Expected heights (each height's relative loss against its pre-fracture estimate, as the
relative height loss of the vertebra, RHLV, of the HealthiVert-GAN paper does per section): the central height
Hc = (Ha + Hp) / 2, which wedging does not change, is the median over up to two undeformed
levels on each side (within three levels; cervical levels and the others never judge each
other, cervical bodies being far smaller; T1, transitional, neither judges nor is judged by its
neighbours: NO_NEIGHBOUR_LEVELS); the expected anterior and posterior heights are
Hc -/+ D / 2, D being this level's physiological difference d * tan(angle) plus the median of the
neighbours' own differences beyond theirs (the patient's posture and shape carry over), and the
expected middle height is Hc times the neighbours' own middle/central ratio (their endplate
concavity), and so is each point of the middle profile (the heights across the central part of
the body): a normal endplate's deepest point need not be at mid-depth, nor a fracture's, so
the middle loss is compared point by point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spinefrac.levels import Level, Region

PHYSIOLOGICAL_WEDGE_DEG = {
    "T9": 3.8, "T10": 3.2, "T11": 5.0, "T12": 4.2, "L1": 3.35, "L2": 1.65, "L3": 0.1, "L4": -1.9, "L5": -6.2,
}
NEIGHBOURS_PER_SIDE = 2
# T1, the cervicothoracic transitional vertebra, has a body smaller than T2-T4's and no level of
# its own kind above (cervical bodies never judge thoracic ones): its neighbours would call a
# normal T1 compressed, and it would lower T2's expectation. It is graded on its own ratios only.
NO_NEIGHBOUR_LEVELS = ("T1",)
MAX_NEIGHBOUR_DISTANCE = 3  # levels


def physiological_wedge_deg(level: Level) -> float:
    if level.name in PHYSIOLOGICAL_WEDGE_DEG:
        return PHYSIOLOGICAL_WEDGE_DEG[level.name]
    if level.name == "T13":
        return PHYSIOLOGICAL_WEDGE_DEG["T12"]
    if level.name == "L6":
        return PHYSIOLOGICAL_WEDGE_DEG["L5"]
    if level.region is Region.THORACIC:
        return PHYSIOLOGICAL_WEDGE_DEG["T9"]
    return 0.0


def physiological_difference_mm(level: Level, point_distance_mm: float) -> float:
    """Posterior minus anterior height of a normal body of this level, mm."""
    return point_distance_mm * math.tan(math.radians(physiological_wedge_deg(level)))


@dataclass(frozen=True)
class LevelHeights:
    level: Level
    anterior_mm: float
    middle_mm: float
    posterior_mm: float
    point_distance_mm: float  # between the anterior and posterior height points
    middle_profile_mm: tuple[float, ...] = ()  # heights across the central part (morphometry.py)

    @property
    def central_mm(self) -> float:
        return 0.5 * (self.anterior_mm + self.posterior_mm)


@dataclass(frozen=True)
class ExpectedHeights:
    anterior_mm: float
    middle_mm: float
    posterior_mm: float
    references: tuple[str, ...]  # the neighbouring levels used
    middle_profile_mm: tuple[float, ...] = ()  # expected heights at the target's middle-profile points


def expected_heights(target: LevelHeights, undeformed: list[LevelHeights]) -> ExpectedHeights | None:
    """Expected heights of ``target`` from its nearest undeformed neighbours (None: none near)."""
    references = nearest_neighbours(target.level, undeformed)
    if not references:
        return None
    central = float(np.median([r.central_mm for r in references]))
    concavity = float(np.median([r.middle_mm / r.central_mm for r in references]))
    # The neighbours' own wedging beyond their level's norm carries over (posture, the patient's
    # shape); the norm changes from level to level as the table says.
    excess = float(np.median([r.posterior_mm - r.anterior_mm - physiological_difference_mm(r.level, r.point_distance_mm)
                              for r in references]))
    half_difference = 0.5 * (excess + physiological_difference_mm(target.level, target.point_distance_mm))
    return ExpectedHeights(central - half_difference, central * concavity, central + half_difference,
                           tuple(r.level.name for r in references), _middle_profile(target, references, central))


def _middle_profile(target: LevelHeights, references: list[LevelHeights], central_mm: float) -> tuple[float, ...]:
    """Expected heights point by point across the central part: the neighbours' own heights there
    over their central height (normal endplate concavity, deepest wherever it is) times ``central_mm``."""
    size = len(target.middle_profile_mm)
    shapes = [np.asarray(r.middle_profile_mm) / r.central_mm for r in references if len(r.middle_profile_mm) == size]
    if size == 0 or not shapes:
        return ()
    return tuple(float(central_mm * ratio) for ratio in np.nanmedian(shapes, axis=0))


def nearest_neighbours(level: Level, candidates: list[LevelHeights]) -> list[LevelHeights]:
    if level.name in NO_NEIGHBOUR_LEVELS:
        return []
    rank = level.craniocaudal_rank
    cervical = level.region is Region.CERVICAL  # cervical bodies are far smaller than thoracic ones
    others = [c for c in candidates if c.level.name != level.name and c.level.name not in NO_NEIGHBOUR_LEVELS
              and abs(c.level.craniocaudal_rank - rank) <= MAX_NEIGHBOUR_DISTANCE
              and (c.level.region is Region.CERVICAL) == cervical]
    above = sorted((c for c in others if c.level.craniocaudal_rank < rank), key=lambda c: -c.level.craniocaudal_rank)
    below = sorted((c for c in others if c.level.craniocaudal_rank > rank), key=lambda c: c.level.craniocaudal_rank)
    return above[:NEIGHBOURS_PER_SIDE] + below[:NEIGHBOURS_PER_SIDE]
