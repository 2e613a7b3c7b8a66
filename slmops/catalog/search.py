"""Filtering, ranked text search and did-you-mean over the catalog."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from slmops.catalog.schema import Catalog, SizeClass, Variant


@dataclass(frozen=True)
class VariantFilter:
    """Criteria for :func:`filter_variants`; ``None`` means 'any'."""

    family: str | None = None
    size_class: SizeClass | None = None
    capability: str | None = None
    task: str | None = None
    max_params: int | None = None


def filter_variants(catalog: Catalog, criteria: VariantFilter) -> list[Variant]:
    """Variants matching every given criterion, smallest first."""
    out = [
        v
        for v in catalog.variants.values()
        if (criteria.family is None or v.family == criteria.family)
        and (criteria.size_class is None or v.size_class == criteria.size_class)
        and (criteria.capability is None or criteria.capability in v.capabilities)
        and (criteria.task is None or v.task == criteria.task)
        and (criteria.max_params is None or v.params <= criteria.max_params)
    ]
    return sorted(out, key=lambda v: (v.params, v.id))


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9.]+", text.lower()) if t]


def _haystack(catalog: Catalog, v: Variant) -> dict[str, float]:
    """Searchable fields with their weights."""
    family = catalog.families[v.family]
    return {
        v.id: 5.0,
        v.repo_id.lower(): 4.0,
        family.display_name.lower(): 3.0,
        v.task: 2.0,
        " ".join(v.capabilities).replace("_", " "): 2.0,
        v.architecture.lower(): 1.0,
        " ".join(v.languages): 0.5,
    }


def search(catalog: Catalog, text: str, *, limit: int = 10) -> list[tuple[Variant, float]]:
    """Variants ranked by how well they match ``text`` (every query token must match somewhere)."""
    query = _tokens(text)
    if not query:
        return []
    scored: list[tuple[Variant, float]] = []
    for v in catalog.variants.values():
        fields = _haystack(catalog, v)
        total = 0.0
        for token in query:
            best = 0.0
            for field, weight in fields.items():
                words = _tokens(field)
                if token in words:
                    best = max(best, weight * 2)
                elif token in field:
                    best = max(best, weight)
                elif len(token) >= 4 and any(
                    difflib.SequenceMatcher(None, token, w).ratio() >= 0.8 for w in words
                ):  # a typo: "smol2" ~ "smollm2"
                    best = max(best, weight * 0.5)
            if best == 0.0:
                break
            total += best
        else:
            if v.id == text.strip().lower():
                total += 100.0
            scored.append((v, total))
    scored.sort(key=lambda item: (-item[1], item[0].params, item[0].id))
    return scored[:limit]


def suggest(catalog: Catalog, unknown_id: str, *, limit: int = 3) -> list[str]:
    """Close variant ids for a mistyped one (did-you-mean)."""
    ids = list(catalog.variants)
    close = difflib.get_close_matches(unknown_id.lower(), ids, n=limit, cutoff=0.6)
    if close:
        return close
    return [v.id for v, _ in search(catalog, unknown_id, limit=limit)]
