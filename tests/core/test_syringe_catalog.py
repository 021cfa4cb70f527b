"""Syringe catalog: the shipped file loads and carries its figures; bad files are rejected
naming the file and the field."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pump_rig.core.syringe_catalog import (
    Syringe,
    SyringeCatalog,
    SyringeCatalogError,
    default_hardware_dir,
    load_syringe_catalog,
    parse_syringe_catalog,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "hardware" / "syringes.yaml"

ENTRY = """\
  - id: {id}
    maker: BD
    model: Plastipak 30 mL
    nominal_volume_ml: 30
    inner_diameter_mm: {diameter}
    source: New Era NE-1000 manual syringe table
"""


def catalog_text(*entries: str) -> str:
    return "version: 1\nsyringes:\n" + "".join(entries)


def entry(syringe_id: str = "bd_plastipak_30ml", diameter: object = 21.59) -> str:
    return ENTRY.format(id=syringe_id, diameter=diameter)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "syringes.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# --- the shipped catalog ----------------------------------------------------------------------


def test_default_location_is_a_hardware_folder() -> None:
    # The installed share/pump_rig/hardware when an install has one, else the source tree's.
    found = default_hardware_dir()
    assert found == REPO / "hardware" or found.parts[-3:] == ("share", "pump_rig", "hardware")
    assert load_syringe_catalog().ids() == load_syringe_catalog(SHIPPED).ids()


def test_shipped_catalog_loads_with_unique_ids() -> None:
    catalog = load_syringe_catalog(SHIPPED)
    ids = catalog.ids()
    assert len(ids) == len(set(ids)) == len(catalog) >= 25
    assert [s.id for s in catalog] == list(ids)  # iteration in file order
    assert catalog.source == str(SHIPPED)


def test_shipped_catalog_covers_the_four_makers() -> None:
    makers = {s.maker for s in load_syringe_catalog(SHIPPED)}
    assert {"BD", "Hamilton", "Terumo", "SGE"} <= makers


@pytest.mark.parametrize(
    ("syringe_id", "diameter_mm", "volume_ul"),
    [
        ("bd_plastipak_10ml", 14.43, 10_000.0),  # the rig's default (config/mock.yaml)
        ("bd_plastipak_30ml", 21.59, 30_000.0),  # the bench syringe (cli/bench.py)
        ("bd_plastipak_60ml", 26.59, 60_000.0),
        ("terumo_20ml", 20.15, 20_000.0),
        ("hamilton_gastight_1000_1ml", 4.608, 1_000.0),
        ("sge_gastight_100ul", 1.457, 100.0),
    ],
)
def test_known_diameters(syringe_id: str, diameter_mm: float, volume_ul: float) -> None:
    syringe = load_syringe_catalog(SHIPPED).get(syringe_id)
    assert syringe.inner_diameter_mm == diameter_mm
    assert syringe.nominal_volume_ul == pytest.approx(volume_ul)


def test_every_shipped_entry_names_a_source_and_is_plausible() -> None:
    for syringe in load_syringe_catalog(SHIPPED):
        assert syringe.source.strip()
        # The rig's pumps take 0.1..50 mm; a plunger stroke of 5..250 mm is what syringes have.
        assert 0.1 <= syringe.inner_diameter_mm <= 50.0, syringe.id
        assert 5.0 <= syringe.stroke_mm <= 250.0, syringe.id


def test_hamilton_bores_match_their_60_mm_scale() -> None:
    # Independent check of the figures: a Gastight 1000 series barrel carries a 60 mm scale.
    for syringe in load_syringe_catalog(SHIPPED):
        if syringe.id.startswith("hamilton_gastight_1000_"):
            assert math.pi * syringe.inner_diameter_mm**2 / 4 * 60 == pytest.approx(
                syringe.nominal_volume_ul, rel=0.002
            ), syringe.id


def test_area_and_stroke() -> None:
    syringe = load_syringe_catalog(SHIPPED).get("bd_plastipak_30ml")
    assert syringe.area_mm2 == pytest.approx(366.0962, abs=1e-4)  # pi * 21.59**2 / 4
    assert syringe.stroke_mm == pytest.approx(30_000 / 366.0962, rel=1e-6)
    assert syringe.describe() == "BD Plastipak 30 mL (21.59 mm)"


# --- look-ups ---------------------------------------------------------------------------------


def test_get_ignores_case_and_blanks() -> None:
    catalog = load_syringe_catalog(SHIPPED)
    assert catalog.get("  BD_Plastipak_10ml ").inner_diameter_mm == 14.43
    assert "bd_plastipak_10ml" in catalog and "nope" not in catalog


def test_unknown_id_names_it_and_lists_known_ones() -> None:
    catalog = load_syringe_catalog(SHIPPED)
    with pytest.raises(ValueError) as info:
        catalog.get("bd_plastipak_35ml")
    message = str(info.value)
    assert "'bd_plastipak_35ml'" in message
    assert "did you mean" in message and "'bd_plastipak_30ml'" in message
    assert "known: bd_plastipak_1ml" in message and "sge_gastight_100ul" in message
    assert isinstance(info.value, SyringeCatalogError) and info.value.field == "syringe"


def test_unknown_id_far_from_everything_still_lists_known_ids() -> None:
    with pytest.raises(SyringeCatalogError, match=r"unknown syringe id 'zzz' \(known: bd_"):
        load_syringe_catalog(SHIPPED).get("zzz")


# --- bad documents ----------------------------------------------------------------------------


def test_parses_a_minimal_catalog() -> None:
    catalog = parse_syringe_catalog(catalog_text(entry()))
    assert catalog == SyringeCatalog(
        syringes=(
            Syringe(
                id="bd_plastipak_30ml",
                maker="BD",
                model="Plastipak 30 mL",
                nominal_volume_ul=30_000.0,
                inner_diameter_mm=21.59,
                source="New Era NE-1000 manual syringe table",
            ),
        )
    )


def test_malformed_yaml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "syringes:\n  - id: [unclosed\n")
    with pytest.raises(SyringeCatalogError) as info:
        load_syringe_catalog(path)
    assert str(info.value).startswith(f"{path}: YAML syntax error at line ")


def test_unknown_key_names_file_and_field(tmp_path: Path) -> None:
    misspelt = entry("terumo_30ml").replace("    source:", "    diamter: 1\n    source:")
    path = write(tmp_path, catalog_text(entry(), misspelt))
    with pytest.raises(SyringeCatalogError) as info:
        load_syringe_catalog(path)
    assert str(info.value) == (
        f"{path}: syringes[1].diamter: unknown field "
        "(known: id, maker, model, nominal_volume_ml, inner_diameter_mm, source, note)"
    )
    assert info.value.field == "syringes[1].diamter"
    assert info.value.source == str(path)


def test_unknown_top_level_key() -> None:
    with pytest.raises(
        SyringeCatalogError, match=r"^syrnges: unknown field \(did you mean 'syringes'\?\)"
    ):
        parse_syringe_catalog("syrnges: []\n")


@pytest.mark.parametrize("bad", ["-21.59", "0", ".nan", ".inf", "'21.59'", "true", "[1]"])
def test_non_positive_or_non_numeric_diameter(tmp_path: Path, bad: str) -> None:
    path = write(tmp_path, catalog_text(entry(), entry("x", bad), entry("y")))
    with pytest.raises(SyringeCatalogError) as info:
        load_syringe_catalog(path)
    assert str(info.value).startswith(
        f"{path}: syringes[1].inner_diameter_mm: must be a positive number (got "
    )


def test_negative_volume() -> None:
    text = catalog_text(entry().replace("nominal_volume_ml: 30", "nominal_volume_ml: -30"))
    with pytest.raises(
        SyringeCatalogError,
        match=r"^syringes\[0\]\.nominal_volume_ml: must be a positive number \(got -30\)$",
    ):
        parse_syringe_catalog(text)


def test_duplicate_id_names_both_places(tmp_path: Path) -> None:
    path = write(tmp_path, catalog_text(entry("a"), entry("b"), entry("a")))
    with pytest.raises(SyringeCatalogError) as info:
        load_syringe_catalog(path)
    assert str(info.value) == (f"{path}: syringes[2].id: duplicate id 'a' (first at syringes[0])")


def test_duplicate_key_within_an_entry() -> None:
    text = catalog_text(entry().replace("    maker: BD\n", "    maker: BD\n    maker: Terumo\n"))
    with pytest.raises(SyringeCatalogError, match=r"^maker: duplicate field \(line \d+\)$"):
        parse_syringe_catalog(text)


@pytest.mark.parametrize(
    "field", ["id", "maker", "model", "nominal_volume_ml", "inner_diameter_mm", "source"]
)
def test_missing_required_field(tmp_path: Path, field: str) -> None:
    lines = [line for line in entry().splitlines(keepends=True) if f" {field}:" not in line]
    text = "".join(lines)
    if field == "id":
        text = text.replace("    maker:", "  - maker:")
    path = write(tmp_path, catalog_text(entry("first"), text))
    with pytest.raises(SyringeCatalogError) as info:
        load_syringe_catalog(path)
    assert str(info.value) == f"{path}: syringes[1].{field}: required field missing"


def test_empty_source_is_rejected() -> None:
    text = catalog_text(
        entry().replace("source: New Era NE-1000 manual syringe table", "source: ' '")
    )
    with pytest.raises(SyringeCatalogError, match=r"^syringes\[0\]\.source: must not be empty$"):
        parse_syringe_catalog(text)


@pytest.mark.parametrize("bad_id", ["BD_30", "30ml", "bd-30ml", "bd 30"])
def test_ids_must_be_snake_case(bad_id: str) -> None:
    with pytest.raises(SyringeCatalogError, match=r"^syringes\[0\]\.id: must be a snake_case id"):
        parse_syringe_catalog(catalog_text(entry(f"'{bad_id}'")))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "syringe catalog is empty"),
        ("- 1\n", "syringe catalog must be a mapping of fields (got list)"),
        ("version: 1\n", "syringes: required field missing"),
        ("syringes: {}\n", "syringes: must be a list of syringes (got dict)"),
        ("syringes: []\n", "syringes: must list at least one syringe"),
        ("syringes: [3]\n", "syringes[0]: must be a mapping of fields (got integer)"),
        ("version: 2\nsyringes: []\n", "version: unsupported version 2 (this loader reads 1)"),
    ],
)
def test_structural_errors(text: str, expected: str) -> None:
    with pytest.raises(SyringeCatalogError) as info:
        parse_syringe_catalog(text)
    assert str(info.value) == expected


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SyringeCatalogError, match=r"nope\.yaml: file not found$"):
        load_syringe_catalog(path)


def test_optional_note_is_kept_on_one_line() -> None:
    text = catalog_text(entry() + "    note: |\n      two\n      lines\n")
    assert parse_syringe_catalog(text).syringes[0].note == "two lines"


def test_direct_construction_is_checked() -> None:
    with pytest.raises(SyringeCatalogError, match="inner_diameter_mm: must be a positive number"):
        Syringe("a", "BD", "x", 1.0, -1.0, "src")
    one = Syringe("a", "BD", "x", 1.0, 1.0, "src")
    with pytest.raises(SyringeCatalogError, match="duplicate id 'a'"):
        SyringeCatalog(syringes=(one, one))
    with pytest.raises(SyringeCatalogError, match="at least one syringe"):
        SyringeCatalog(syringes=())
