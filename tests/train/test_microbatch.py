"""Gradient accumulation over micro-batches (`train.microbatch`): the batch gradient of a batch-mean loss, slices in
a known order, the whole batch and the caller's key when there is one slice."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lowlight_jax.train import microbatch


def test_split_is_strided_and_unsplit_inverts_it():
  x = jnp.arange(2 * 6 * 3).reshape(2, 6, 3)  # batch at axis 1
  s = microbatch.split(x, 3, axis=1)
  assert s.shape == (3, 2, 2, 3)
  for j in range(3):  # slice j: examples j and j + 3
    np.testing.assert_array_equal(s[j], x[:, j::3])
  np.testing.assert_array_equal(microbatch.unsplit(s, axis=1), x)


def _loss(params, data, rng):
  """A batch mean over per-example squared errors of a small nonlinear model, plus terms as aux."""
  pred = jnp.tanh(data["x"] @ params["w"] + params["b"])
  err = jnp.mean((pred - data["y"]) ** 2)
  reg = 0.1 * jnp.mean(jnp.abs(pred))
  return err + reg, {"err": err, "reg": reg, "pred": pred, "noise": jax.random.normal(rng, ())}


@pytest.mark.parametrize("num", [2, 4])
def test_accumulated_gradient_is_the_batch_gradient(num):
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32), "b": jnp.asarray(rng.normal(size=3), jnp.float32)}
  data = {"x": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32), "y": jnp.asarray(rng.normal(size=(8, 3)),
                                                                                   jnp.float32)}
  (want_loss, want_aux), want = jax.value_and_grad(_loss, has_aux=True)(params, data, jax.random.key(0))
  (loss, aux), grads = jax.jit(lambda p, d: microbatch.value_and_grad(_loss, p, d, jax.random.key(0), num))(params,
                                                                                                          data)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  for k in ("w", "b"):
    np.testing.assert_allclose(grads[k], want[k], rtol=1e-5, atol=1e-6)
  # Aux per slice: the terms' mean over slices is the batch's, the per-example outputs unsplit to batch order.
  assert aux["err"].shape == (num,)
  np.testing.assert_allclose(jnp.mean(aux["err"]), want_aux["err"], rtol=1e-6)
  np.testing.assert_allclose(microbatch.unsplit(aux["pred"]), want_aux["pred"], rtol=1e-6, atol=1e-6)
  # Every slice draws with its own key.
  assert len(set(np.asarray(aux["noise"]).tolist())) == num


def test_one_slice_is_the_plain_step():
  params = {"w": jnp.ones((5, 3)), "b": jnp.zeros(3)}
  data = {"x": jnp.linspace(-1, 1, 40).reshape(8, 5), "y": jnp.zeros((8, 3))}
  (want_loss, want_aux), want = jax.value_and_grad(_loss, has_aux=True)(params, data, jax.random.key(3))
  (loss, aux), grads = microbatch.value_and_grad(_loss, params, data, jax.random.key(3), 1)
  assert float(loss) == float(want_loss) and float(aux["noise"][0]) == float(want_aux["noise"])
  for k in ("w", "b"):
    np.testing.assert_array_equal(grads[k], want[k])


def test_unequal_slices_are_refused():
  params = {"w": jnp.ones((5, 3)), "b": jnp.zeros(3)}
  data = {"x": jnp.ones((6, 5)), "y": jnp.zeros((6, 3))}
  with pytest.raises(ValueError, match="batch of 6 does not split into 4"):
    microbatch.value_and_grad(_loss, params, data, jax.random.key(0), 4)
