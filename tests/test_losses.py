"""Losses: Eq. 4 cross-entropy and the Eq. 5 ranking loss against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from fmn_jax import losses


def test_cross_entropy_hand_computed():
  logits = jnp.array([[0.0, math.log(3.0)], [math.log(2.0), 0.0]])
  labels = jnp.array([1, 1])
  # Example 1: p_1 = 3/4; example 2: p_1 = 1/3.
  expected = (-math.log(3 / 4) - math.log(1 / 3)) / 2
  np.testing.assert_allclose(float(losses.cross_entropy(logits, labels)), expected, rtol=1e-6)


def test_ranking_loss_hand_computed():
  # Three classes; true classes 0, 2 and 1.
  logits_g = jnp.array([[math.log(6.0), 0.0, math.log(3.0)],    # pG_t = 6/10 = 0.6
                        [0.0, 0.0, math.log(2.0)],              # pG_t = 2/4  = 0.5
                        [0.0, math.log(8.0), math.log(1.0)]])   # pG_t = 8/10 = 0.8
  logits_l = jnp.array([[math.log(2.0), 0.0, math.log(7.0)],    # pL_t = 2/10 = 0.2
                        [0.0, 0.0, math.log(8.0)],              # pL_t = 8/10 = 0.8
                        [0.0, math.log(7.0), math.log(2.0)]])   # pL_t = 7/10 = 0.7
  labels = jnp.array([0, 2, 1])
  margin = 0.15
  # max(0, .6-.2+.15) = .55 ; max(0, .5-.8+.15) = 0 ; max(0, .8-.7+.15) = .25
  expected = (0.55 + 0.0 + 0.25) / 3
  got = float(losses.ranking_loss(logits_g, logits_l, labels, margin))
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  np.testing.assert_allclose(
      np.asarray(losses.true_class_probability(logits_g, labels)), [0.6, 0.5, 0.8], rtol=1e-6)


def test_ranking_loss_gradient_only_through_lan():
  logits_g = jnp.array([[1.0, 0.0, -1.0]])
  logits_l = jnp.array([[0.0, 0.5, 0.2]])
  labels = jnp.array([0])
  g_grad, l_grad = jax.grad(losses.ranking_loss, argnums=(0, 1))(logits_g, logits_l, labels, 0.1)
  assert np.all(np.asarray(g_grad) == 0.0)
  # d(-pL_t)/d logits_l = -pL_t (onehot - pL): negative on the true class, positive elsewhere.
  p = np.asarray(jax.nn.softmax(logits_l[0]))
  np.testing.assert_allclose(np.asarray(l_grad[0]), -p[0] * (np.eye(3)[0] - p), rtol=1e-5)


def test_accuracy():
  logits = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
  assert float(losses.accuracy(logits, jnp.array([1, 1, 1]))) == np.float32(2 / 3)
