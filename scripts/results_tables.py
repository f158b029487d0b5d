"""Markdown tables of the Market-1501 results beside the paper's, for README.md and docs/.

    python scripts/results_tables.py                     # print every table from results/
    python scripts/results_tables.py --write             # update every marked block (= --write=all)
    python scripts/results_tables.py --write=README.md   # update the marked blocks of one file

Reads what `scripts/reproduce_market.sh`, `scripts/gpu_calls.sh` and `fmn_jax.benchmark` write:
`market_fmn.json` (Tables 1 and 2), `market_mask_{pool1,res2,res3,res4}.json` (Table 5),
`benchmark_<device>.json` (speed against the targets, with the recipe's wall time from
`market_fmn.json`) and `market_lr_mn_study.json` (stage 2 at several mixing-network learning
rates; the default's row is `market_fmn.json`, with its mask statistics from the train step's
`mask_pool1_log.jsonl` where that is in the folder too). A missing file gives a row that says so,
never a number.

A marked block is the lines between a line `<!-- tables:NAME -->` and a line
`<!-- /tables:NAME -->`; `--write` replaces them with the table NAME. Without a file (or with
`all`) it looks in README.md and docs/*.md under `--root`, where each table of `--tables` must have
exactly one block in all those files together. With a file it updates the blocks that file holds
(or those of `--tables`, each of which it must hold). A block that is missing, repeated, unpaired
or of an unknown table stops the script with a one-line error naming it, before anything is
written.
"""

import argparse
import glob
import json
import os
import re
import sys
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

# Runs from a clone without `pip install -e .` too.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from fmn_jax import reporting  # pylint: disable=g-import-not-at-top,wrong-import-position

# Paper, Tables 1 and 2: rank-1, rank-5, rank-20, mAP (None: not reported).
PAPER = {
    'GRN': (79.33, 91.48, 96.62, 58.50),
    'LAN': (81.15, 91.39, 96.44, 59.88),
    'FMN': (85.99, 93.74, 97.51, 67.12),
    'FMN+rerank': (87.92, None, None, 80.62),
}
# Paper, Table 5: mask layer, its map size at 224x224 input, rank-1 and mAP.
PAPER_MASKS = (('pool1', '56×56', 85.99, 67.12), ('res2', '56×56', 85.15, 65.84),
               ('res3', '28×28', 84.23, 65.16), ('res4', '14×14', 82.39, 61.95))
# Issue targets on one H100.
TARGET_STAGE1, TARGET_STAGE2 = 0.90, 0.65
TARGET_RECIPE_MINUTES, TARGET_EVAL_SECONDS = 15.0, 10.0
NOT_RUN = 'not yet run'
STAGES = ('grn', 'fmn', 'eval')   # the keys of results.json's stage_seconds


class ResultsError(ValueError):
  """A results file or the README is not what this script expects; the message names it."""


def _load(path: str) -> Optional[dict]:
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise ResultsError(f'{path}: not a readable JSON file ({e})') from None
  if not isinstance(data, dict):
    raise ResultsError(f'{path}: expected a JSON object, got {type(data).__name__}')
  return data


def _num(value: Optional[float]) -> str:
  return '–' if value is None else f'{value:.2f}'


def _delta(ours: float, paper: Optional[float]) -> str:
  return '' if paper is None else f' ({ours - paper:+.2f})'


def _metric(results: Mapping, method: str, key: str, path: str) -> float:
  try:
    return float(results[method][key])
  except (KeyError, TypeError, ValueError):
    raise ResultsError(f'{path}: no number at {method}.{key}') from None


def _run_facts(results: Mapping) -> str:
  seconds = results.get('stage_seconds') or {}
  parts = [f'{name} {seconds[name] / 60:.1f} min' for name in STAGES
           if isinstance(seconds.get(name), (int, float))]
  facts = [str(results.get('device', '?')), f'jax {results.get("jax_version", "?")}',
           f'seed {results.get("seed", "?")}']
  return ', '.join(facts) + ('; ' + ', '.join(parts) if parts else '')


