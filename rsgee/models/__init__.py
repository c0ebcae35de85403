"""Pure torch modules (RS-SPADE, pix2pix, the SPADE decoder, discriminators, RS-UNet); no file I/O.

The factory is the entry point: :func:`build_generator`, :func:`build_discriminator` and
:func:`build_segmenter` build an architecture by name at a size preset (``"tiny"``, ``"small"``,
``"paper"``). Models know nothing of the archive; they take a dict of normalised source tensors
(:data:`SOURCE_CHANNELS` says what each holds) and return tensors. The only file the package ever
reads is a user's local VGG19 weights file, through :meth:`VGGPerceptualLoss.from_file`. They need only
torch (the ``predict`` extra), never Lightning: an exported model runs without it.
"""

from rsgee.optional import require

require("predict")


from rsgee.models.discriminator import (
    MultiScaleDiscriminator,
    PatchDiscriminator,
    Pix2PixPatchDiscriminator,
)
from rsgee.configs import SIZES
from rsgee.models.factory import (
    IMAGE_CHANNELS,
    NUM_CLASSES,
    SOURCE_CHANNELS,
    build_discriminator,
    build_generator,
    build_segmenter,
    discriminator_in_channels,
    source_channels,
)
from rsgee.models.layers import concat_sources, count_parameters
from rsgee.models.losses import (
    AdversarialLoss,
    VGGPerceptualLoss,
    feature_matching_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
    masked_l1_loss,
    vanilla_discriminator_loss,
    vanilla_generator_loss,
)
from rsgee.models.pix2pix import Pix2PixGenerator
from rsgee.models.modulation import SourceEmbedding, SpatiallyAdaptiveNorm
from rsgee.models.rs_spade import RsSpadeGenerator
from rsgee.models.spade_decoder import SPADEResBlock, SpadeDecoderGenerator
from rsgee.models.unet import RsUNet

__all__ = [
    "IMAGE_CHANNELS",
    "NUM_CLASSES",
    "SIZES",
    "SOURCE_CHANNELS",
    "AdversarialLoss",
    "MultiScaleDiscriminator",
    "PatchDiscriminator",
    "Pix2PixGenerator",
    "Pix2PixPatchDiscriminator",
    "RsSpadeGenerator",
    "RsUNet",
    "SPADEResBlock",
    "SourceEmbedding",
    "SpadeDecoderGenerator",
    "SpatiallyAdaptiveNorm",
    "VGGPerceptualLoss",
    "build_discriminator",
    "build_generator",
    "build_segmenter",
    "concat_sources",
    "count_parameters",
    "discriminator_in_channels",
    "feature_matching_loss",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
    "masked_l1_loss",
    "source_channels",
    "vanilla_discriminator_loss",
    "vanilla_generator_loss",
]
