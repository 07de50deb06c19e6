"""l2i_tf: listenable interpretations of audio classifiers (Listen to Interpret) for Keras 3 / TensorFlow.

Importing the package registers its Keras objects, so ``keras.saving.load_model`` can
read any ``.keras`` file it wrote.
"""

from l2i_tf import audio, classifier, dictionary, flint, interpreter, layers, nmf, vibi  # noqa: F401  (registers Keras objects)

__all__ = ["audio", "classifier", "dictionary", "flint", "interpreter", "layers", "nmf", "vibi"]
