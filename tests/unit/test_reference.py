"""The shipped reference data of local authorities and police force areas."""

from gateway.admin.reference import (
    find_local_authority,
    find_police_force_area,
    local_authorities,
    local_authorities_in,
    police_force_areas,
)


def test_england_has_153_local_authorities_in_39_police_force_areas() -> None:
    assert len(local_authorities()) == 153
    assert len({la.name for la in local_authorities()}) == 153
    assert len(police_force_areas()) == 39


def test_every_police_force_area_has_a_local_authority() -> None:
    for area in police_force_areas():
        assert local_authorities_in(area), area


def test_names_match_whatever_the_case_spacing_or_ampersand() -> None:
    la = find_local_authority("  brighton   &  HOVE ")
    assert la is not None
    assert la.name == "Brighton and Hove"
    assert la.police_force_area == "Sussex"
    assert find_police_force_area("west mercia") == "West Mercia"


def test_unknown_names_are_not_guessed() -> None:
    assert find_local_authority("Gotham") is None
    assert find_police_force_area("Mercia") is None


def test_known_placements() -> None:
    placements = {
        "Shropshire": "West Mercia",
        "Westminster": "Metropolitan Police",
        "City of London": "City of London",
        "Isles of Scilly": "Devon and Cornwall",
        "Bournemouth, Christchurch and Poole": "Dorset",
        "Cumberland": "Cumbria",
        "Milton Keynes": "Thames Valley",
        "Halton": "Cheshire",
    }
    for name, force in placements.items():
        la = find_local_authority(name)
        assert la is not None, name
        assert la.police_force_area == force
