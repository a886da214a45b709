"""Numba's on-disk cache is keyed on every kernel source (llamacpu/kernels/cachekey.py): a kernel that
inlines helpers from other files is recompiled when one of them changes, not run stale."""
import shutil

from llamacpu.kernels import cachekey
from llamacpu.quant import kernels, q4_0


def test_cached_kernels_carry_the_sources_digest():
    for dispatcher in (kernels.matvec, kernels.matmul, q4_0.matmul_vnni):
        locator = dispatcher._cache._impl.locator
        assert isinstance(locator, cachekey._KeyedOnSources)
        assert locator.get_source_stamp()[1] == cachekey.SOURCES_DIGEST


def test_editing_a_helper_module_changes_the_digest(tmp_path, monkeypatch):
    for sub in cachekey._WATCHED:
        shutil.copytree(f"{cachekey._PACKAGE}/{sub}", tmp_path / sub)
    monkeypatch.setattr(cachekey, "_PACKAGE", str(tmp_path))
    before = cachekey._digest()
    assert before == cachekey.SOURCES_DIGEST  # the same files give the same key
    helper = tmp_path / "quant" / "vnni.py"  # inlined by the formats' VNNI kernels, not in their own files
    helper.write_text(helper.read_text() + "\n# an edit\n")
    assert cachekey._digest() != before
