"""A small, deterministic subset of Market-1501 for CPU checks of the full recipe.

    python scripts/market_subset.py ~/data/Market-1501-v15.09.15 /tmp/market_small

Copies, by sorted file name: every image of the first `--train_ids` training identities; every
query and gallery image of the first `--test_ids` query identities; the first `--distractors`
gallery distractors (identity 0000) and the first `--junk` junk images (identity -1). The defaults
give the subset of the CPU checks in docs/reproducing.md: 365 training images of 24 identities, 83 queries,
465 gallery images.
"""

import argparse
import os
import shutil


def _pid(name: str) -> str:
  return name.split('_', 1)[0]


def _images(folder: str) -> list:
  if not os.path.isdir(folder):
    raise SystemExit(f'error: {folder} not found (expected a Market-1501 root)')
  return sorted(n for n in os.listdir(folder) if n.lower().endswith('.jpg'))


def make_subset(root: str, out: str, train_ids: int = 24, test_ids: int = 20,
                distractors: int = 100, junk: int = 50) -> dict:
  """Writes the subset under `out`; returns {split folder: number of images}."""
  train = _images(os.path.join(root, 'bounding_box_train'))
  query = _images(os.path.join(root, 'query'))
  gallery = _images(os.path.join(root, 'bounding_box_test'))
  keep_train = set(sorted({_pid(n) for n in train})[:train_ids])
  keep_test = set(sorted({_pid(n) for n in query})[:test_ids])
  chosen = {
      'bounding_box_train': [n for n in train if _pid(n) in keep_train],
      'query': [n for n in query if _pid(n) in keep_test],
      'bounding_box_test': ([n for n in gallery if _pid(n) in keep_test]
                            + [n for n in gallery if _pid(n) == '0000'][:distractors]
                            + [n for n in gallery if _pid(n) == '-1'][:junk]),
  }
  for split, names in chosen.items():
    if not names:
      raise SystemExit(f'error: the subset of {os.path.join(root, split)} is empty')
    os.makedirs(os.path.join(out, split), exist_ok=True)
    for n in names:
      shutil.copyfile(os.path.join(root, split, n), os.path.join(out, split, n))
  return {split: len(names) for split, names in chosen.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('root', help='Market-1501 root (bounding_box_train, bounding_box_test, query)')
  parser.add_argument('out', help='where to write the subset')
  parser.add_argument('--train_ids', type=int, default=24)
  parser.add_argument('--test_ids', type=int, default=20)
  parser.add_argument('--distractors', type=int, default=100)
  parser.add_argument('--junk', type=int, default=50)
  args = parser.parse_args()
  counts = make_subset(args.root, args.out, args.train_ids, args.test_ids, args.distractors,
                       args.junk)
  print(' '.join(f'{k}: {v}' for k, v in counts.items()))


if __name__ == '__main__':
  main()
