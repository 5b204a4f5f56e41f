"""The bundled offensive-language classifier, defined in ``trainers/safety_checks/profanity.py`` (a training
run's safety penalty uses it too); re-exported here for the studio."""

from trainers.safety_checks.profanity import (
    CATEGORY,
    DEFAULT_THRESHOLD,
    INSTALL_HINT,
    MODEL_FILE_SHA256,
    PACKAGE,
    PINNED_VERSION,
    SKLEARN_VERSION,
    ProfanityChecker,
    model_dir,
    verify_model_files,
)

__all__ = ["CATEGORY", "DEFAULT_THRESHOLD", "INSTALL_HINT", "MODEL_FILE_SHA256", "PACKAGE", "PINNED_VERSION",
           "SKLEARN_VERSION", "ProfanityChecker", "model_dir", "verify_model_files"]
