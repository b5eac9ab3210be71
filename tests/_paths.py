"""Where the real QA slices live: ../shared/data beside the checkout (CI and developers alike)."""
import os
import pathlib

SHARED_DATA = pathlib.Path(os.environ.get(
    "ATOMMEM_SHARED_DATA", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))
