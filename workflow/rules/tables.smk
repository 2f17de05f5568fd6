# 8. Tables 1 and 2, App. H, every cell, the feature classifiers and App. A's benchmarks, as
#    CSV, Markdown and LaTeX, with the paper's published values beside ours.


rule tables:
    input:
        unpack(table_inputs),
    output:
        table_outputs(),
    params:
        plan=TABLES,
        cells=cell_records(),
        metrics={cell: metrics_file(cell) for cell in CELLS},
        logs={cell: train_log_file(cell) for cell in CELLS},
        classifiers={d: classifier_summary_file(d) for d in CLASSIFIER_DATASETS},
    log:
        "logs/tables.log",
    localrule: True
    conda:
        "../envs/kaem.yaml"
    script:
        "../scripts/tables.py"
