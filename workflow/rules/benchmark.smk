# 6. App. A on the machine that runs it: training-step time and peak memory per criterion,
#    and prior-sampling / generation time (python -m kaem.bench, one process per benchmark);
#    and its cost curves, one job per sweep (python -m kaem.bench --sweep).


rule benchmark:
    output:
        BENCHMARK_FILE,
    params:
        # Not the sweeps' settings: changing those reruns the sweeps alone.
        settings={k: v for k, v in config["benchmark"].items() if k != "sweeps"},
    log:
        "logs/benchmark.log",
    benchmark:
        "benchmarks/benchmark.tsv"
    # Every core, so no other job of the run shares the machine while timings are taken (the
    # figures are for the machine, as App. A's were for its GPU).
    threads: workflow.cores
    conda:
        "../envs/kaem.yaml"
    script:
        "../scripts/benchmark.py"


rule benchmark_sweep:
    output:
        sweep_file("{sweep}"),
    params:
        repeats=config["benchmark"]["sweeps"]["repeats"],
        values=sweep_values,
        device=config["benchmark"]["device"],
        timed_image_steps=config["benchmark"]["sweeps"]["timed_image_steps"],
    log:
        "logs/benchmark/sweeps/{sweep}.log",
    benchmark:
        "benchmarks/benchmark/sweeps/{sweep}.tsv"
    # Every core, as the benchmark rule: timings taken with the machine to themselves.
    threads: workflow.cores
    conda:
        "../envs/kaem.yaml"
    script:
        "../scripts/sweep.py"
