"""`malm eval`: the Recipe1M retrieval protocol on saved embeddings or on a checkpoint.

    malm eval --embeddings emb.npz [--protocol ht|tfood] [--size 1000 --size 10000] [--seed 0] [--json]
    malm eval --checkpoint runs/malm --data DATA [--split test] [--tag best] [--json]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import typer

from malm._atomic import atomic_path
from malm.commands._options import choice, split_ints
from malm.console import console as data_console
from malm.errors import MalmError
from malm.progress import progress
from malm.recipe1m import PROTOCOLS, SPLITS

Split = choice(SPLITS)
Protocol = choice(PROTOCOLS)


def _load_npz(path: Path):  # -> tuple[np.ndarray, np.ndarray]
    import zipfile

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("image", "recipe") if k not in z.files]
            if missing:
                raise MalmError(f"{path}: missing array(s) {', '.join(missing)} (found: {', '.join(z.files) or 'none'}); "
                                "expected `image` and `recipe`, row i of each a pair")
            return z["image"], z["recipe"]
    except FileNotFoundError:
        raise MalmError(f"{path}: file not found") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise MalmError(f"{path}: not a readable .npz of numeric arrays ({e})") from None


def _print_table(result: dict) -> None:
    # on use only: keeps numpy out of the command line's start
    from rich.table import Table

    from malm.evaluation import TABLE_HEADER, table_rows

    table = Table(title=f"protocol {result['protocol']} · {result['n']} pairs · seed {result['seed']}")
    for col in TABLE_HEADER:
        table.add_column(col, justify="left" if col in ("direction", "size") else "right")
    for cells in table_rows(result):
        table.add_row(*map(str, cells))
    console = data_console()  # notes quote file names: plain text, never markup
    console.print(table)
    for note in result["notes"]:
        console.print(f"note: {note}")


def eval_command(
    embeddings: Path | None = typer.Option(None, "--embeddings", help=".npz with arrays `image` and `recipe` [N, D]"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Run folder to embed --data with"),
    data: Path | None = typer.Option(None, "--data", help="Recipe1M-layout folder (with --checkpoint)"),
    split: Split = typer.Option("test", "--split", help="Split to embed (with --checkpoint)"),
    tag: Literal["best", "last"] = typer.Option("best", "--tag", help="Checkpoint tag"),
    device: str = typer.Option("cpu", "--device", help="Torch device for --checkpoint"),
    save: Path | None = typer.Option(None, "--save", help="Also write the embeddings (and ids) to this .npz"),
    protocol: Protocol = typer.Option("ht", "--protocol", help="ht: 10 random subsets; tfood: disjoint bags"),
    size: list[str] | None = typer.Option(None, "--size", help="Subset sizes: --size 1000 --size 10000 or --size 1000,10000 (default 1k and 10k)"),
    seed: int = typer.Option(0, "--seed", help="Seed of the subset sampling"),
    json_out: bool = typer.Option(False, "--json", help="Print the metrics as JSON on stdout"),
) -> None:
    """Image→recipe and recipe→image medR and R@1/5/10 (percent) on 1k/10k subsets."""
    # on use only: keeps numpy out of the command line's start
    import numpy as np

    from malm.evaluation import retrieval_metrics

    if (embeddings is None) == (checkpoint is None):
        raise MalmError("give exactly one source: --embeddings FILE.npz or --checkpoint RUN --data DIR")
    ids = None
    if embeddings is not None:
        if data is not None:
            raise MalmError("--data goes with --checkpoint, not with --embeddings")
        image_emb, recipe_emb = _load_npz(embeddings)
    else:
        if data is None:
            raise MalmError("--checkpoint needs --data DIR (the Recipe1M-layout folder to embed)")
        # on use only: keeps Pillow, hnswlib, numpy, torch out of the command line's start
        from malm.training.embed import embed_split

        typer.echo(f"embedding {data} split {split} with {checkpoint} ({tag}) on {device}", err=True)
        with progress(f"embedding the {split} split"):
            image_emb, recipe_emb, ids = embed_split(checkpoint, data, split=split, tag=tag, device=device)
    if save is not None:
        arrays = {"image": np.asarray(image_emb), "recipe": np.asarray(recipe_emb)}
        if ids is not None:
            arrays["ids"] = np.asarray([str(i) for i in ids])
        with atomic_path(save) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
    result = retrieval_metrics(image_emb, recipe_emb, sizes=split_ints(size, "--size") or None, protocol=protocol, seed=seed)
    if json_out:
        typer.echo(json.dumps(result, indent=1))
    else:
        _print_table(result)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
