"""What the Snakemake workflow's jobs call: its configuration, result files, tables, figures.

* :mod:`kaem.workflow.config`: the config file checked against its schema and the code,
  cells resolved from presets and overrides, the settings of each job;
* :mod:`kaem.workflow.artifacts`: JSON summaries, cached feature files, metrics per cell;
* :mod:`kaem.workflow.tables`: the paper's tables from the results, published values beside;
* :mod:`kaem.workflow.plots`: the paper's figures.

The model and its maths never import this package.
"""
