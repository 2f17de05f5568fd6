# 4. Features for FID/KID: Inception pool3 (clean-fid, mode "clean") or a small classifier
#    trained on the dataset's labels, as each dataset's `features` says; real-image features
#    are computed once per dataset and shared by its cells.
# 5. FID and KID of random generated subsets at each size, extrapolated to 1/N -> 0.


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


rule features_generated:
    input:
        unpack(generated_features_inputs),
    output:
        generated_features_file("{cell}"),
    params:
        kind=cell_extractor,
        batch_size=config["features"]["batch_size"],
        weights=config["features"]["inception_weights"],
        device=config["device"],
    log:
        "logs/features_generated/{cell}.log",
    benchmark:
        "benchmarks/features_generated/{cell}.tsv"
    threads: 1
    conda:
        "../envs/kaem.yaml"
    script:
        "../scripts/features.py"


rule metrics:
    input:
        real=cell_real_features,
        generated=generated_features_file("{cell}"),
    output:
        metrics_file("{cell}"),
    params:
        sizes=cell_sizes_param,
        seed=config["metrics"]["seed"],
        kid_subsets=config["metrics"]["kid_subsets"],
        kid_subset_size=config["metrics"]["kid_subset_size"],
    log:
        "logs/metrics/{cell}.log",
    benchmark:
        "benchmarks/metrics/{cell}.tsv"
    threads: 1
    conda:
        "../envs/kaem.yaml"
    script:
        "../scripts/metrics.py"
