# 3b. The FID-against-training-seconds curve of a table at matched seconds: the snapshot each
#     training took at every train.snapshot_seconds below its budget is published from the
#     work folder, then sampled, featured and scored exactly as the final model is (the same
#     rules, scripts and settings); the curve's last point is the final model itself.


rule snapshot:
    input:
        # The training is finished, and its summary says which snapshots it took.
        summary=train_summary_file("{cell}", "{seed}"),
    output:
        snapshot_file("{cell}", "{seed}", "{t}"),
    params:
        source=snapshot_source,
    log:
        "logs/snapshot/{cell}/seed{seed}/at{t}s.log",
    localrule: True
    # A copy, in the driver's process (no job process is worth starting for it).
    run:
        publish_snapshot(input.summary, params.source, output[0], float(wildcards.t), log[0])


use rule sample as sample_snapshot with:
    input:
        model=snapshot_file("{cell}", "{seed}", "{t}"),
    output:
        snapshot_samples_file("{cell}", "{seed}", "{t}"),
    log:
        "logs/sample/{cell}/seed{seed}/at{t}s.log",
    benchmark:
        "benchmarks/sample/{cell}/seed{seed}/at{t}s.tsv"


use rule features_generated as features_snapshot with:
    input:
        unpack(snapshot_features_inputs),
    output:
        snapshot_features_file("{cell}", "{seed}", "{t}"),
    log:
        "logs/features_generated/{cell}/seed{seed}/at{t}s.log",
    benchmark:
        "benchmarks/features_generated/{cell}/seed{seed}/at{t}s.tsv"


use rule metrics as metrics_snapshot with:
    input:
        real=cell_real_features,
        generated=snapshot_features_file("{cell}", "{seed}", "{t}"),
    output:
        snapshot_metrics_file("{cell}", "{seed}", "{t}"),
    log:
        "logs/metrics/{cell}/seed{seed}/at{t}s.log",
    benchmark:
        "benchmarks/metrics/{cell}/seed{seed}/at{t}s.tsv"
