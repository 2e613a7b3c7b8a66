"""The model catalog: families and variants as validated data, search and estimates."""

from slmops.catalog.schema import CAPABILITIES, Catalog, Family, OfflineSource, SizeClass, Variant, load_catalog

__all__ = ["CAPABILITIES", "Catalog", "Family", "OfflineSource", "SizeClass", "Variant", "load_catalog"]
