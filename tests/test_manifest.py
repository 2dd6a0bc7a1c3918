"""The npe2 manifest is valid and napari discovers the plugin from the installed package."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_manifest_validates():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(ROOT / "napari.yaml")
    manifest.validate_imports()
    assert manifest.name == "napari-care"


def test_plugin_is_discovered():
    from npe2 import PluginManager

    pm = PluginManager()
    pm.discover()
    assert "napari-care" in {m.name for m in pm.iter_manifests()}
    readers = [r.command for r in pm.iter_compatible_readers(["slide.svs"])]
    assert "napari-care.get_reader" in readers


def test_packaged_manifest_is_the_root_manifest():
    packaged = ROOT / "napari_care" / "napari.yaml"
    assert yaml.safe_load(packaged.read_text()) == yaml.safe_load((ROOT / "napari.yaml").read_text())
