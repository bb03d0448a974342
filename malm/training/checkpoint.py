"""Run directories: weights as safetensors, everything else as JSON, every file written atomically.

    RUN/config.json              ExperimentConfig.to_dict()
    RUN/vocab.json               the vocabulary the recipe encoder was trained with
    RUN/{last,best}.safetensors  RetrievalModel weights (what export / embed / eval need)
    RUN/{last,best}.json         step, epoch, validation metrics, config hash
    RUN/last.state.safetensors   full task weights (incl. training-only heads), optimizer tensors, RNG tensors
    RUN/last.state.json          step, epoch, position in the epoch, best so far, optimizer layout, RNG scalars
    RUN/metrics.jsonl            one JSON object per log line

Nothing here unpickles: tensors come from safetensors, the rest from JSON.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from malm._atomic import atomic_path, write_text_atomic
from malm.errors import MalmError
from malm.text import Vocabulary
from malm.training.config import ConfigError, ExperimentConfig
from malm.training.models.retrieval import RetrievalModel

TAGS = ("last", "best")


@dataclass
class LoadedModel:
    model: RetrievalModel  # in eval mode on the requested device
    config: ExperimentConfig
    vocab: Any  # malm.text.Vocabulary
    meta: dict[str, Any]  # the tag's JSON (step, epoch, metrics)


def _save_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=metadata)


def _load_tensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise MalmError(f"{path}: checkpoint file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except MalmError:
        raise
    except Exception as e:  # corrupt / truncated file
        raise MalmError(f"{path}: not a readable safetensors file ({e})") from e


def _header_meta(header: dict[str, str], path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(header["meta"])
    except json.JSONDecodeError as e:
        raise MalmError(f"{path}: broken metadata in the safetensors header ({e})") from None
    if not isinstance(meta, dict):
        raise MalmError(f"{path}: metadata in the safetensors header is not an object")
    return meta


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MalmError(f"{path}: not found (is {path.parent} a malm training run?)") from None
    except json.JSONDecodeError as e:
        raise MalmError(f"{path}: broken JSON ({e})") from None


# ------------------------------------------------------------------------------------------- weights


def save_run_files(run_dir: Path, config: ExperimentConfig, vocab: Any) -> None:
    write_text_atomic(run_dir / "config.json", config.to_json())
    write_text_atomic(run_dir / "vocab.json", json.dumps(vocab.to_dict()) + "\n")


def save_weights(run_dir: Path, tag: str, model: RetrievalModel, meta: dict[str, Any]) -> None:
    """`{tag}.safetensors` then `{tag}.json` (the JSON names the step, so a torn pair is detectable)."""
    step = str(meta.get("step", 0))
    full = {**meta, "tag": tag, "saved_at": time.time()}
    # The JSON also rides in the safetensors header: a kill between the two writes leaves new weights and an
    # old JSON, and the header's copy still describes the weights (load_model prefers it then).
    _save_tensors(run_dir / f"{tag}.safetensors", model.state_dict(),
                  {"step": step, "format": "malm-weights-1", "meta": json.dumps(full)})
    write_json(run_dir / f"{tag}.json", full)


HEADS_SUFFIX = ".heads.safetensors"


def save_heads(run_dir: Path, tag: str, task: torch.nn.Module, step: int) -> None:
    """`{tag}.heads.safetensors`: the task's matching heads saved with the `tag` weights, so export ships the
    re-ranking head from the same checkpoint as the encoders (keys as in the train state: `task.objectives.*`).
    Nothing is written for a task without a matching head."""
    heads = {f"task.{k}": v for k, v in task.state_dict().items() if ".matching." in f".{k}"}
    if heads:
        _save_tensors(run_dir / f"{tag}{HEADS_SUFFIX}", heads, {"step": str(step), "format": "malm-heads-1"})


def read_config(run_dir: str | Path) -> ExperimentConfig:
    run_dir = Path(run_dir)
    try:
        return ExperimentConfig.from_dict(read_json(run_dir / "config.json"))
    except ConfigError as e:
        raise MalmError(f"{run_dir / 'config.json'}: {e}") from e


def load_model(run_dir: str | Path, tag: str = "best", device: str | torch.device = "cpu") -> LoadedModel:
    """The trained two-tower model of a run directory, in eval mode."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MalmError(f"{run_dir}: run directory not found")
    if tag not in TAGS:
        raise MalmError(f"checkpoint tag {tag!r}: one of {', '.join(TAGS)}")
    config = read_config(run_dir)
    vocab = Vocabulary.from_dict(read_json(run_dir / "vocab.json"), source=str(run_dir / "vocab.json"))
    meta = read_json(run_dir / f"{tag}.json") if (run_dir / f"{tag}.json").exists() else {}
    tensors, header = _load_tensors(run_dir / f"{tag}.safetensors")
    if header.get("step") is not None and str(meta.get("step")) != header["step"] and "meta" in header:
        meta = _header_meta(header, run_dir / f"{tag}.safetensors")  # killed between the two writes
    if header.get("step") is not None and str(meta.get("step")) != header["step"]:
        raise MalmError(f"{run_dir}: {tag}.json (step {meta.get('step')}) and {tag}.safetensors "
                        f"(step {header['step']}) disagree; the run was interrupted while saving")
    model = RetrievalModel(config.model, vocab_size=len(vocab))
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in tensors.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:  # load_state_dict would raise a bare RuntimeError: a checkpoint of another config
        raise MalmError(f"{run_dir / (tag + '.safetensors')}: weights do not fit config.json "
                        f"(shape mismatch: {', '.join(wrong[:3])}); is this checkpoint from another config?")
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise MalmError(f"{run_dir / (tag + '.safetensors')}: weights do not fit config.json "
                        f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.to(device).eval()
    return LoadedModel(model=model, config=config, vocab=vocab, meta=meta)


# --------------------------------------------------------------------------------------- train state


def rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).view(np.int32).copy())
    py = random.getstate()
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(cached)], "python": [py[0], list(py[1]), py[2]]}
    return tensors, meta


