"""Training losses of the Feature Mask Network (paper Sec. 3.3, Eq. 4 and Eq. 5)."""

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Softmax cross-entropy (Eq. 4) with integer labels, mean over the batch, float32.

  Args:
    logits: [B, C] class scores (any float dtype; computed in float32).
    labels: [B] integer class indices.
  Returns:
    Scalar mean loss.
  """
  logits = logits.astype(jnp.float32)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def true_class_probability(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Softmax probability of the correct class, p_t, per example ([B], float32)."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.exp(jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0])


def ranking_loss(logits_g: jnp.ndarray, logits_l: jnp.ndarray, labels: jnp.ndarray,
                 margin: float) -> jnp.ndarray:
  """Ranking loss of Eq. 5, mean over the batch: max(0, pG_t - pL_t + m).

  pG_t and pL_t are the softmax probabilities of the true class t under the GRN and LAN
  classifiers. The GRN is a fixed reference in stage 2, so no gradient flows into pG_t.

  Args:
    logits_g: [B, C] GRN logits.
    logits_l: [B, C] LAN logits.
    labels: [B] integer class indices.
    margin: the margin m.
  Returns:
    Scalar mean loss.
  """
  p_g = jax.lax.stop_gradient(true_class_probability(logits_g, labels))
  p_l = true_class_probability(logits_l, labels)
  return jnp.mean(jnp.maximum(0.0, p_g - p_l + margin))


def accuracy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Top-1 classification accuracy (fraction), scalar float32."""
  return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
