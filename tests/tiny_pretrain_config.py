"""The composed tiny pretrain config shared by the pretrain tests."""
from hydra import compose, initialize_config_module


def pretrain_cfg(output, images, *overrides):
    """``conf/pretrain.yaml`` with ``+experiment=tiny_pretrain`` on CPU, 64 px tiles, no logger."""
    with initialize_config_module(config_module="cemkit.conf", version_base=None):
        return compose("pretrain", overrides=["+experiment=tiny_pretrain", "trainer=cpu", f"output={output}",
                                              f"data.images={images}", "data.tile_size=64", "logger=none",
                                              *overrides])
