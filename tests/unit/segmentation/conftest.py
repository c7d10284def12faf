from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

DATA = Path(__file__).resolve().parents[2] / "data" / "segmentation"


@pytest.fixture(scope="session")
def real_masks() -> np.ndarray[Any, Any]:
    return np.asarray(tifffile.imread(DATA / "stardist_tests_mask2d_256.tif")).astype(np.int32)


@pytest.fixture(scope="session")
def real_image() -> np.ndarray[Any, Any]:
    return np.asarray(tifffile.imread(DATA / "stardist_tests_img2d_256.tif"))
