# 2. Training per cell: KAEM with IS, ULA-MLE or thermodynamic training, or the VAE.
#
# A killed job resumes from the checkpoint in the cell's work folder when it runs again
# (--rerun-incomplete); a finished cell is not retrained, and if Snakemake reruns it anyway
# (changed code, say) the finished checkpoint makes the training a no-op.


rule train:
    input:
        data=cell_data,
    output:
        model=model_file("{cell}"),
        log=train_log_file("{cell}"),
        config=train_config_file("{cell}"),
    params:
        settings=cell_settings,
        workdir=cell_workdir,
        device=config["device"],
    log:
        "logs/train/{cell}.log",
    benchmark:
        "benchmarks/train/{cell}.tsv"
    threads: 1
    resources:
        gpu=cell_gpu,
    conda:
        "../envs/kaem.yaml"
    script:
        "../scripts/train.py"
