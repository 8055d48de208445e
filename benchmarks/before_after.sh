#!/usr/bin/env bash
# Evaluation and the Serve replica's model code on an earlier commit and on this tree, alternating on one
# machine (docs/benchmarks.md, "Before and after the inference layer"):
#   benchmarks/before_after.sh 58e5145
# Needs ../shared/data (PharmaCoNER dev) and `make install`; the earlier tree runs with this .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: benchmarks/before_after.sh COMMIT}
HERE=$(pwd)
PY=$HERE/.venv/bin/python
DATA=${GALENO_SHARED_DATA:-$HERE/../shared/data}/pharmaconer/dev.conll
WORK=$(mktemp -d)
trap 'git -C "$HERE" worktree remove --force "$WORK/old" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
git worktree add -q "$WORK/old" "$OLD"
"$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; \
from predict_throughput import minilm_tagger; minilm_tagger(Path('$WORK/tagger'))" >/dev/null 2>&1
for round in 1 2; do
  for tree in old new; do
    root=$HERE; [ "$tree" = old ] && root=$WORK/old
    start=$(date +%s.%N)
    (cd "$root" && PYTHONPATH=$root/platform "$PY" jobs/evaluate_ner.py --model "$WORK/tagger" --data "$DATA" \
        --max-length 128 > "$WORK/eval-$tree.json" 2>/dev/null)
    end=$(date +%s.%N)
    f1=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['default']['f1'])" "$WORK/eval-$tree.json")
    echo "evaluate $tree round $round: $(echo "$end - $start" | bc) s, dev F1 $f1"
  done
done
for tree in old new; do
  root=$HERE; [ "$tree" = old ] && root=$WORK/old
  (cd "$root" && PYTHONPATH=$root/platform "$PY" benchmarks/serve_passes.py --model minilm --dtypes float32 \
      --rounds 3 2>/dev/null | tail -1 | sed "s/^/serve_passes $tree: /")
done
