# 3. The generated set of each cell and seed (sampled with sampling.seed + seed): as many
# images as the largest regression size, in batches, into one HDF5 file; a DDPM cell draws
# with its `sampler` (default: ancestral sampling over all T steps).


rule sample:
    input:
        model=model_file("{cell}", "{seed}"),
    output:
        samples_file("{cell}", "{seed}"),
    params:
        n=sample_count,
        batch_size=config["sampling"]["batch_size"],
        seed=sampling_seed,
        device=config["device"],
        sampler=cell_sampler_param,
    log:
        "logs/sample/{cell}/seed{seed}.log",
    benchmark:
        "benchmarks/sample/{cell}/seed{seed}.tsv"
    threads: 1
    resources:
        gpu=cell_gpu,
    conda:
        "../envs/kaem.yaml"
    script:
        "../scripts/sample.py"
