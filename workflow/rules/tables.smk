# 8. Tables, one per job: Tables 1 and 2 and App. H (each from its own rows' cells), every
#    cell, the feature classifiers and App. A's benchmarks, as CSV, Markdown and LaTeX, with
#    the paper's published values beside ours.


rule table:
    input:
        unpack(table_inputs),
    output:
        csv=report(
            "results/tables/{table}.csv",
            caption="../report/table.rst",
            category="Tables",
            labels=table_labels,
        ),
        md="results/tables/{table}.md",
        tex="results/tables/{table}.tex",
    params:
        table=table_params,
    log:
        "logs/tables/{table}.log",
    localrule: True
    conda:
        "../envs/kaem.yaml"
    script:
        "../scripts/tables.py"
