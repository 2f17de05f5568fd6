"""Optional accelerators: compiled replacements of plain tensor functions, with their contract.

An accelerator returns what the function it replaces returns, for the same arguments, and is
chosen by an explicit setting; the plain function is the default on every device and the
reference the accelerator is tested against.

* :func:`kaem.model.accel.cpu.inverse_cdf`: :func:`kaem.model.quadrature.inverse_cdf` (eq. 13)
  by compiled CPU loops, chosen by ``model.prior.sampling: compiled``.
"""
