"""The models KAEM is compared with, each on KAEM's own generator or likelihood where the
comparison should change one thing only.

* :mod:`~kaem.baselines.vae`: the VAE of App. F.2.2 (ELBO, importance-weighted bound);
* :mod:`~kaem.baselines.lebm`: Pang et al.'s (2020) latent EBM, short-run Langevin for its
  prior and posterior;
* :mod:`~kaem.baselines.ddpm`: a denoising diffusion model (Ho et al. 2020) on diffusers' UNet.
"""
