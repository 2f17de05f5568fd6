# 2. Training per cell and seed: KAEM with IS, ULA-MLE or thermodynamic training, the VAE,
#    the latent EBM or the DDPM; each of a cell's seeds is its own job. A cell with a budget
#    (train.max_seconds) stops at it, taking a snapshot at each train.snapshot_seconds.
#
# A killed job resumes from the checkpoint in the cell's work folder when it runs again
# (--rerun-incomplete); a finished cell is not retrained, and if Snakemake reruns it anyway
# (changed code, say) the finished checkpoint makes the training a no-op.


rule train:
    input:
        data=cell_data,
    output:
        model=model_file("{cell}", "{seed}"),
        log=train_log_file("{cell}", "{seed}"),
        config=train_config_file("{cell}", "{seed}"),
        summary=train_summary_file("{cell}", "{seed}"),
    params:
        settings=cell_settings,
        workdir=cell_workdir,
        device=config["device"],
    log:
        "logs/train/{cell}/seed{seed}.log",
    benchmark:
        "benchmarks/train/{cell}/seed{seed}.tsv"
    threads: 1
    # Trainings first, whenever one is ready: they are the long jobs, and on a machine that
    # runs N jobs at once every training then shares it with N - 1 others of its kind (the
    # conditions a budget of seconds is measured in), the scoring jobs coming after.
    priority: 1
    resources:
        gpu=cell_gpu,
    conda:
        "../envs/kaem.yaml"
    script:
        "../scripts/train.py"
