"""The data sources `config.data.source` names: one module per source, found by module path.

`config.data.source = '<name>'` selects the module `data_pipelines.sources.<name>`, as
`config.method` selects `lowlight_jax.methods.<name>`; `data_pipelines.pipeline` only looks the
module up (`pipeline.source_module`), so adding a source never edits the pipeline. A dotted value
(`'my_project.data.night_cam'`) is imported as a full module path, so a source can also live
outside this repository. Modules whose names start with '_' are not sources.

A source module defines:

  make_train_loader(data_cfg, *, batch_size, seed, shard_index=None, shard_count=None)
      -> an iterable whose `iter()` yields per-process batches (dicts of numpy arrays) forever,
         with a checkpointable iterator (`get_state`/`set_state`; a grain DataLoader or
         IterDataset). shard_index/shard_count None means this JAX process's shard.
  make_eval_set(data_cfg, split='test')
      -> [{'name': str, 'low': HxWx3 float32, 'high': HxWx3 float32 or None}] in a fixed order.

Random-access sources build both from `data_pipelines.loaders` (`make_loader`: sharding, the
topology-independent global batch order, workers; `image_transforms`; `folder_eval_set`), which is
what keeps every source's batch order deterministic. Source modules never import `pipeline`.
"""
