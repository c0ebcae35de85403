"""Pure torch modules (RS-SPADE, pix2pix, discriminators, RS-UNet); no file I/O."""
