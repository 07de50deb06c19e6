"""Draw the Interpreter's, its heads' and the Explainer's Keras graphs (docs/interpreter.png, heads.png,
explainer.png).

Needs pydot and Graphviz (``pip install pydot``, ``apt-get install graphviz``); the graphs are those of the
bundled demo classifier with an untrained interpreter (the structure, not the weights, is drawn).

    python docs/plot_graphs.py
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from l2i_tf import classifier
from l2i_tf.audio import STFTConfig
from l2i_tf.explainer import Explainer
from l2i_tf.interpreter import Interpreter, tap_orders

HERE = Path(__file__).resolve().parent


def main():
    info = classifier.load_info(classifier.DEMO_MULTICLASS)
    model = keras.saving.load_model(classifier.DEMO_MULTICLASS, compile=False)
    names, orders = tap_orders(model, info.layers)
    stft = STFTConfig()
    W = np.random.default_rng(0).random((stft.num_bins, 100)).astype("float32")
    interpreter = Interpreter(
        model, names, orders, 100, stft.num_bins, stft.to_dict(), psi={"freq_reduce": "mean"}, dictionary=W
    )
    explainer = Explainer(interpreter, info.class_names)
    keras.utils.plot_model(interpreter, HERE / "interpreter.png", show_layer_names=True, dpi=56)
    keras.utils.plot_model(interpreter.heads, HERE / "heads.png", show_layer_names=True, dpi=56)
    keras.utils.plot_model(explainer, HERE / "explainer.png", show_layer_names=True, dpi=56)
    for name in ("interpreter", "heads", "explainer"):
        print(HERE / f"{name}.png")


if __name__ == "__main__":
    main()
