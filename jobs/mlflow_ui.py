"""The MLflow UI on the embedded store (what `make mlflow-ui` runs), announced once it answers.

    python jobs/mlflow_ui.py [--port 5000] [--host 127.0.0.1]
"""

import sys

from galeno.mlflow_ui import main

if __name__ == "__main__":
    sys.exit(main())
