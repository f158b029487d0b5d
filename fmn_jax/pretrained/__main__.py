"""`python -m fmn_jax.pretrained fetch|convert|info` (see `fmn_jax.pretrained.converter`)."""

import sys

from fmn_jax.pretrained import converter

if __name__ == '__main__':
  sys.exit(converter.main())
