import os

import joblib
import pandas as pd


def init():
    global model
    model = joblib.load(
        os.path.join(os.environ["AZUREML_MODEL_DIR"], "model/sklearn_regression_model.pkl")
    )


def run(mini_batch):
    """Score each CSV file of the mini-batch; one output row per input row."""
    results = []
    for path in mini_batch:
        data = pd.read_csv(path)
        predictions = model.predict(data.values)
        results.append(pd.DataFrame({"file": os.path.basename(path), "prediction": predictions}))
    return pd.concat(results)
