"""Dataset readers for zero-shot anomaly detection (test splits only).

Open a dataset with a spec string ``"<format>:<path>"``::

    from zsad_core.data import open_dataset, load_mask
    ds = open_dataset("mvtec:/data/mvtec_anomaly_detection", categories=["bottle"])
    for s in ds.samples["bottle"]:
        gt = load_mask(s.mask_path, size=(518, 518))   # all False for normal images

Formats (``list_dataset_formats()``): ``mvtec``, ``visa``, ``meta``, ``folder``, ``headct``,
``brainmri``, ``br35h``, ``isic``, ``clinicdb``, ``colondb``, ``kvasir``, ``tn3k``. The accepted
layouts are described in ``zsad_core/data/README.md`` and in each reader module.
"""

from .base import (
    IMAGE_EXTENSIONS,
    MEDICAL_PROMPT_NAMES,
    AnomalyDataset,
    DatasetLayoutError,
    Sample,
    build_dataset,
    list_images,
    pair_masks,
)
from .masks import load_mask
from .meta import write_meta_json
from .registry import (
    DatasetFormat,
    describe_dataset_format,
    list_dataset_formats,
    open_dataset,
    parse_spec,
    register_dataset_format,
    split_data_specs,
)
from .synthetic import (
    SYNTHETIC_FORMATS,
    list_categories,
    make_synthetic_dataset,
    render_sample,
    write_synthetic_dataset,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "MEDICAL_PROMPT_NAMES",
    "SYNTHETIC_FORMATS",
    "AnomalyDataset",
    "DatasetFormat",
    "DatasetLayoutError",
    "Sample",
    "build_dataset",
    "describe_dataset_format",
    "list_categories",
    "list_dataset_formats",
    "list_images",
    "load_mask",
    "make_synthetic_dataset",
    "open_dataset",
    "pair_masks",
    "parse_spec",
    "register_dataset_format",
    "render_sample",
    "split_data_specs",
    "write_meta_json",
    "write_synthetic_dataset",
]
