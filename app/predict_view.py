"""Try the global model: classify an uploaded photo or a random test-set image."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import streamlit as st
from PIL import Image

from data.preprocess import PreprocessedImage, preprocess_upload
from app.charts import probabilities_figure
from app.predict_own import image_panel, table_panel
from app.predict import Classification, UploadOutcome, classify_pixels, classify_upload, enlarge, pixels_of_test_image

if TYPE_CHECKING:
    from engine.federation import Federation

UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "gif"]
TEST_INDEX_KEY = "test_image_index"
IMAGE_WIDTH = 196


@st.cache_data(max_entries=4, show_spinner=False)
def _preprocess(data: bytes) -> PreprocessedImage:
    """Preprocessing is deterministic, so live refreshes reuse it (failures are not cached and re-raise)."""
    return preprocess_upload(data)


def _pick_test_image(count: int) -> None:
    st.session_state[TEST_INDEX_KEY] = int(np.random.default_rng().integers(count))


def _preview(preview: Image.Image | None, size: tuple[int, int] | None) -> None:
    """What was read from the upload (a PNG any browser shows, whatever the upload's format or depth)."""
    caption = "Your upload" + (f" ({size[0]}×{size[1]})" if size else "")
    if preview is not None:
        st.image(preview, caption=caption, width=min(IMAGE_WIDTH, max(preview.width, 28)))


def _show(classification: Classification, untrained: bool, source: str, original: UploadOutcome | None = None,
          true_label: str | None = None) -> None:
    """Input pictures on the left, the predicted class and all probabilities on the right."""
    upload_column, input_column, result = st.columns([1, 1, 2], gap="medium")
    if original is not None:
        with upload_column:
            _preview(original.preview, original.original_size)
    with input_column if original is not None else upload_column:
        st.image(enlarge(classification.pixels), caption="What the model sees: 28×28 grayscale", width=IMAGE_WIDTH)
    with result, st.container(key=f"prediction-{source}"):
        prefix = "Untrained model's guess" if untrained else "Predicted"
        st.markdown(f"#### {prefix}: {classification.name}")
        st.caption(f"Probability {classification.confidence:.1%}")
        if true_label is not None:
            verdict = "correct" if true_label == classification.name else "wrong"
            st.markdown(f"True label: **{true_label}** ({verdict})")
        st.plotly_chart(probabilities_figure(classification.probabilities, classification.class_names, untrained),
                        key=f"probabilities-{source}", config={"displayModeBar": False})


def _upload_tab(federation: Federation, untrained: bool) -> None:
    uploaded = st.file_uploader(
        "Upload a photo of one object (PNG, JPEG, WebP, BMP or GIF)", type=UPLOAD_TYPES, key="upload",
        help="Works best with one object on a plain background; it is cropped, converted to grayscale "
             "and shrunk to 28×28 like the training images.",
    )
    if uploaded is None:
        return
    data = uploaded.getvalue()
    outcome = classify_upload(data, federation.predict, federation.dataset.class_names, preprocess=_preprocess)
    if outcome.error is not None:
        st.error(outcome.error)
        _preview(outcome.preview, outcome.original_size)
        return
    if outcome.inverted:
        st.caption("Light background detected: the image was inverted to match the training data "
                   "(light object on black).")
    _show(outcome.classification, untrained, "upload", original=outcome)


def _test_tab(federation: Federation, untrained: bool) -> None:
    dataset = federation.dataset
    st.button("Pick a random test image", key="random_test_image", icon=":material/shuffle:",
              on_click=_pick_test_image, args=(len(dataset.y_test),))
    index = st.session_state.get(TEST_INDEX_KEY)
    if index is None or index >= len(dataset.y_test):
        st.caption("Test images were never seen by any device during training.")
        return
    classification = classify_pixels(pixels_of_test_image(dataset.x_test, index), federation.predict,
                                     dataset.class_names)
    st.caption(f"Test image #{index}")
    _show(classification, untrained, "test", true_label=dataset.class_names[int(dataset.y_test[index])])


def render(federation: Federation) -> None:
    """The prediction section (main.py runs it as a fragment: uploads and picks redraw only this part)."""
    with st.container(key="predict"):
        st.subheader("Try the global model", anchor="predict")
        snapshot = federation.snapshot()
        untrained = snapshot.round == 0
        if untrained:
            st.warning("The global model is **untrained**: no round has completed yet, so its answers are random "
                       "guesses. Start training first.")
        else:
            st.caption(f"Classified by the global model after round {snapshot.round}.")
        spec = getattr(federation, "preprocessing", None)
        if spec is not None and spec.kind in ("image", "tabular"):  # one's own data: its own preprocessing
            try:
                (table_panel if spec.kind == "tabular" else image_panel)(federation, spec, untrained)
            except Exception as error:  # keep the page alive whatever the model does
                st.error(f"Prediction failed: {type(error).__name__}: {error}")
            return
        upload_tab, test_tab = st.tabs(["Upload an image", "Random test image"])
        try:
            with upload_tab:
                _upload_tab(federation, untrained)
            with test_tab:
                _test_tab(federation, untrained)
        except Exception as error:  # keep the page alive whatever the model does
            st.error(f"Prediction failed: {type(error).__name__}: {error}")
