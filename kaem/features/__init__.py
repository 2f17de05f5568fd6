"""Feature extractors for FID/KID: the standard Inception network and a small classifier.

* :mod:`kaem.features.weights`: where the Inception weights come from, verified;
* :mod:`kaem.features.inception`: :class:`InceptionFeatures`, clean-fid ``mode="clean"``;
* :mod:`kaem.features.classifier`: :class:`Classifier`, trained on a dataset's labels, and
  its penultimate-layer :class:`ClassifierFeatures`;
* :mod:`kaem.features.extract`: :func:`extract_features` runs any extractor in batches.
"""

from kaem.features.classifier import (
    Classifier,
    ClassifierFeatures,
    accuracy_threshold,
    classifier_accuracy,
    fit_classifier,
    load_classifier,
    save_classifier,
    train_classifier,
)
from kaem.features.extract import EXTRACTORS, build_extractor, extract_features, sample_batches
from kaem.features.inception import (
    INCEPTION_DIM,
    InceptionFeatures,
    load_inception_layers,
    resize_for_inception,
)
from kaem.features.weights import (
    CLEANFID_WEIGHTS_NAME,
    FID_HELPER_FILENAME,
    FID_HELPER_REQUIREMENT,
    FID_HELPER_SHA256,
    cleanfid_weights_dir,
    default_cache_dir,
    fetch_inception_weights,
    find_inception_weights,
)

__all__ = [
    "CLEANFID_WEIGHTS_NAME",
    "EXTRACTORS",
    "FID_HELPER_FILENAME",
    "FID_HELPER_REQUIREMENT",
    "FID_HELPER_SHA256",
    "INCEPTION_DIM",
    "Classifier",
    "ClassifierFeatures",
    "InceptionFeatures",
    "accuracy_threshold",
    "build_extractor",
    "classifier_accuracy",
    "cleanfid_weights_dir",
    "default_cache_dir",
    "extract_features",
    "fetch_inception_weights",
    "find_inception_weights",
    "fit_classifier",
    "load_classifier",
    "load_inception_layers",
    "resize_for_inception",
    "sample_batches",
    "save_classifier",
    "train_classifier",
]