def table_paper(results_dir: str) -> str:
  """Tables 1 and 2: each method's rank-1/5/20 and both mAPs, the paper's beside them."""
  path = os.path.join(results_dir, 'market_fmn.json')
  results = _load(path)
  lines = ['| Market-1501 | paper R-1 / R-5 / R-20 / mAP | this project R-1 (vs paper) | R-5 | R-20 '
           '| mAP (vs paper) | mAP (trapezoid) |', '|---|---|---|---|---|---|---|']
  for method, paper in PAPER.items():
    label = {'FMN+rerank': 'FMN + re-ranking (Table 2)'}.get(method, method)
    if method == 'GRN':
      label += ' (Table 1)'
    paper_text = ' / '.join(_num(v) for v in paper)
    if results is None:
      lines.append(f'| {label} | {paper_text} | {NOT_RUN} | | | | |')
      continue
    r1, r5, r20, ap, ap_t = (_metric(results, method, k, path)
                             for k in ('rank1', 'rank5', 'rank20', 'mAP', 'mAP_trapezoid'))
    lines.append(f'| {label} | {paper_text} | {r1:.2f}{_delta(r1, paper[0])} | {r5:.2f} | '
                 f'{r20:.2f} | {ap:.2f}{_delta(ap, paper[3])} | {ap_t:.2f} |')
  if results is not None:
    lines.append('')
    lines.append(f'`{os.path.basename(path)}`: {_run_facts(results)}.')
  return '\n'.join(lines)


def table_masks(results_dir: str) -> str:
  """Table 5: FMN rank-1 and mAP per mask layer, the paper's beside them."""
  lines = ['| mask layer (Table 5) | paper R-1 / mAP | this project R-1 / mAP (vs paper) | '
           'FMN + re-ranking R-1 / mAP |', '|---|---|---|---|']
  for layer, size, p_r1, p_ap in PAPER_MASKS:
    path = os.path.join(results_dir, f'market_mask_{layer}.json')
    results = _load(path)
    if results is None:
      lines.append(f'| {layer} ({size}) | {p_r1:.2f} / {p_ap:.2f} | {NOT_RUN} | |')
      continue
    r1, ap = _metric(results, 'FMN', 'rank1', path), _metric(results, 'FMN', 'mAP', path)
    rr1, rap = (_metric(results, 'FMN+rerank', k, path) for k in ('rank1', 'mAP'))
    lines.append(f'| {layer} ({size}) | {p_r1:.2f} / {p_ap:.2f} | {r1:.2f} / {ap:.2f} '
                 f'({r1 - p_r1:+.2f} / {ap - p_ap:+.2f}) | {rr1:.2f} / {rap:.2f} |')
  return '\n'.join(lines)


def _meets(ok: bool) -> str:
  return 'meets' if ok else 'misses'


def _rate(part: Mapping) -> str:
  low, high = part['images_per_second_range']
  return f'{part["images_per_second"]:,.0f} ({low:,.0f}–{high:,.0f})'


def _benchmark_file(results_dir: str) -> Optional[str]:
  """The GPU benchmark: benchmark_h100.json, else the one other benchmark_*.json of a GPU."""
  preferred = os.path.join(results_dir, 'benchmark_h100.json')
  if os.path.exists(preferred):
    return preferred
  found = sorted(p for p in glob.glob(os.path.join(results_dir, 'benchmark_*.json'))
                 if 'cpu' not in os.path.basename(p))
  return found[0] if found else None


