"""The table of `cemkit` sub-commands: name, implementation and one-line help."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str
    target: str  # "module:function"
    help: str
    hydra: bool = True  # composed from conf/<name>.yaml; False: plain argparse command
    list_keys: tuple[str, ...] = ()  # `key=a,b` means the list [a,b] (not a sweep) unless -m is given


COMMANDS: tuple[Command, ...] = (
    Command("curate", "cemkit.curate.command:run",
            "Cut raw EM images/volumes into 224 px patches, drop near-duplicates and uninformative "
            "patches, write a pretraining corpus."),
    Command("pretrain", "cemkit.pretrain.command:run",
            "Self-supervised MoCoV2 pretraining of a timm encoder on a corpus, image folders or volumes.",
            list_keys=("data.images",)),
    Command("finetune", "cemkit.finetune.command:run",
            "Train 1fm/3fm/5fm DeepEM3D-style segmentation models from a pretrained encoder."),
    Command("predict", "cemkit.predict.command:run",
            "Tiled, memory-bounded inference on volumes with TTA and 1fm/3fm/5fm ensembles.",
            list_keys=("checkpoint",)),
    Command("evaluate", "cemkit.evaluate.command:run",
            "Score a prediction against labels (IoU, Dice, V_rand, V_info, object F1)."),
    Command("export", "cemkit.export.command:run",
            "Export an encoder from a pretrain checkpoint, or a model to TorchScript/ONNX/BioImage.IO."),
    Command("zoo", "cemkit.zoo.command:main",
            "Model zoo: list, info, download, register pretrained encoders and models.", hydra=False),
    Command("study", "cemkit.study.command:run",
            "Label-efficiency study: finetune from several inits on 1, 2, 4, 8 ... labelled slices, "
            "score a fixed test split, write study.csv and report.html.",
            list_keys=("study.inits", "study.labelled", "study.seeds", "study.test_slices", "study.train_slices")),
    Command("demo", "cemkit.demo.command:run",
            "Run the whole pipeline on built-in synthetic EM data and write an HTML report."),
)

BY_NAME = {c.name: c for c in COMMANDS}
