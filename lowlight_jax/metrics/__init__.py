"""Image quality metrics with explicit evaluation protocols, plus thin `clu.metrics` wrappers.

  full_reference  PSNR, SSIM (jnp, batched NHWC, jit-able) and their clu wrappers
  lpips           LPIPS v0.1 (AlexNet, VGG16) in Flax
  niqe, brisque   the official MATLAB no-reference metrics in float64 numpy
  matlab          MATLAB-compatible primitives (imresize, rgb2gray, AGGD fits)
  fid             pytorch-fid InceptionV3 in Flax and the Fréchet distance
  evaluate        folder evaluation behind `python -m launch.evaluate`
  benchmark       metric throughput for `launch.benchmark`

NIQE, BRISQUE and LPIPS parameters are fetched, not vendored: `python -m launch.assets fetch`.
"""