def table_speed(results_dir: str) -> str:
  """The benchmark beside the targets, and the recipe's wall time from market_fmn.json."""
  path = _benchmark_file(results_dir)
  bench = _load(path) if path else None
  lines = ['| one GPU | measured: images/s median (range) or seconds | target | |',
           '|---|---|---|---|']
  footer = None
  if bench is None:
    lines.append(f'| `python -m fmn_jax.benchmark --what=all` | {NOT_RUN} | | |')
  else:
    train = bench.get('train')
    if not isinstance(train, dict):
      raise ResultsError(f'{path}: no "train" part (run the benchmark with --what=all)')
    footer = (f'`{os.path.basename(path)}`: {train.get("device", "?")}, '
              f'jax {bench.get("jax_version", "?")}.')
    try:
      ceiling, stage1, stage2 = train['ceiling'], train['stage1'], train['stage2']
      lines.append(f'| ceiling: plain ResNet step, same layers, batch {ceiling["batch_size"]} '
                   f'| {_rate(ceiling)} | | |')
      for label, part, target in (('stage 1 (GRN) step', stage1, TARGET_STAGE1),
                                  ('stage 2 (MN + LAN) step', stage2, TARGET_STAGE2)):
        ratio = part['ratio_to_ceiling']
        lines.append(f'| {label}, batch {part["batch_size"]} | {_rate(part)}: '
                     f'{ratio:.2f} of the ceiling | ≥ {target:.2f} | {_meets(ratio >= target)} |')
      features = train['features']
      lines.append(f'| feature extraction (flip {"on" if features["flip"] else "off"}, batch '
                   f'{features["batch_size"]}) | {_rate(features)} | | |')
    except (KeyError, TypeError, ValueError) as e:
      raise ResultsError(f'{path}: train part lacks {e}') from None
    eval_part = bench.get('eval')
    if not isinstance(eval_part, dict):
      raise ResultsError(f'{path}: no "eval" part (run the benchmark with --what=all)')
    try:
      steps = eval_part['parts']['pipeline']['steps']
      (label, step), = steps.items()
      seconds = [float(s) for s in step['seconds']]
    except (KeyError, TypeError, ValueError) as e:
      raise ResultsError(f'{path}: eval part lacks the pipeline timing ({e})') from None
    best = min(seconds)
    lines.append(f'| {label}, {eval_part.get("num_query")} × {eval_part.get("num_gallery")}, '
                 f'{eval_part.get("dim")}-d | {best:.2f} s (best of {len(seconds)}; all: '
                 f'{", ".join(f"{s:.2f}" for s in seconds)}) | ≤ {TARGET_EVAL_SECONDS:.0f} s '
                 f'| {_meets(best <= TARGET_EVAL_SECONDS)} |')
  fmn_path = os.path.join(results_dir, 'market_fmn.json')
  fmn = _load(fmn_path)
  if fmn is None:
    lines.append(f'| the paper recipe, both stages + evaluation (`market_fmn.json`) | {NOT_RUN} | '
                 f'≤ {TARGET_RECIPE_MINUTES:.0f} min | |')
  else:
    seconds = fmn.get('stage_seconds') or {}
    missing = [s for s in STAGES if not isinstance(seconds.get(s), (int, float))]
    if missing:
      raise ResultsError(f'{fmn_path}: stage_seconds lacks {", ".join(missing)}')
    minutes = sum(seconds[s] for s in STAGES) / 60
    lines.append(f'| the paper recipe, both stages + evaluation (`market_fmn.json`, '
                 f'{fmn.get("device", "?")}) | {minutes:.1f} min | ≤ {TARGET_RECIPE_MINUTES:.0f} min '
                 f'| {_meets(minutes <= TARGET_RECIPE_MINUTES)} |')
  if footer:
    lines += ['', footer]
  return '\n'.join(lines)


