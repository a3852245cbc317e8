"""Networks: the input normalization layer, small default CNN / U-Net / denoiser (2-D and 3-D),
and a builder that instantiates any MONAI / torchvision / importable network from a config."""

from lightning_modules.nets.builder import ChannelAdapter, build_net, import_object
from lightning_modules.nets.cnn import SmallCNN
from lightning_modules.nets.normalize import Normalize
from lightning_modules.nets.unet import DenoisingAutoEncoder, SmallUNet

__all__ = [
    "ChannelAdapter",
    "DenoisingAutoEncoder",
    "Normalize",
    "SmallCNN",
    "SmallUNet",
    "build_net",
    "import_object",
]
