"""Command line of ``jobs/promote.py``: move a registry alias under the promotion rule.

Plain argparse rather than a config dataclass: promotion is one action with a handful of
flags (``--force`` is a switch), not a job with presets.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

USAGE = """Point an alias of a registered model (default: champion) at a version, if its dev metric is at
least as good as the current holder's: dev_f1 (higher is better) for galeno-ner-*, val_loss (lower
is better) for galeno-mlm. Prints the promotion record as JSON; exit status 2 when refused.

examples:
  python jobs/promote.py --model galeno-mlm --version 3
  python jobs/promote.py --model galeno-ner-pharmaconer --version 7 --alias champion --reason "new dev set"
  python jobs/promote.py --model galeno-mlm --version 2 --force --reason "roll back: v3 breaks NER"
  python jobs/promote.py --model my-model --version 4 --metric val_loss --lower-is-better
The tracking server is $MLFLOW_TRACKING_URI (credentials: $MLFLOW_TRACKING_USERNAME/PASSWORD),
else the embedded store under the artifact root; --tracking-uri overrides both.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promote.py", description=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, metavar="NAME", help="registered model (galeno-mlm, galeno-ner-<task>)")
    parser.add_argument("--version", required=True, metavar="N", help="version to promote")
    parser.add_argument("--alias", default="champion", help="alias to move (default: champion)")
    parser.add_argument("--metric", help="version tag metric.<METRIC> to compare (default by model name)")
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument("--higher-is-better", dest="higher_is_better", action="store_const", const=True)
    direction.add_argument("--lower-is-better", dest="higher_is_better", action="store_const", const=False)
    parser.add_argument("--force", action="store_true", help="promote even if the metric is worse (needs --reason)")
    parser.add_argument("--reason", default="", help="why: recorded with the promotion")
    parser.add_argument("--user", help="who: recorded with the promotion (default: tracking login, else OS user)")
    parser.add_argument("--tracking-uri", default="", metavar="URI", help="MLflow server or store")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException

    from galeno.registry import PromotionRefused, promote
    from galeno.tracking import TrackingConfig
    from galeno.runtime import setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.force and not args.reason.strip():
        parser.error("--force needs --reason: a forced promotion must say why")
    setup_logging()
    try:
        record = promote(args.model, args.version, args.alias, metric=args.metric,
                         higher_is_better=args.higher_is_better, force=args.force, reason=args.reason,
                         user=args.user, cfg=TrackingConfig(tracking_uri=args.tracking_uri))
    except PromotionRefused as err:
        print(f"promotion refused: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError as err:  # a metric without a direction, a model without a default metric
        parser.error(str(err))
    except MlflowException as err:  # no such model or version, no access
        print(f"promotion failed: {err.message}", file=sys.stderr)
        raise SystemExit(1) from None
    print(json.dumps(record, indent=2, ensure_ascii=False))
    return record