def table_lr_study(results_dir: str) -> str:
  """Stage 2 per mixing-network learning rate: the last epoch's mask health and the scores."""
  path = os.path.join(results_dir, 'market_lr_mn_study.json')
  study = _load(path)
  lines = ['| fmn.lr_mn | mask_mean | dead | saturated | log-std | LAN R-1 / mAP | FMN R-1 / mAP '
           '| FMN+rerank R-1 / mAP |', '|---|---|---|---|---|---|---|---|']
  if study is None:
    lines.append(f'| (`market_lr_mn_study.json`) | {NOT_RUN} | | | | | | |')
    return '\n'.join(lines)
  runs = study.get('runs')
  if not isinstance(runs, dict) or not runs:
    raise ResultsError(f'{path}: no runs')
  fmn = _load(os.path.join(results_dir, 'market_fmn.json'))
  rows = list(runs.items())
  if fmn is not None:   # the train step's run: the config's own lr_mn, from the same stage 1
    log = reporting.read_jsonl(os.path.join(results_dir, 'mask_pool1_log.jsonl'))
    epochs = reporting.epoch_records(log).get('fmn', [])
    rows.insert(0, ('default (`market_fmn.json`)', {'metrics': fmn, 'epochs': epochs}))
  for lr, run in rows:
    if 'error' in run:
      lines.append(f'| {lr} | failed: {run["error"]} | | | | | | |')
      continue
    epochs = run.get('epochs') or []
    last = epochs[-1] if epochs else {}
    health = ' | '.join(_num(last.get(k)) for k in ('mask_mean', 'mask_dead', 'mask_saturated',
                                                   'mask_log_std'))
    metrics = run.get('metrics') or {}
    scores = ' | '.join(
        f'{_metric(metrics, m, "rank1", path):.2f} / {_metric(metrics, m, "mAP", path):.2f}'
        for m in ('LAN', 'FMN', 'FMN+rerank'))
    lines.append(f'| {lr} | {health} | {scores} |')
  return '\n'.join(lines)


TABLES: Dict[str, Callable[[str], str]] = {
    'paper': table_paper, 'masks': table_masks, 'speed': table_speed, 'lr_study': table_lr_study}


_START = re.compile(r'<!-- tables:(\w+) -->')
_END = re.compile(r'<!-- /tables:(\w+) -->')
WRITE_ALL = 'all'


def find_blocks(text: str, path: str) -> Dict[str, Tuple[int, int]]:
  """Line numbers (0-based) of each marked block's start and end marker in text.

  Raises ResultsError naming the file and marker for a block that is unpaired, nested or repeated
  in the file, or of a table this script does not know. Markers inside a line of other text (as in
  this docstring) are not blocks.
  """
  blocks, open_name, open_line = {}, None, 0
  for i, line in enumerate(text.split('\n')):
    start, end = _START.fullmatch(line.strip()), _END.fullmatch(line.strip())
    if start:
      name = start.group(1)
      if open_name is not None:
        raise ResultsError(f'{path}:{i + 1}: <!-- tables:{name} --> inside the block '
                           f'<!-- tables:{open_name} --> of line {open_line + 1}')
      if name not in TABLES:
        raise ResultsError(f'{path}:{i + 1}: <!-- tables:{name} --> is no table '
                           f'(known: {", ".join(TABLES)})')
      if name in blocks:
        raise ResultsError(f'{path}:{i + 1}: a second <!-- tables:{name} --> block '
                           f'(the first at line {blocks[name][0] + 1})')
      open_name, open_line = name, i
    elif end:
      if end.group(1) != open_name:
        raise ResultsError(f'{path}:{i + 1}: <!-- /tables:{end.group(1)} --> without a '
                           f'<!-- tables:{end.group(1)} --> before it')
      blocks[open_name] = (open_line, i)
      open_name = None
  if open_name is not None:
    raise ResultsError(f'{path}:{open_line + 1}: <!-- tables:{open_name} --> has no '
                       f'<!-- /tables:{open_name} --> after it')
  return blocks


def replace_marked(text: str, tables: Mapping[str, str], path: str) -> str:
  """Returns text with the block of each table in `tables` replaced; each must be in text."""
  blocks = find_blocks(text, path)
  for name in tables:
    if name not in blocks:
      raise ResultsError(f'{path}: needs exactly one <!-- tables:{name} --> followed by one '
                         f'<!-- /tables:{name} -->')
  lines = text.split('\n')
  for name, (start, end) in sorted(blocks.items(), key=lambda item: -item[1][0]):
    if name in tables:
      lines[start + 1:end] = tables[name].split('\n')
  return '\n'.join(lines)


