"""The bundled offline checker: alt-profanity-check's offensive-language classifier (no download, no GPU).

``alt-profanity-check`` ships a scikit-learn model (a TF-IDF vectorizer and five sigmoid-calibrated linear SVMs)
as two joblib files inside the package. joblib is pickle: loading a file runs whatever code it names. So the
files are trusted only as the exact files of the pinned release: their sha256 is checked against the values
below *before* joblib reads them, and a mismatch (another version, an edited file) is refused with a message.
The package's own module is never imported (it loads the files at import time, unchecked): the files are
found through the import system's spec alone.

The score is the classifier's probability of "offensive" (the mean of the calibrated SVMs, as its
``predict_proba`` computes it); a reply is unsafe at ``threshold`` (0.5 by default) or above, category
"offensive". Computed with the model's weights as one sparse product instead of ``predict_proba`` itself:
the same numbers (tests/test_safety.py compares them) in ~0.5 ms instead of ~9 ms per reply, because
scikit-learn's per-call validation over five estimators dominated the time (bench/safety_speed.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from trainers.prompt_format import ChatTurn
from trainers.safety_checks.checker import SafetyCheckerError, SafetyVerdict

PACKAGE = "alt-profanity-check"
PINNED_VERSION = "1.9.1"
SKLEARN_VERSION = "1.9.1"  # the version the package's model was saved with (it follows scikit-learn's numbering)
# sha256 of the pinned release's model files (profanity_check/data/), checked before they are unpickled.
MODEL_FILE_SHA256 = {
    "vectorizer.joblib": "19c5200dc6a41f026e0558e2f164f5fe8d8f58e502b46b37e4385037fcfa4831",
    "model.joblib": "aeafc04849d4d93db4721cf30a86ebf22085595294b8a07d51918e7fa98f538b",
}
CATEGORY = "offensive"
DEFAULT_THRESHOLD = 0.5
INSTALL_HINT = f"pip install {PACKAGE}=={PINNED_VERSION} scikit-learn=={SKLEARN_VERSION}"


def model_dir() -> Path:
    """Where the installed package keeps its model files (found without importing the package)."""
    try:
        spec = importlib.util.find_spec("profanity_check")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise SafetyCheckerError(f"the profanity checker needs the package {PACKAGE} ({INSTALL_HINT})")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _installed_version() -> str:
    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        raise SafetyCheckerError(f"the profanity checker needs the package {PACKAGE} ({INSTALL_HINT})") from None


def verify_model_files(folder: Path) -> None:
    """Refuse model files that are not the pinned release's, byte for byte, before anything unpickles them."""
    for name, expected in MODEL_FILE_SHA256.items():
        path = folder / name
        try:
            actual = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise SafetyCheckerError(f"profanity checker: cannot read its model file {path}: "
                                     f"{exc.strerror or exc}") from exc
        if actual != expected:
            raise SafetyCheckerError(
                f"profanity checker: {path} is not the file {PACKAGE} {PINNED_VERSION} ships (sha256 {actual[:16]}…, "
                f"expected {expected[:16]}…); refusing to unpickle it. Reinstall it: {INSTALL_HINT}")


class ProfanityChecker:
    """Offensive language in the reply alone (the conversation is not read)."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, folder: Path | None = None) -> None:
        if not 0 < threshold <= 1:
            raise SafetyCheckerError(f"profanity checker: threshold must be above 0 and at most 1, got {threshold}")
        installed = _installed_version()
        if installed != PINNED_VERSION:
            raise SafetyCheckerError(f"profanity checker: {PACKAGE} {installed} is installed; the studio trusts "
                                     f"only the files of {PINNED_VERSION} ({INSTALL_HINT})")
        folder = folder or model_dir()
        verify_model_files(folder)
        try:
            import joblib
            import sklearn
        except ImportError as exc:
            raise SafetyCheckerError(f"the profanity checker needs scikit-learn and joblib ({INSTALL_HINT}): "
                                     f"{exc}") from exc
        if sklearn.__version__ != SKLEARN_VERSION:  # another version warns and may compute other numbers
            raise SafetyCheckerError(f"profanity checker: its model was saved with scikit-learn {SKLEARN_VERSION}, "
                                     f"{sklearn.__version__} is installed ({INSTALL_HINT})")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an unpickling warning means the model may not be what it was
            self.vectorizer = joblib.load(folder / "vectorizer.joblib")
            model = joblib.load(folder / "model.joblib")
        calibrated = model.calibrated_classifiers_
        self._weights = np.stack([c.estimator.coef_[0] for c in calibrated], axis=1)
        self._intercepts = np.array([c.estimator.intercept_[0] for c in calibrated])
        self._slopes = np.array([c.calibrators[0].a_ for c in calibrated])
        self._offsets = np.array([c.calibrators[0].b_ for c in calibrated])
        self.threshold = threshold
        self._version = f"{PINNED_VERSION}@{threshold:g}"

    @property
    def name(self) -> str:
        return "profanity"

    @property
    def version(self) -> str:
        # The package version and the threshold: both change what "unsafe" means for the same text.
        return self._version

    def probability(self, text: str) -> float:
        """The classifier's probability that ``text`` is offensive (what its ``predict_proba`` gives)."""
        features = self.vectorizer.transform([text])
        decisions = np.asarray(features @ self._weights).ravel() + self._intercepts
        # scikit-learn's _SigmoidCalibration: 1 / (1 + exp(a·d + b)) per calibrated SVM, then their mean.
        return float(np.mean(1.0 / (1.0 + np.exp(self._slopes * decisions + self._offsets))))

    def check(self, conversation: Sequence[ChatTurn], reply: str) -> SafetyVerdict:
        score = self.probability(reply)
        unsafe = score >= self.threshold
        return SafetyVerdict(self.name, self.version, safe=not unsafe, categories=(CATEGORY,) if unsafe else (),
                             score=score)
