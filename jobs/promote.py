"""Promote a registered model version to an alias (champion), guarded by its dev metric.

    python jobs/promote.py --model galeno-mlm --version 3
    python jobs/promote.py --model galeno-ner-pharmaconer --version 7 --reason "retrained on the new dev set"
    python jobs/promote.py --model galeno-mlm --version 2 --force --reason "roll back"
    # against the team server (docs/mlflow.md): only registry calls, so no Ray job is needed
    MLFLOW_TRACKING_URI=https://mlflow.galeno.internal MLFLOW_TRACKING_USERNAME=ana \
        python jobs/promote.py --model galeno-mlm --version 3     # password in $MLFLOW_TRACKING_PASSWORD

Exit status 2 when the rule refuses; `python jobs/promote.py --help` explains the rule.
"""

from galeno.registry_cli import main

if __name__ == "__main__":
    main()