def doc_files(root: str) -> List[str]:
  """README.md and docs/*.md under root, relative to it: the files `--write` looks in."""
  names = ['README.md'] if os.path.isfile(os.path.join(root, 'README.md')) else []
  docs = sorted(glob.glob(os.path.join(root, 'docs', '*.md')))
  return names + [os.path.relpath(p, root) for p in docs]


def locate_blocks(texts: Mapping[str, str], names: Sequence[str]) -> Dict[str, List[str]]:
  """{file: [table names]} of where each named table's one block is among texts {file: text}."""
  where: Dict[str, List[str]] = {}
  for path, text in texts.items():
    for name in find_blocks(text, path):
      where.setdefault(name, []).append(path)
  files = ', '.join(texts) or 'no file'
  by_file: Dict[str, List[str]] = {}
  for name in names:
    paths = where.get(name, [])
    if len(paths) != 1:
      found = f'in {len(paths)} files ({", ".join(paths)})' if paths else 'in none'
      raise ResultsError(f'<!-- tables:{name} -->: needs exactly one block among {files}, '
                         f'found {found}')
    by_file.setdefault(paths[0], []).append(name)
  return by_file


def _read(path: str) -> str:
  with open(path, encoding='utf-8') as f:
    return f.read()


def write_tables(target: str, root: str, results_dir: str,
                 names: Optional[Sequence[str]]) -> List[str]:
  """Updates the marked blocks; returns one line per file. Nothing is written on any error."""
  if target == WRITE_ALL:
    texts = {name: _read(os.path.join(root, name)) for name in doc_files(root)}
    by_file = locate_blocks(texts, list(TABLES) if names is None else names)
    paths = {name: os.path.join(root, name) for name in texts}
  else:
    texts = {target: _read(target)}
    blocks = find_blocks(texts[target], target)
    wanted = [n for n in TABLES if n in blocks] if names is None else list(names)
    if not wanted:
      raise ResultsError(f'{target}: holds no <!-- tables:NAME --> block '
                         f'(NAME: one of {", ".join(TABLES)})')
    by_file, paths = {target: wanted}, {target: target}
  tables = {name: TABLES[name](results_dir) for file_names in by_file.values()
            for name in file_names}
  new = {path: replace_marked(texts[path], {n: tables[n] for n in file_names}, path)
         for path, file_names in by_file.items()}
  report = []
  for path, file_names in by_file.items():
    if new[path] != texts[path]:
      with open(paths[path], 'w', encoding='utf-8') as f:
        f.write(new[path])
    report.append(f'{path}: {"updated" if new[path] != texts[path] else "unchanged"} '
                  f'({", ".join(file_names)})')
  return report


def main(argv: Optional[List[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--results', default='results', help='folder of the result files')
  parser.add_argument('--write', nargs='?', const=WRITE_ALL, metavar='FILE',
                      help='replace the marked tables instead of printing them: in this file, or '
                           'with no FILE (or "all") wherever they are in README.md and docs/*.md')
  parser.add_argument('--root', default=REPO,
                      help='the folder holding README.md and docs/ for --write without a file')
  parser.add_argument('--tables', default=None,
                      help=f'comma-separated subset of {",".join(TABLES)} (default: all; with '
                           '--write=FILE, the ones that file holds)')
  args = parser.parse_args(argv)
  names = None if args.tables is None else [n for n in args.tables.split(',') if n]
  unknown = [n for n in names or () if n not in TABLES]
  if unknown:
    parser.error(f'--tables: unknown {", ".join(unknown)} (known: {", ".join(TABLES)})')
  try:
    if not os.path.isdir(args.results):
      raise ResultsError(f'--results={args.results}: no such folder')
    if args.write:
      for line in write_tables(args.write, args.root, args.results, names):
        print(line)
    else:
      tables = {name: TABLES[name](args.results) for name in names or TABLES}
      for name, table in tables.items():
        print(f'## {name}\n\n{table}\n')
  except (ResultsError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
