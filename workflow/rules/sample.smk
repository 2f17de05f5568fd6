# 3. The generated set of each cell: as many images as the largest regression size, in
# batches, into one HDF5 file.


rule sample:
    input:
        model=model_file("{cell}"),
    output:
        samples_file("{cell}"),
    params:
        n=sample_count,
        batch_size=config["sampling"]["batch_size"],
        seed=config["sampling"]["seed"],
        device=config["device"],
    log:
        "logs/sample/{cell}.log",
    benchmark:
        "benchmarks/sample/{cell}.tsv"
    threads: 1
    resources:
        gpu=cell_gpu,
    conda:
        "../envs/kaem.yaml"
    script:
        "../scripts/sample.py"