def set_rng_state(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().view(np.uint32), pos, has_gauss, cached))
    v, state, gauss = meta["python"]
    random.setstate((v, tuple(state), gauss))


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"optim.{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for pid, st in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(st)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_train_state(run_dir: Path, task: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     progress: dict[str, Any]) -> None:
    """Everything `--resume` needs. The JSON is written last and names the step the tensors hold."""
    tensors = {f"task.{k}": v for k, v in task.state_dict().items()}
    opt_t, opt_meta = optimizer_state(optimizer)
    rng_t, rng_meta = rng_state()
    tensors |= opt_t | rng_t
    step = str(progress["step"])
    meta = {**progress, "optimizer": opt_meta, "rng": rng_meta}
    # As in save_weights: the header's copy of the JSON survives a kill between the two writes.
    _save_tensors(run_dir / "last.state.safetensors", tensors,
                  {"step": step, "format": "malm-state-1", "meta": json.dumps(meta)})
    write_json(run_dir / "last.state.json", meta)


def load_train_state(run_dir: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    meta = read_json(run_dir / "last.state.json")
    tensors, header = _load_tensors(run_dir / "last.state.safetensors")
    if header.get("step") != str(meta.get("step")) and "meta" in header:
        meta = _header_meta(header, run_dir / "last.state.safetensors")  # killed between the two writes
    if header.get("step") != str(meta.get("step")):
        raise MalmError(f"{run_dir}: last.state.json (step {meta.get('step')}) and last.state.safetensors "
                        f"(step {header.get('step')}) disagree; the run was killed while saving — "
                        "delete last.state.* to restart from scratch")
    return tensors, meta


def restore_task(task: torch.nn.Module, tensors: dict[str, Tensor]) -> None:
    state = {k[len("task."):]: v for k, v in tensors.items() if k.startswith("task.")}
    task.load_state_dict(state)
