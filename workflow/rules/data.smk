# 1. One HDF5 file per dataset with the paper's train/test sizes (kaem.data.prepare_dataset).


rule prepare_data:
    input:
        source_input,
    output:
        data_file("{dataset}"),
    params:
        settings=dataset_settings,
    log:
        "logs/prepare_data/{dataset}.log",
    benchmark:
        "benchmarks/prepare_data/{dataset}.tsv"
    threads: 1
    conda:
        "../envs/kaem.yaml"
    script:
        "../scripts/prepare_data.py"
