"""`data.source = 'scl'`: SCL-LLE's labelled low-light inputs with positive/negative pools.

The data section is `scl_data.default_scl_data_config()` (configs/scl_lle.py); see
`data_pipelines.scl_data` for the elements, the Cityscapes layout and the embedded stand-in.
"""

from __future__ import annotations

from data_pipelines import scl_data

make_train_loader = scl_data.make_train_loader
make_eval_set = scl_data.make_eval_set
