# 7. Figures, one file per job, each from its own cell's files: samples (App. G), training
#    curves, FID/KID regressions, learned priors against their references (Fig. 3),
#    temperature schedules (Figs. 10-11); and the benchmark plot (App. A). Touching one
#    cell redraws only that cell's figures.


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
