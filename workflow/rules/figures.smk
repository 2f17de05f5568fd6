# 7. Figures, one file per job, each from its own cell's files: samples (App. G), training
#    curves, FID/KID regressions, learned priors against their references (Fig. 3),
#    temperature schedules (Figs. 10-11); the benchmark plot (App. A); and a table's own:
#    FID_inf against training seconds, its rows' samples side by side. Touching one cell
#    redraws only that cell's figures (and its tables').


rule figure:
    input:
        unpack(figure_inputs),
    output:
        report(
            figure_file("{cell}", "{figure}"),
            caption="../report/figure.rst",
            category="Figures",
            subcategory="{cell}",
            labels={"cell": "{cell}", "figure": "{figure}"},
        ),
    params:
        grid_images=config["figures"]["grid_images"],
        prior_rows=config["figures"]["prior_rows"],
        seed=config["figures"]["seed"],
    log:
        "logs/figures/{cell}/{figure}.log",
    localrule: True
    conda:
        "../envs/kaem.yaml"
    script:
        "../scripts/figures.py"


rule figure_benchmark:
    input:
        bench=BENCHMARK_FILE,
    output:
        report(
            BENCHMARK_FIGURE,
            caption="../report/benchmark.rst",
            category="Figures",
            subcategory="Benchmarks",
            labels={"cell": "-", "figure": "benchmark"},
        ),
    log:
        "logs/figures/benchmark.log",
    localrule: True
    conda:
        "../envs/kaem.yaml"
    script:
        "../scripts/figures.py"


rule figure_sweep:
    input:
        sweep=sweep_file("{sweep}"),
    output:
        report(
            sweep_figure_file("{sweep}"),
            caption="../report/sweep.rst",
            category="Figures",
            subcategory="Benchmarks",
            labels={"cell": "-", "figure": "{sweep}"},
        ),
    log:
        "logs/figures/benchmark/{sweep}.log",
    localrule: True
    conda:
        "../envs/kaem.yaml"
    script:
        "../scripts/figures.py"


rule figure_table:
    input:
        unpack(table_figure_inputs),
    output:
        report(
            table_figure_file("{table}", "{plot}"),
            caption="../report/table_figure.rst",
            category="Figures",
            subcategory="{table}",
            labels={"cell": "{table}", "figure": "{plot}"},
        ),
    params:
        labels=table_figure_labels,
        grid_images=config["figures"]["grid_images"],
    log:
        "logs/figures/tables/{table}/{plot}.log",
    localrule: True
    conda:
        "../envs/kaem.yaml"
    script:
        "../scripts/figures.py"
