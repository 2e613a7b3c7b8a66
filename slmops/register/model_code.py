"""MLflow "models from code" entry point for slmops candidates.

MLflow executes this file when it logs or loads a registered slmops model; slmops itself
never imports it. It only declares which PythonModel serves the logged artifacts, so no
pickled object is stored in the registry.
"""

import mlflow.models

from slmops.register.pyfunc import SlmopsModel

mlflow.models.set_model(SlmopsModel())
