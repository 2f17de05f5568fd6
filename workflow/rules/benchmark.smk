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
    threads: 1
    conda:
        "../envs/kaem.yaml"
    script:
        "../scripts/benchmark.py"
