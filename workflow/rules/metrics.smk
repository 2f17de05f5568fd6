# 4. Features for FID/KID: Inception pool3 (clean-fid, mode "clean") or a small classifier
#    trained on the dataset's labels, as each dataset's `features` says; real-image features
#    are computed once per dataset and shared by its cells.
# 5. FID and KID of random generated subsets at each size, extrapolated to 1/N -> 0, per
#    cell and seed; and for a real-vs-real row, held-out real images scored the same way.


rule classifier:
    input:
        data=data_file("{dataset}"),
    output:
        model=classifier_file("{dataset}"),
        summary=classifier_summary_file("{dataset}"),
    params:
        settings=config["features"]["classifier"],
        device=config["device"],
    log:
        "logs/classifier/{dataset}.log",
    benchmark:
        "benchmarks/classifier/{dataset}.tsv"
    threads: 1
    conda:
        "../envs/kaem.yaml"
    script:
        "../scripts/classifier.py"


rule features_real:
    input:
        unpack(real_features_inputs),
    output:
        real_features_file("{dataset}"),
    params:
        kind=dataset_extractor,
        max_images=config["metrics"]["real_images"],
        batch_size=config["features"]["batch_size"],
        weights=config["features"]["inception_weights"],
        device=config["device"],
    log:
        "logs/features_real/{dataset}.log",
    benchmark:
        "benchmarks/features_real/{dataset}.tsv"
    threads: 1
    conda:
        "../envs/kaem.yaml"
    script:
        "../scripts/features.py"


rule features_real_holdout:
    input:
        unpack(real_features_inputs),
    output:
        real_holdout_features_file("{dataset}"),
    params:
        kind=dataset_extractor,
        range=real_holdout_range,
        batch_size=config["features"]["batch_size"],
        weights=config["features"]["inception_weights"],
        device=config["device"],
    log:
        "logs/features_real_holdout/{dataset}.log",
    benchmark:
        "benchmarks/features_real_holdout/{dataset}.tsv"
    threads: 1
    conda:
        "../envs/kaem.yaml"
    script:
        "../scripts/features.py"


rule features_generated:
    input:
        unpack(generated_features_inputs),
    output:
        generated_features_file("{cell}", "{seed}"),
    params:
        kind=cell_extractor,
        batch_size=config["features"]["batch_size"],
        weights=config["features"]["inception_weights"],
        device=config["device"],
    log:
        "logs/features_generated/{cell}/seed{seed}.log",
    benchmark:
        "benchmarks/features_generated/{cell}/seed{seed}.tsv"
    threads: 1
    conda:
        "../envs/kaem.yaml"
    script:
        "../scripts/features.py"


rule metrics:
    input:
        real=cell_real_features,
        generated=generated_features_file("{cell}", "{seed}"),
    output:
        metrics_file("{cell}", "{seed}"),
    params:
        sizes=cell_sizes_param,
        seed=config["metrics"]["seed"],
        kid_subsets=config["metrics"]["kid_subsets"],
        kid_subset_size=config["metrics"]["kid_subset_size"],
    log:
        "logs/metrics/{cell}/seed{seed}.log",
    benchmark:
        "benchmarks/metrics/{cell}/seed{seed}.tsv"
    threads: 1
    conda:
        "../envs/kaem.yaml"
    script:
        "../scripts/metrics.py"


rule metrics_real:
    input:
        real=real_features_file("{dataset}"),
        generated=real_holdout_features_file("{dataset}"),
    output:
        real_metrics_file("{dataset}"),
    params:
        sizes=config["metrics"]["sizes"],
        seed=config["metrics"]["seed"],
        kid_subsets=config["metrics"]["kid_subsets"],
        kid_subset_size=config["metrics"]["kid_subset_size"],
    log:
        "logs/metrics/real/{dataset}.log",
    benchmark:
        "benchmarks/metrics/real/{dataset}.tsv"
    threads: 1
    conda:
        "../envs/kaem.yaml"
    script:
        "../scripts/metrics.py"


# Held-out log p(x) of a final model, by its kind's estimator (KAEM: importance sampling with
# its exact prior; the VAE: the importance-weighted bound), for the tables with evidence.


rule evidence:
    input:
        model=model_file("{cell}", "{seed}"),
        data=cell_data,
    output:
        evidence_file("{cell}", "{seed}"),
    params:
        settings=config["evidence"],
        device=config["device"],
    log:
        "logs/evidence/{cell}/seed{seed}.log",
    benchmark:
        "benchmarks/evidence/{cell}/seed{seed}.tsv"
    threads: 1
    resources:
        gpu=cell_gpu,
    conda:
        "../envs/kaem.yaml"
    script:
        "../scripts/evidence.py"
