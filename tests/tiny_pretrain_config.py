"""The composed tiny pretrain config, and a complete ``data`` node, shared by the pretrain tests."""
from hydra import compose, initialize_config_module


def pretrain_cfg(output, images, *overrides):
    """``conf/pretrain.yaml`` with ``+experiment=tiny_pretrain`` on CPU, 64 px tiles, no logger."""
    with initialize_config_module(config_module="cemkit.conf", version_base=None):
        return compose("pretrain", overrides=["+experiment=tiny_pretrain", "trainer=cpu", f"output={output}",
                                              f"data.images={images}", "data.tile_size=64", "logger=none",
                                              *overrides])


def data_settings(**given):
    """``conf/pretrain/data/default.yaml`` (every key ``open_source`` reads) with ``given`` changed."""
    from importlib.resources import files

    from omegaconf import OmegaConf

    node = OmegaConf.load(files("cemkit.conf").joinpath("pretrain/data/default.yaml"))
    return {**OmegaConf.to_container(node), **given}
