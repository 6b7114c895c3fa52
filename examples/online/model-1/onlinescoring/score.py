import json
import logging
import os

import joblib
import numpy


def init():
    """Called once when the deployment starts: load the model into memory."""
    global model
    # AZUREML_MODEL_DIR is the folder that contains the registered model folder ("model/").
    model_path = os.path.join(os.getenv("AZUREML_MODEL_DIR"), "model/sklearn_regression_model.pkl")
    model = joblib.load(model_path)
    logging.info("Init complete")


def run(raw_data):
    """Called for every request: the body as text in, JSON-serialisable predictions out."""
    logging.info("model 1: request received")
    data = json.loads(raw_data)["data"]
    data = numpy.array(data)
    result = model.predict(data)
    logging.info("Request processed")
    return result.tolist()
