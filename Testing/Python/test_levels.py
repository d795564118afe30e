"""Level conventions: ids, names, SNOMED CT codes, order, and mapping of foreign label names/ids."""

import pytest

from spinefrac.levels import LEVEL_BY_ID, LEVELS, SACRUM, TOTALSEGMENTATOR_V2_IDS, level_for_name, sort_craniocaudal


def test_verse_ids_cover_the_documented_convention():
    expected = {**{i: f"C{i}" for i in range(1, 8)}, **{i + 7: f"T{i}" for i in range(1, 13)},
                **{i + 19: f"L{i}" for i in range(1, 6)}, 25: "L6", 26: "sacrum", 28: "T13"}
    assert {level.verse_id: level.name for level in LEVELS} == expected


def test_craniocaudal_order_places_transitional_levels_between_their_neighbours():
    names = [level.name for level in sort_craniocaudal(LEVEL_BY_ID.values())]
    assert names.index("T12") < names.index("T13") < names.index("L1")
    assert names.index("L5") < names.index("L6") < names.index("sacrum")
    assert names[0] == "C1"


def test_snomed_codes_are_unique_for_named_vertebrae_and_from_cid_7603():
    named = [level for level in LEVELS if not level.is_transitional]
    codes = [level.snomed_code for level in named]
    assert len(set(codes)) == len(codes)
    assert LEVEL_BY_ID[20].snomed_code == "66794005"  # L1 vertebra
    assert LEVEL_BY_ID[1].snomed_code == "14806007"  # C1 vertebra
    assert SACRUM.snomed_code == "54735007"
    assert all(level.snomed_meaning.endswith("vertebra") for level in named if level.is_vertebra)


def test_neighbouring_levels_have_distinct_colours():
    ordered = sort_craniocaudal(LEVELS)
    for upper, lower in zip(ordered, ordered[1:]):
        assert upper.color_rgb != lower.color_rgb


@pytest.mark.parametrize("name, expected", [
    ("L1", "L1"), ("l1", "L1"), ("vertebrae_L1", "L1"), ("L1 vertebra", "L1"), ("Vertebra T12", "T12"),
    ("vertebrae_C7", "C7"), ("sacrum", "sacrum"), ("vertebrae_S1", "sacrum"), ("T13", "T13"), ("L6", "L6"),
])
def test_level_for_name_understands_common_spellings(name, expected):
    assert level_for_name(name).name == expected


@pytest.mark.parametrize("name", ["L7", "T14", "liver", "rib_left_1", "", "L", "vertebrae"])
def test_level_for_name_rejects_non_levels(name):
    assert level_for_name(name) is None


def test_totalsegmentator_v2_ids_map_to_the_right_levels():
    names = {ts_id: LEVEL_BY_ID[verse_id].name for ts_id, verse_id in TOTALSEGMENTATOR_V2_IDS.items()}
    assert names[25] == names[26] == "sacrum"
    assert (names[27], names[31], names[32], names[43], names[44], names[50]) == ("L5", "L1", "T12", "T1", "C7", "C1")
    assert len(TOTALSEGMENTATOR_V2_IDS) == 26
