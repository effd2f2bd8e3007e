"""wildvision: find wildlife-trafficking products and live protected animals in marketplace
listing photos.

The core (this package's top level) needs only numpy, Pillow and ONNX Runtime. Training,
benchmarking, the service and Ray scoring live in subpackages behind extras and are imported
only when used.

Example:
    >>> import wildvision
    >>> p = wildvision.classify_image("listing.jpg")  # doctest: +SKIP
    >>> p.decision  # doctest: +SKIP
    'flag'
"""

from __future__ import annotations

from ._version import __version__ as __version__
from .errors import ConfigError as ConfigError
from .errors import DataError as DataError
from .errors import ImageTooLargeError as ImageTooLargeError
from .errors import InvalidImageError as InvalidImageError
from .errors import MissingExtraError as MissingExtraError
from .errors import ModelIntegrityError as ModelIntegrityError
from .errors import ModelNotInstalledError as ModelNotInstalledError
from .errors import UnknownModelError as UnknownModelError
from .errors import UnsupportedFormatError as UnsupportedFormatError
from .errors import WildvisionError as WildvisionError
from .explain import Explanation as Explanation
from .imaging import load_image as load_image
from .modelpack import ModelCard as ModelCard
from .modelpack import ModelPackage as ModelPackage
from .modelpack import Thresholds as Thresholds
from .options import ClassifierOptions as ClassifierOptions
from .predict import Classifier as Classifier
from .predict import Failure as Failure
from .predict import GroupResult as GroupResult
from .predict import LabelScore as LabelScore
from .predict import Prediction as Prediction
from .predict import classify_image as classify_image
from .predict import classify_images as classify_images
from .predict import iter_classify as iter_classify
from .preprocess import PreprocessConfig as PreprocessConfig
from .registry import load_model as load_model

__all__ = [
    "Classifier",
    "ClassifierOptions",
    "ConfigError",
    "DataError",
    "Explanation",
    "Failure",
    "GroupResult",
    "ImageTooLargeError",
    "InvalidImageError",
    "LabelScore",
    "MissingExtraError",
    "ModelCard",
    "ModelIntegrityError",
    "ModelNotInstalledError",
    "ModelPackage",
    "Prediction",
    "PreprocessConfig",
    "Thresholds",
    "UnknownModelError",
    "UnsupportedFormatError",
    "WildvisionError",
    "__version__",
    "classify_image",
    "classify_images",
    "iter_classify",
    "load_image",
    "load_model",
]
