"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest
from hypothesis import settings

# CI replays a fixed set of examples (a red CI must mean a regression, not a new random draw);
# developers' runs draw new examples each time and keep failures in .hypothesis/.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

# The real model files live beside the repo, in ../shared/models; a fresh clone has none.
SHARED_MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"


@pytest.fixture(scope="session")
def llama3_gguf(tmp_path_factory):
    """tests/fixtures/llama3/hf (a tiny Llama 3 checkpoint made by transformers, tools/make_llama3_gguf.py)
    written as GGUF by our writer, as `llamacpu quantize hf X.gguf --type F32` does."""
    from llamacpu.checkpoint.gguf_write import quantize_to_gguf

    return quantize_to_gguf(Path(__file__).parent / "fixtures" / "llama3" / "hf",
                            tmp_path_factory.mktemp("llama3") / "tiny-llama3.gguf", "F32")


@pytest.fixture(scope="session")
def shared_models():
    """Path of ../shared/models; skips the test when the folder is absent."""
    if not SHARED_MODELS.is_dir():
        pytest.skip("../shared/models not found: real-model tests need the shared model folder beside the repo")
    return SHARED_MODELS


# ---- fuzzing tally: every fuzz test reports how many inputs it tried, printed at the end of the run ----
FUZZ_COUNTS: dict[str, list[int]] = {}


@pytest.fixture
def calls(monkeypatch):
    """How many decode steps ran as the compiled step (llamacpu.model.compiled_decode)."""
    from llamacpu.model import compiled_decode

    count = [0]
    original = compiled_decode.CompiledDecode.__call__

    def counting(self, *args, **kwargs):
        count[0] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(compiled_decode.CompiledDecode, "__call__", counting)
    return count


def fuzz_tally(name: str, crashed: bool = False) -> None:
    """Count one fuzzed input of reader `name` (crashed: it escaped our exception family)."""
    tried, crashes = FUZZ_COUNTS.get(name, [0, 0])
    FUZZ_COUNTS[name] = [tried + 1, crashes + int(crashed)]


# ---- hostile inputs (test_hostile.py): the outcome of every kind of case --------------------------------
HOSTILE_COUNTS: dict[str, dict[str, int]] = {}
OUTCOMES = ("ok", "crash", "hang", "wrong")


def hostile_tally(kind: str, outcome: str) -> None:
    counts = HOSTILE_COUNTS.setdefault(kind, dict.fromkeys(OUTCOMES, 0))
    counts[outcome] += 1


def pytest_terminal_summary(terminalreporter):
    if FUZZ_COUNTS:
        terminalreporter.section("fuzzing: inputs tried per reader")
        for name, (tried, crashes) in sorted(FUZZ_COUNTS.items()):
            terminalreporter.write_line(f"{name:<28} {tried:6d} inputs, {crashes} crashes")
    if HOSTILE_COUNTS:
        terminalreporter.section("hostile inputs: outcome per kind (each in a subprocess, time and memory limits)")
        width = max(len(k) for k in HOSTILE_COUNTS)
        totals = dict.fromkeys(OUTCOMES, 0)
        for kind, counts in sorted(HOSTILE_COUNTS.items()):
            terminalreporter.write_line(f"{kind:<{width}}  " + "  ".join(f"{counts[o]} {o}" for o in OUTCOMES))
            for o in OUTCOMES:
                totals[o] += counts[o]
        terminalreporter.write_line(f"{len(HOSTILE_COUNTS)} kinds: " + ", ".join(f"{totals[o]} {o}" for o in OUTCOMES))
