# 7. Learned priors against their references (Fig. 3), sample grids (App. G), temperature
#    schedules (Figs. 10-11), training curves, FID/KID regressions and benchmark plots.


rule figures:
    input:
        figure_inputs,
    output:
        figure_outputs(),
    params:
        plan=FIGURES,
        grid_images=config["figures"]["grid_images"],
        prior_rows=config["figures"]["prior_rows"],
        seed=config["figures"]["seed"],
    log:
        "logs/figures.log",
    threads: 1
    conda:
        "../envs/kaem.yaml"
    script:
        "../scripts/figures.py"
