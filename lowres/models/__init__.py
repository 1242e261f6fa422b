"""Face embedding networks behind one registry: ``create(name, **overrides) -> FaceModel``.

Models: ``sphere4/10/20/36/64`` (SphereFace residual nets, 112x96 RGB, 512-d), ``cpunet``
(small fast CPU net, 56x48 grey, 128-d; the embedded default) and ``lenetpp`` (LeNet++, 28x28
grey, 2-d, for the MNIST figure).
"""

from lowres.models import lenet, small, sphereface
from lowres.models.base import FaceModel, create, list_models, register

__all__ = ["FaceModel", "create", "lenet", "list_models", "register", "small", "sphereface"]
