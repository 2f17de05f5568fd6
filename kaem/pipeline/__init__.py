"""What the Snakemake workflow's jobs call: its configuration, result files, tables, figures.

* :mod:`kaem.pipeline.config`: the config file checked against its schema and the code,
  cells resolved from presets and overrides, the settings of each job;
* :mod:`kaem.pipeline.artifacts`: JSON summaries, cached feature files, metrics per cell;
* :mod:`kaem.pipeline.tables`: the paper's tables from the results, published values beside;
* :mod:`kaem.pipeline.plots`: the paper's figures.

The model and its maths never import this package.
"""
