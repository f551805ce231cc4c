"""The upload app: drop digit images (or draw one), see what the model sees and what it predicts.

digitml app [--model-uri models:/digit-classifier@champion | --endpoint URL] [--port 8501]
streamlit run digitml/app.py      # same page, settings from DIGITML_APP_* variables
"""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from digitml.app_launch import AppSettings
from digitml.imaging import ImageInputError, image_to_array
from digitml.predict import one_image_message, predicted
from digitml.registry import RegistryError, registered_name, registered_version

IMAGE_TYPES = ["png", "jpg", "jpeg", "bmp", "gif", "webp"]
ENDPOINT_TIMEOUT = 10


class PredictionError(RuntimeError):
    """The model could not answer; the message is shown on the page."""


@dataclass
class Prediction:
    digit: int
    confidence: float
    probabilities: list[float]


@st.cache_resource(show_spinner="Loading the model…")
def load_local_model(model_uri: str):
    import mlflow

    return mlflow.pyfunc.load_model(model_uri)


def predict_local(model_uri: str, image: bytes) -> Prediction:
    import mlflow

    try:
        answer = predicted(load_local_model(model_uri), ["image"], [image])[0]
    except mlflow.exceptions.MlflowException as error:
        raise PredictionError(one_image_message(error.message)) from error
    return Prediction(answer.digit, answer.confidence, answer.probabilities)


def predict_endpoint(endpoint: str, image: bytes) -> Prediction:
    body = json.dumps({"dataframe_records": [{"image": base64.b64encode(image).decode()}]}).encode()
    request = urllib.request.Request(
        endpoint, data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=ENDPOINT_TIMEOUT) as response:
            answer = json.loads(response.read())["predictions"][0]
    except urllib.error.HTTPError as error:
        message = _error_message(error.read())
        raise PredictionError(f"the endpoint refused the image: {message}") from error
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        raise PredictionError(f"the endpoint {endpoint} cannot be reached ({error})") from error
    return Prediction(
        int(answer["digit"]), float(answer["confidence"]), list(answer["probabilities"])
    )


def _error_message(body: bytes) -> str:
    try:
        message = json.loads(body).get("message", "")
    except (ValueError, AttributeError):
        return body.decode(errors="replace")[:200]
    return one_image_message(message)


def model_choices(model_uri: str) -> tuple[list[str], dict[str, str]]:
    """(URIs of every version of the registered model, a label per URI) for the sidebar."""
    import mlflow

    name = registered_name(model_uri)
    if name is None:
        return [model_uri], {model_uri: model_uri}
    client = mlflow.MlflowClient()
    versions = sorted(
        client.search_model_versions(f"name = '{name}'"), key=lambda v: -int(v.version)
    )
    if not versions:
        raise PredictionError(f"no registered model named '{name}'")
    uris, labels = [model_uri], {model_uri: model_uri}
    for version in versions:
        uri = f"models:/{name}/{version.version}"
        aliases = f" ({', '.join(version.aliases)})" if version.aliases else ""
        accuracy = mlflow.get_run(version.run_id).data.metrics.get("test_accuracy")
        score = f" — test accuracy {accuracy:.2%}" if accuracy is not None else ""
        uris.append(uri)
        labels[uri] = f"version {version.version}{aliases}{score}"
    return uris, labels


def describe_model(model_uri: str) -> str:
    """Name, version, aliases and test accuracy of the model behind a URI, as markdown."""
    import mlflow

    try:
        version = registered_version(model_uri)
    except RegistryError as error:
        raise PredictionError(f"model {model_uri} not found in the registry") from error
    if version is not None:
        run_id, header = version.run_id, f"**{version.name}** version **{version.version}**"
        aliases = ", ".join(version.aliases) or "none"
        header += f"  \naliases: {aliases}"
    else:
        run_id = model_uri.split("/")[1] if model_uri.startswith("runs:/") else None
        header = f"`{model_uri}`"
    if run_id:
        try:
            accuracy = mlflow.get_run(run_id).data.metrics.get("test_accuracy")
        except mlflow.exceptions.MlflowException as error:
            raise PredictionError(f"model {model_uri} not found: no run {run_id}") from error
        if accuracy is not None:
            header += f"  \ntest accuracy: **{accuracy:.2%}**"
    return header


def sidebar(settings: AppSettings):
    """Show which model answers; return a function image bytes -> Prediction (None on error)."""
    st.sidebar.header("Model")
    if settings.endpoint:
        st.sidebar.markdown(f"REST endpoint  \n`{settings.endpoint}`")
        return lambda image: predict_endpoint(settings.endpoint, image)
    try:
        uris, labels = model_choices(settings.model_uri)
        chosen = st.sidebar.selectbox("Version", uris, format_func=labels.get)
        st.sidebar.markdown(describe_model(chosen))
    except PredictionError as error:
        st.error(str(error))
        return None
    return lambda image: predict_local(chosen, image)


def show_result(name: str, image: bytes, predict) -> None:
    """The original, the 28x28 the model sees, the digit, its confidence and the probabilities."""
    st.subheader(name)
    try:
        seen = image_to_array(image, where=name)
        prediction = predict(image)
    except (ImageInputError, PredictionError) as error:
        st.error(str(error))
        return
    original, model_view, verdict, chart = st.columns([2, 2, 1.5, 3])
    original.image(image, caption="what you sent", width=200)
    enlarged = Image.fromarray((seen * 255).astype(np.uint8)).resize(
        (196, 196), Image.Resampling.NEAREST
    )
    model_view.image(enlarged, caption="what the model sees (28×28)")
    verdict.markdown(
        f"<div style='font-size:96px;font-weight:700;line-height:1'>{prediction.digit}</div>",
        unsafe_allow_html=True,
    )
    verdict.metric("confidence", f"{prediction.confidence:.1%}")
    chart.bar_chart(
        pd.DataFrame({"probability": prediction.probabilities}, index=[str(d) for d in range(10)])
    )


def drawing(predict) -> None:
    """A canvas to write a digit with the mouse (streamlit-drawable-canvas), if installed."""
    try:
        from streamlit_drawable_canvas import st_canvas
    except ImportError:
        st.info("Install streamlit-drawable-canvas to draw digits here.")
        return
    canvas = st_canvas(
        stroke_width=18,
        stroke_color="#000000",
        background_color="#FFFFFF",
        width=280,
        height=280,
        drawing_mode="freedraw",
        return_image_data=True,
        key="canvas",
    )
    if canvas.image_data is not None and (canvas.image_data[..., :3] < 128).any():
        buffer = io.BytesIO()
        Image.fromarray(canvas.image_data.astype(np.uint8)).save(buffer, format="PNG")
        show_result("your drawing", buffer.getvalue(), predict)


def main() -> None:
    st.set_page_config(page_title="digitml", page_icon="✍️", layout="wide")
    st.title("digitml: what digit is this?")
    predict = sidebar(AppSettings.from_env())
    if predict is None:
        return
    uploads = st.file_uploader("Digit images", type=IMAGE_TYPES, accept_multiple_files=True)
    for upload in uploads or []:
        show_result(upload.name, upload.getvalue(), predict)
    with st.expander("…or draw a digit", expanded=not uploads):
        drawing(predict)


if __name__ == "__main__":  # as `streamlit run` runs it; `digitml app` imports it first
    main()
