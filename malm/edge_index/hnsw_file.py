"""Check an hnswlib index file before hnswlib reads it: hnswlib trusts every byte it loads, so a crafted file
(a neighbour id past the end, a link count above M, an entry point on the wrong level) crashes the process.

The layout is hnswlib 0.8.0's `HierarchicalNSW::saveIndex` (hnswlib/hnswalg.h), little-endian:

    size_t offsetLevel0, max_elements, cur_element_count, size_data_per_element, label_offset, offsetData
    int maxlevel; unsigned enterpoint_node; size_t maxM, maxM0, M; double mult; size_t ef_construction
    cur_element_count x size_data_per_element bytes of level 0: per element
        uint32 header (low 16 bits: link count; byte 2: deleted flag), maxM0 x uint32 neighbour ids,
        dim x float32 vector, uint64 label
    then per element: uint32 linkListSize, and that many bytes of upper levels: linkListSize / (4 + 4 maxM)
        blocks (levels 1..), each uint32 header (link count) + maxM x uint32 neighbour ids

Every bound a search or an update relies on is checked here, in numpy, from the bytes (no hnswlib).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np

from malm.errors import BundleError

HEADER = struct.Struct("<6QiI3QdQ")  # 96 bytes
MAX_LEVEL = 64  # hnswlib draws levels as -ln(U) / ln(M): a level above this is never drawn


@dataclass(frozen=True)
class IndexHeader:
    max_elements: int
    count: int  # elements stored, deleted ones included
    dim: int
    M: int
    ef_construction: int
    labels: np.ndarray  # uint64 label of each element
    deleted: np.ndarray  # bool per element


def validate(data: bytes, where: str, dim: int, M: int, live: Collection[int] | None = None) -> IndexHeader:
    """Check `data` (a whole index file) against the manifest's `dim` and `M`; with `live`, also that its
    non-deleted labels are exactly those. Raises BundleError naming `where` and the field."""
    def bad(what: str) -> BundleError:
        return BundleError(f"index {where}: {what} (not an hnswlib index written by malm, or corrupted)")

    if len(data) < HEADER.size:
        raise bad(f"file is truncated ({len(data)} bytes)")
    (off0, max_el, count, per_el, label_off, data_off, maxlevel, enter, max_m, max_m0, m, mult,
     ef_c) = HEADER.unpack_from(data)
    if label_off > data_off and (label_off - data_off) % 4 == 0 and (label_off - data_off) // 4 != dim:
        raise BundleError(f"index {where}: vectors have dim {(label_off - data_off) // 4}, manifest says {dim}")
    if off0 != 0 or m != M or max_m != M or max_m0 != 2 * M:
        raise bad(f"built with M={m} (maxM={max_m}, maxM0={max_m0}, offsetLevel0={off0}), manifest says M={M}")
    links0 = 4 + 4 * max_m0
    if data_off != links0 or label_off != links0 + 4 * dim or per_el != label_off + 8:
        raise bad(f"element layout (offsetData={data_off}, label_offset={label_off}, size={per_el}) does not fit "
                  f"dim {dim}, M {M}")
    if not (math.isfinite(mult) and abs(mult * math.log(M) - 1) < 1e-6):
        raise bad(f"level multiplier {mult!r} is not 1/ln(M)")
    # Capacity: what hnswlib allocates at load. Writers grow it by 1.5x at most; 2x + 1024 is generous.
    if count > max_el or max_el > 2 * count + 1024 or ef_c < 1:
        raise bad(f"header has {count} elements, capacity {max_el}, ef_construction {ef_c}")
    end0 = HEADER.size + count * per_el
    if len(data) < end0 + 4 * count:
        raise bad(f"file is truncated ({len(data)} bytes, needs at least {end0 + 4 * count})")
    level0 = np.frombuffer(data, np.uint8, count * per_el, HEADER.size).reshape(count, per_el)
    head = level0[:, :4].copy().view("<u4")[:, 0]
    n_links = head & 0xFFFF
    deleted = level0[:, 2] != 0
    ids = level0[:, 4:links0].copy().view("<u4")
    labels = level0[:, label_off:].copy().view("<u8")[:, 0]
    if (n_links > max_m0).any():
        raise bad(f"element {int(np.argmax(n_links > max_m0))} has more than maxM0={max_m0} links")
    used = np.arange(max_m0)[None, :] < n_links[:, None]
    if (ids[used] >= count).any():
        raise bad("a level-0 link points past the last element")
    if level0[:, 2].max(initial=0) > 1 or level0[:, 3].any():
        raise bad("an element's header has unknown flags")
    if not np.isfinite(level0[:, data_off:label_off].copy().view("<f4")).all():
        raise bad("a vector has NaN or infinite values")
    if labels.max(initial=0) >= 2**63 or len(np.unique(labels)) != count:
        raise bad("labels are out of range or repeated")

    levels = _upper_levels(data, end0, count, max_m, bad)
    if count == 0:
        if maxlevel != -1 or enter != 0xFFFFFFFF:
            raise bad(f"an empty index has entry point {enter} at level {maxlevel}")
    elif not (0 <= maxlevel <= MAX_LEVEL and enter < count and levels[enter][0] == maxlevel
              and max(lv for lv, _ in levels) == maxlevel):
        raise bad(f"entry point {enter} / top level {maxlevel} do not match the elements' levels")
    size_links = 4 + 4 * max_m
    for i, (lv, start) in enumerate(levels):
        for level in range(1, lv + 1):
            block = data[start + (level - 1) * size_links: start + level * size_links]
            n = int.from_bytes(block[:2], "little")
            if n > max_m or block[2] or block[3]:
                raise bad(f"element {i} level {level} has a bad link list header")
            for j in struct.unpack_from(f"<{n}I", block, 4):
                # A search at this level reads the neighbour's list at the same level: it must have one.
                if j >= count or levels[j][0] < level:
                    raise bad(f"element {i} level {level} links to element {j}, which is not on that level")
    if live is not None:
        have = {int(v) for v in labels[~deleted]}
        if have != {int(v) for v in live}:
            raise bad(f"its {len(have)} live labels are not the store's {len(live)} recipes")
    return IndexHeader(int(max_el), int(count), dim, M, int(ef_c), labels, deleted)


def _upper_levels(data: bytes, pos: int, count: int, max_m: int, bad: Callable[[str], BundleError]) -> list[tuple[int, int]]:
    """(level, offset of its upper-level link lists) per element; the file must end after the last."""
    size_links = 4 + 4 * max_m
    out: list[tuple[int, int]] = []
    unpack = struct.Struct("<I").unpack_from
    n = len(data)
    for _ in range(count):
        if pos + 4 > n:
            raise bad("link lists are truncated")
        (size,) = unpack(data, pos)
        pos += 4
        if size % size_links or size // size_links > MAX_LEVEL or pos + size > n:
            raise bad(f"a link list has {size} bytes (not levels of {size_links})")
        out.append((size // size_links, pos))
        pos += size
    if pos != n:
        raise bad(f"{n - pos} bytes after the last link list")
    return out
