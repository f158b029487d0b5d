"""Search a gallery of your own images with query images, using a trained FMN.

    python -m fmn_jax.search --workdir=DIR --query=IMG_OR_FOLDER --gallery=FOLDER_OR_NPZ \
        [--rerank] [--top=10] --out=OUT

writes `OUT/search.json` and one ranked-list figure per query, `OUT/ranked/<query name>.png`.
A gallery (or query) given as a features file from ``python -m fmn_jax.extract`` is not
re-extracted. Distances are Euclidean between Eq. 6 descriptors (as in evaluation), or the
k-reciprocal re-ranked distance with `--rerank` (k1, k2, lambda from the config's `eval`).

search.json:

    {"format": "fmn_jax.search/1", "workdir": ..., "query_source": ..., "gallery_source": ...,
     "distance": "euclidean" | "k-reciprocal re-ranked (k1=20, k2=6, lambda=0.3)",
     "top": 10, "num_gallery": 1234, "skipped": [...unreadable files...],
     "queries": [{"query": "a/0001.jpg", "figure": "ranked/a__0001.jpg.png",
                  "results": [{"rank": 1, "name": "b/0042.jpg", "distance": 0.4312}, ...]}, ...]}
"""

import json
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from fmn_jax import cpu
from fmn_jax import extract as extract_lib
from fmn_jax import images as images_lib
from fmn_jax import tool_flags

SEARCH_FORMAT = 'fmn_jax.search/1'


