# 6. App. A on the machine that runs it: training-step time and peak memory per criterion,
#    and prior-sampling / generation time (python -m kaem.bench, one process per benchmark).


rule benchmark:
    output:
        BENCHMARK_FILE,
    params:
        settings=config["benchmark"],
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
