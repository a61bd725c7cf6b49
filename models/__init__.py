"""nn.Module definitions: extraction backbones, ResDAVEnet, AVLnet heads and losses."""