def distance_matrix(query: np.ndarray, gallery: np.ndarray, *, rerank: bool = False,
                    k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
  """[Q, G] distances: Euclidean, or k-reciprocal re-ranked (``fmn_jax.rerank``)."""
  query = np.asarray(query, np.float32)
  gallery = np.asarray(gallery, np.float32)
  if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
    raise ValueError(f'query descriptors {query.shape} and gallery descriptors {gallery.shape} '
                     'must be [N, D] with the same D (same model?)')
  if rerank:
    from fmn_jax import rerank as rerank_lib  # pylint: disable=g-import-not-at-top
    return np.asarray(rerank_lib.rerank_features(query, gallery, k1=k1, k2=k2,
                                                 lambda_value=lambda_value))
  from fmn_jax import metrics  # pylint: disable=g-import-not-at-top
  return np.asarray(metrics.pairwise_distances(query, gallery))


def rank(distmat: np.ndarray, top: int) -> Tuple[np.ndarray, np.ndarray]:
  """``(indices, distances)`` [Q, min(top, G)] of the nearest gallery items (stable order)."""
  distmat = np.asarray(distmat)
  top = min(int(top), distmat.shape[1])
  if top <= 0:
    raise ValueError(f'top must be positive, got {top}')
  order = np.argsort(distmat, axis=1, kind='stable')[:, :top]
  return order, np.take_along_axis(distmat, order, axis=1)


def figure_name(query_name: str) -> str:
  """A file name for a query's figure: path separators and odd characters become '_'."""
  return re.sub(r'[^A-Za-z0-9._-]+', '_', query_name.replace('/', '__')) + '.png'


def figure_names(query_names: Sequence[str]) -> List[str]:
  """`figure_name` of each query, made unique ('a b.jpg' and 'a_b.jpg' map to the same name:
  the later ones get '_2', '_3', ... before '.png'), so no figure overwrites another."""
  seen, out = set(), []
  for q in query_names:
    name = base = figure_name(q)
    k = 1
    while name.lower() in seen:  # lower(): also distinct on case-insensitive file systems
      k += 1
      name = f'{base[:-4]}_{k}.png'
    seen.add(name.lower())
    out.append(name)
  return out


def results_json(query_names: Sequence[str], gallery_names: Sequence[str], indices: np.ndarray,
                 distances: np.ndarray, **meta) -> Dict[str, Any]:
  """The search.json content (see the module docstring)."""
  queries = []
  for i, q in enumerate(query_names):
    queries.append({
        'query': q,
        'results': [{'rank': r + 1, 'name': gallery_names[int(j)],
                     'distance': float(distances[i, r])}
                    for r, j in enumerate(indices[i])],
    })
  out = {'format': SEARCH_FORMAT}
  out.update(meta)
  out['queries'] = queries
  return out


def _features(source: str, model, variables, config, *, skip_unreadable: bool, progress: bool,
              what: str, want: Dict[str, Any]) -> extract_lib.Features:
  """Loads a features .npz, or extracts from a folder / image / list.

  `want`: `extract.extraction_meta` of this model and config, which a loaded file must match.
  """
  if isinstance(source, str) and source.endswith('.npz'):
    feats = extract_lib.load_features(source)
    # What the file records must be this model's and its evaluation's (a key the file does not
    # record is not checked).
    wrong = [f'{key} {feats.meta[key]!r} (this model: {value!r})' for key, value in want.items()
             if key in feats.meta and feats.meta[key] != value]
    if wrong:
      raise ValueError(f'{what} features {source!r} were not extracted with this model and '
                       f'its evaluation settings: {"; ".join(wrong)}. Re-extract them with '
                       'python -m fmn_jax.extract --workdir=<this run>')
    return feats
  return extract_lib.extract(variables, source, config, model=model,
                             skip_unreadable=skip_unreadable, progress=progress)


def _is_npz(source) -> bool:
  return isinstance(source, str) and source.endswith('.npz')


def _split(feats: extract_lib.Features, num_query: int
           ) -> Tuple[extract_lib.Features, extract_lib.Features]:
  """Splits one extraction of query + gallery paths (unreadable files already dropped)."""
  is_query = np.asarray(feats.source_index) < num_query
  parts = []
  for sel in (is_query, ~is_query):
    idx = np.flatnonzero(sel)
    parts.append(extract_lib.Features(
        names=[feats.names[i] for i in idx], descriptors=feats.descriptors[idx],
        g=feats.g[idx], l=feats.l[idx], paths=[feats.paths[i] for i in idx],
        skipped=list(feats.skipped), meta=dict(feats.meta)))
  parts[1].skipped = []  # Reported once.
  if not len(parts[0]) or not len(parts[1]):
    raise ValueError('no readable ' + ('query' if not len(parts[0]) else 'gallery') + ' image')
  return parts[0], parts[1]


def _thumbnail(path: Optional[str], size: Tuple[int, int]) -> np.ndarray:
  """The image for the figure, or a grey placeholder when the file is not available."""
  if path:
    try:
      return images_lib.load_image(path, size)
    except (FileNotFoundError, images_lib.UnreadableImageError):
      pass
  img = np.full((size[0], size[1], 3), 200, np.uint8)
  img[::8, :] = 170  # Hatched: "image not available".
  return img


def search(model, variables, config, query: str, gallery: str, *, top: int = 10,
           rerank: bool = False, out: Optional[str] = None, figures: bool = True,
           skip_unreadable: bool = False, progress: bool = True,
           workdir: str = '') -> Dict[str, Any]:
  """Ranks ``gallery`` for each image of ``query``; writes search.json and figures to ``out``.

  Args:
    model, variables, config: from ``workdir.restore_model(workdir)``.
    query: an image, folder, .txt list, or features .npz.
    gallery: a folder, .txt list, or features .npz (not re-extracted).
    top: results kept per query.
    rerank: k-reciprocal re-ranking (config.eval.k1/k2/lambda_value) instead of Euclidean.
    out: output folder (search.json + ranked/<query>.png); nothing written when None.
    figures: draw the ranked-list PNGs.
  Returns:
    The search.json content.
  """
  if _is_npz(query) or _is_npz(gallery):
    want = extract_lib.extraction_meta(variables, config)
    q = _features(query, model, variables, config, skip_unreadable=skip_unreadable,
                  progress=progress, what='query', want=want)
    g = _features(gallery, model, variables, config, skip_unreadable=skip_unreadable,
                  progress=progress, what='gallery', want=want)
  else:  # One extraction pass (one compilation) for both sets.
    q_paths, q_names = images_lib.list_images(query)
    g_paths, g_names = images_lib.list_images(gallery)
    both = extract_lib.extract(variables, q_paths + g_paths, config, model=model,
                               names=q_names + g_names, skip_unreadable=skip_unreadable,
                               progress=progress)
    q, g = _split(both, len(q_paths))
  if q.descriptors.shape[1] != g.descriptors.shape[1]:
    raise ValueError(f'query descriptors are {q.descriptors.shape[1]}-d but gallery {gallery!r} '
                     f'has {g.descriptors.shape[1]}-d: extracted with another model')
  k1, k2 = int(config.eval.get('k1', 20)), int(config.eval.get('k2', 6))
  lam = float(config.eval.get('lambda_value', 0.3))
  if rerank:
    # k-reciprocal neighbours need k1 < number of images; small galleries get a smaller k1.
    total = len(q) + len(g)
    k1 = max(1, min(k1, total - 1))
    k2 = max(1, min(k2, k1))
  dist = distance_matrix(q.descriptors, g.descriptors, rerank=rerank, k1=k1, k2=k2,
                         lambda_value=lam)
  idx, dists = rank(dist, top)
  result = results_json(
      q.names, g.names, idx, dists,
      workdir=os.path.abspath(workdir) if workdir else '',
      query_source=str(query), gallery_source=str(gallery),
      distance=(f'k-reciprocal re-ranked (k1={k1}, k2={k2}, lambda={lam})' if rerank
                else 'euclidean'),
      top=int(idx.shape[1]), num_gallery=len(g),
      skipped=[p for p, _ in q.skipped + g.skipped])
  if out is not None:
    os.makedirs(out, exist_ok=True)
    if figures:
      _draw(result, q, g, idx, dists, config, out)
    with open(os.path.join(out, 'search.json'), 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=1)
  return result


def _draw(result, q, g, idx, dists, config, out):
  """One ranked-list PNG per query under out/ranked/ (figure path recorded in the JSON)."""
  from fmn_jax import visualize  # pylint: disable=g-import-not-at-top
  size = tuple(int(s) for s in config.input.image_size)
  os.makedirs(os.path.join(out, 'ranked'), exist_ok=True)
  g_paths = g.paths or [None] * len(g)
  q_paths = q.paths or [None] * len(q)
  cache = {}

  def thumb(path):
    if path not in cache:
      cache[path] = _thumbnail(path, size)
    return cache[path]

  names = figure_names(q.names)
  for i, entry in enumerate(result['queries']):
    row = [thumb(g_paths[int(j)]) for j in idx[i]]
    labels = [[f'{visualize.wrap_name(g.names[int(j)])}\nd={dists[i, r]:.3f}'
               for r, j in enumerate(idx[i])]]
    fig = visualize.ranked_list_figure(
        [thumb(q_paths[i])], [row], None,
        title=f'search: {_short(q.names[i], 40)}, top-{idx.shape[1]} of {len(g)} by '
              f'{result["distance"]} distance',
        query_labels=[visualize.wrap_name(q.names[i])], gallery_labels=labels)
    name = os.path.join('ranked', names[i])
    visualize.save_figure(fig, os.path.join(out, name))
    entry['figure'] = name


def _short(name: str, n: int = 16) -> str:
  return name if len(name) <= n else '…' + name[-(n - 1):]


def main(argv):
  cpu.configure()
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise ValueError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  out = tool_flags.expand_path(f.out)
  model, variables, config = tool_flags.restore_from_flags()
  result = search(model, variables, config, tool_flags.expand_paths(f.query),
                  tool_flags.expand_paths(f.gallery), top=f.top, rerank=f.rerank, out=out,
                  figures=f.figures, skip_unreadable=f.skip_unreadable, progress=f.progress,
                  workdir=tool_flags.expand_path(f.workdir))
  print(f'wrote {os.path.join(out, "search.json")}: {len(result["queries"])} queries, '
        f'top-{result["top"]} of {result["num_gallery"]} gallery images'
        + (f', ranked lists in {os.path.join(out, "ranked")}' if f.figures else ''))
  for p in result['skipped']:
    print(f'  skipped unreadable {p}', file=sys.stderr)


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  tool_flags.define_workdir_flags()
  flags.DEFINE_string('query', None, 'Query image, folder, .txt list or features .npz.',
                      required=True)
  flags.DEFINE_string('gallery', None, 'Gallery folder, .txt list or features .npz.',
                      required=True)
  flags.DEFINE_string('out', 'search_out', 'Output folder (search.json, ranked/*.png).')
  flags.DEFINE_integer('top', 10, 'Results per query.')
  flags.DEFINE_bool('rerank', False, 'k-reciprocal re-ranking (config.eval.k1/k2/lambda).')
  flags.DEFINE_bool('figures', True, 'Write a ranked-list PNG per query.')
  flags.DEFINE_bool('skip_unreadable', False, 'Skip unreadable image files instead of failing.')
  flags.DEFINE_bool('progress', True, 'Show progress bars.')


if __name__ == '__main__':
  tool_flags.run_cli(main, _define_flags)
