"""cemkit in napari: Predict and Adapt dock widgets and sample data (Plugins > cemkit; docs/napari.md).

The widgets call the same stage functions as the CLI (``cemkit predict``, ``cemkit finetune
+experiment=adapt``) through :mod:`cemkit.napari_plugin.jobs`; nothing is implemented twice.

- :mod:`~cemkit.napari_plugin.layer_data`: layer arrays as lazy volumes, painted slices, training labels.
- :mod:`~cemkit.napari_plugin.jobs`: the runs, without Qt (progress events, cancel, no half-written output).
- :mod:`~cemkit.napari_plugin.running`: a run in a worker thread, progress bar, Cancel, notifications.
- :mod:`~cemkit.napari_plugin.predict_widget`, :mod:`~cemkit.napari_plugin.adapt_widget`: the dock widgets.
- :mod:`~cemkit.napari_plugin.sample_data`: File > Open Sample (synthetic EM, a tiny trained model).

Install with ``pip install -e ".[napari]"``; the manifest is ``napari.yaml`` beside this file.
"""
