"""Small tile settings and a plain predictor shared by the tiling and TTA/ensemble tests."""
from cemkit.predict.streaming import SlabPredictor, TileSettings


def small_tiles(**kw) -> TileSettings:
    """Tile settings of these tests: 16 px tiles, no border, no TTA unless given."""
    base = {"tile_size": 16, "overlap": 0.25, "blending": "gaussian", "sigma_scale": 0.125, "border": 0,
            "batch_size": 4, "tta": 0}
    return TileSettings(**{**base, **kw})


def plain_predictor(models, tiles, **kw) -> SlabPredictor:
    """A predictor without AMP, mean ensemble, threshold 0.5 unless ``kw`` says otherwise."""
    return SlabPredictor(models, tiles, **{"amp": False, "ensemble": "mean", "threshold": 0.5, **kw})
